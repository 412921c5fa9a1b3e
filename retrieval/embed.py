"""Dense embeddings: a sentence-transformers bi-encoder (all-MiniLM-L6-v2 offline by default)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from retrieval.models import cpu_has_native_bf16, resolve_model_ref
from retrieval.settings import RetrievalSettings
from retrieval.threads import single_threaded

__all__ = ["Embedder", "load_embedder"]

logger = logging.getLogger(__name__)

MAX_QUERY_WINDOWS = 1  # default of RetrievalSettings.query_windows (measured: bench_search --only querywin)
QUERY_CACHE_SIZE = 512


class Embedder:
    """Encodes chunks and queries into L2-normalised float32 vectors."""

    def __init__(self, model_ref: str, dtype: str = "auto", max_tokens: int = 256, batch: int = 32,
                 query_windows: int = MAX_QUERY_WINDOWS, pack_linears: bool = True, lean_queries: bool = True) -> None:
        """``pack_linears`` (bf16): reorder the linear weights for oneDNN once (:mod:`retrieval.packed`).
        ``lean_queries``: embed queries with :mod:`retrieval.lean` where the model allows it and a probe agrees."""
        import torch
        from sentence_transformers import SentenceTransformer

        self.ref = model_ref
        self.packed_linears = 0
        path = resolve_model_ref(model_ref)
        self.dtype = ("bf16" if cpu_has_native_bf16() else "fp32") if dtype == "auto" else dtype
        self._model = SentenceTransformer(path, device="cpu", local_files_only=Path(path).exists())
        if self.dtype == "bf16":
            self._model.to(torch.bfloat16)
        elif self.dtype == "int8":
            self._model = _quantize_int8(self._model)
        self._model.max_seq_length = max_tokens
        self._model.eval()  # inference only, once (queries skip encode(), which sets it on every call)
        self.max_tokens = max_tokens
        self.batch = batch
        self.dim = int(self._model.get_embedding_dimension())
        self._lock = threading.Lock()  # the model's own pipeline (module state): one call at a time
        # The query caches have their own lock: an index build holding ``_lock`` for a batch of chunks (seconds, at a
        # lower priority in the daemon) must not hold up a search's cache look-up.
        self._cache_lock = threading.Lock()
        self.tokenizer = self._model.tokenizer
        self._lean = None
        if lean_queries and self.dtype != "int8":  # before packing: it reads the plain linears' weights
            from retrieval.lean import lean_encoder_for

            self._lean = lean_encoder_for(self._model, self.tokenizer, max_tokens, self._forward)
        if self.dtype == "bf16" and pack_linears:  # inference only: weights reordered for oneDNN once, not per call
            from retrieval.packed import pack_bf16_linears

            self.packed_linears = pack_bf16_linears(self._model)
        self.query_path = "lean" if self._lean is not None else "model"
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._coverage_cache: OrderedDict[str, float] = OrderedDict()
        self.set_query_windows(query_windows)
        name = Path(path).name if Path(path).exists() else path
        if Path(path).exists() and (Path(path) / "config.json").is_file():
            digest = hashlib.sha256((Path(path) / "config.json").read_bytes()).hexdigest()[:8]
            name = f"{name}@{digest}"
        # The model id names the weights and the sequence length; vectors from different ids never mix.
        self.model_id = f"{name}/max{max_tokens}" + ("/int8" if self.dtype == "int8" else "")

    def _encode(self, texts: Sequence[str], batch: int) -> np.ndarray:
        with self._lock:
            vecs = self._model.encode(
                list(texts),
                batch_size=batch,
                normalize_embeddings=True,
                convert_to_numpy=False,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        return _unit_rows(vecs)

    def _forward(self, texts: Sequence[str]) -> np.ndarray:
        """The model's own pipeline (transformer, pooling, ...) on a few texts, without ``encode``'s per-call set-up
        (mode switch over every module, sorting, batching): ~1 ms less per query on this CPU, within bf16 rounding
        (3e-4) of ``encode``."""
        import torch

        model = self._model
        with self._lock:
            features = model.preprocess(list(texts)) if hasattr(model, "preprocess") else model.tokenize(list(texts))
            with torch.inference_mode():
                vecs = model(features)["sentence_embedding"]
        return _unit_rows(vecs)

    def encode_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Vectors for ``texts`` in input order, in batches (sorted by length inside sentence-transformers)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = max(self.batch * 8, 256)
        out = []
        for i in range(0, len(texts), step):
            out.append(self._encode(texts[i : i + step], self.batch))
            if progress:
                progress(min(step, len(texts) - i))
        return np.concatenate(out)

    def set_query_windows(self, n: int) -> None:
        """Embed long queries as at most ``n`` windows from now on (cached query vectors are dropped)."""
        if n < 1:
            raise ValueError(f"query_windows expects at least 1, but got {n}")
        with self._cache_lock:
            self.query_windows = int(n)
            self._query_cache.clear()
            self._coverage_cache.clear()

    def encode_query(self, text: str, cache: bool = True) -> np.ndarray:
        """One vector for a query of any length; repeated queries come from a small LRU cache."""
        if not cache:
            with single_threaded():
                return self._encode_query(text)
        with self._cache_lock:
            hit = self._query_cache.get(text)
            if hit is not None:
                self._query_cache.move_to_end(text)
                return hit
        with single_threaded():  # a query's small kernels lose more in thread hand-offs than a second core gives
            vec = self._encode_query(text)
        vec.setflags(write=False)
        with self._cache_lock:
            self._query_cache[text] = vec
            while len(self._query_cache) > QUERY_CACHE_SIZE:
                self._query_cache.popitem(last=False)
        return vec

    def warm_query_lengths(self) -> int:
        """Embed one query of each padded length (:data:`retrieval.lean.LENGTH_BUCKETS` up to the window), once, as
        searches do (one thread), so no search pays a shape's first-time kernel set-up. A long-running server calls
        it at start. Returns the number of shapes warmed."""
        if self._lean is None:
            return 0
        from retrieval.lean import LENGTH_BUCKETS, with_special_tokens

        filler = self.tokenizer("code", add_special_tokens=False)["input_ids"][:1] or [self.tokenizer.unk_token_id]
        lengths = sorted({min(b, self.max_tokens) for b in LENGTH_BUCKETS if b - 2 < self.max_tokens})
        with single_threaded():
            for n in lengths:
                self._lean.embed_ids(with_special_tokens(self.tokenizer, filler * (n - 2)))
        return len(lengths)

    def query_coverage(self, text: str) -> float:
        """Share of ``text``'s tokens that its query vector is computed from (1 when it fits the embedded windows)."""
        with self._cache_lock:
            hit = self._coverage_cache.get(text)
        if hit is not None:
            return hit
        n = len(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
        c = 1.0 if n <= 0 else min(1.0, (self.max_tokens - 2) * self.query_windows / n)
        with self._cache_lock:
            self._coverage_cache[text] = c
            while len(self._coverage_cache) > QUERY_CACHE_SIZE:
                self._coverage_cache.popitem(last=False)
        return c

    def _encode_query(self, text: str) -> np.ndarray:
        """One vector for a query of any length.

        A query longer than the model's window (an assistant may paste a whole issue) is cut into token windows and
        its first ``query_windows`` are embedded, their normalised vectors averaged and renormalised. The default
        (1) was measured best on SWE-bench issue texts: the title and first paragraph say what is wanted, while
        later windows (tracebacks, pasted code) pull the vector away from it.
        """
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        window = self.max_tokens - 2
        if self._lean is not None:  # thread-safe: read-only weights, no module state
            from retrieval.lean import with_special_tokens

            ids = ids[: window * self.query_windows]
            vecs = np.stack([self._lean.embed_ids(with_special_tokens(self.tokenizer, ids[i : i + window]))
                             for i in range(0, max(len(ids), 1), window)])
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            if len(vecs) == 1:
                return vecs[0]
            mean = vecs.mean(axis=0)
            return (mean / (np.linalg.norm(mean) or 1.0)).astype(np.float32)
        if len(ids) <= window:
            return self._forward([text])[0]
        ids = ids[: window * self.query_windows]
        pieces = [self.tokenizer.decode(ids[i : i + window]) for i in range(0, len(ids), window)]
        vecs = self._forward(pieces)
        mean = vecs.mean(axis=0)
        return (mean / (np.linalg.norm(mean) or 1.0)).astype(np.float32)


def _unit_rows(vecs) -> np.ndarray:
    """A model's output tensor as float32 rows of length 1. Normalised again in float32: a bf16 model's unit
    vectors are off by ~1e-3, enough for a dot product (embedded) and a cosine (pgvector) to disagree."""
    out = vecs.float().cpu().numpy().astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def _quantize_int8(model):
    """Dynamic int8 quantisation of the Linear layers (uses VNNI where the CPU has it)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated but still the offline int8 path
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_embedder(settings: RetrievalSettings, batch: int = 32) -> Embedder:
    return Embedder(settings.embed_model, settings.embed_dtype, settings.embed_max_tokens, batch,
                    query_windows=settings.query_windows)
