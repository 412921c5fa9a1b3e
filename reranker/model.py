"""Reranker loading and scoring on CPU: safetensors only, no remote code, token-based truncation.

Two kinds of model serve: a cross-encoder (:class:`CrossEncoderScorer`, one logit per (query, text) pair) and a
fine-tuned bi-encoder (:class:`BiEncoderScorer`, the cosine of their embeddings: what training makes by default);
:func:`load_scorer` picks by the model folder.

The scorer returns raw logits (one per text). Backends (fp32, bf16, int8) sit behind :class:`Backend`; ``auto``
picks bf16 only when the CPU has native bf16 instructions (AMX or AVX512_BF16), since without them torch emulates
bf16 matmuls and they run several times slower than fp32; else int8 (dynamic quantisation) when the CPU has int8
dot-product instructions (VNNI), where it measured ~1.4x faster than fp32 with MRR@10 within 1% of fp32; else fp32.

:func:`cut_layers` keeps the first N transformer layers of a model: the base of a layer-cut student that the training
pipeline distils from the serving model (``AGRO_TRAINING_STUDENT_LAYERS``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import AgroError, AgroUserError
from retrieval.models import cpu_has_native_bf16, cpu_has_vnni

if TYPE_CHECKING:
    import torch

__all__ = [
    "UNTRAINED_MARKER",
    "Backend",
    "BiEncoderScorer",
    "CrossEncoderScorer",
    "RerankerLoadError",
    "ScoringCancelled",
    "clean_text",
    "cpu_has_native_bf16",
    "cpu_has_vnni",
    "create_from_backbone",
    "cut_layers",
    "is_bi_encoder_dir",
    "load_scorer",
    "make_backend",
    "model_layers",
    "resolve_backend_name",
]

logger = logging.getLogger(__name__)

UNTRAINED_MARKER = "agro_untrained.json"
"""File written beside a freshly initialised cross-encoder; training removes it. Such a model is never served."""

_CHARS_PER_TOKEN = 8  # generous upper bound for code: pre-cut texts to this many chars per token of budget


class RerankerLoadError(AgroUserError, ValueError):
    """A model reference that cannot be served as a cross-encoder (missing, wrong shape, untrained, unsafe)."""


class ScoringCancelled(AgroError, RuntimeError):
    """Scoring stopped early because its cancel event was set (the caller gave up on it)."""


# --------------------------------------------------------------------------------------------------- backends


def resolve_backend_name(backend: str, cpuinfo: str | None = None) -> str:
    """Map ``auto`` to ``bf16`` with native bf16, else ``int8`` with VNNI, else ``fp32``; other names pass through."""
    if backend == "auto":
        if cpu_has_native_bf16(cpuinfo):
            return "bf16"
        return "int8" if cpu_has_vnni(cpuinfo) else "fp32"
    if backend not in _BACKENDS:
        raise ValueError(f"reranker backend expects one of auto, {', '.join(_BACKENDS)}, but got {backend!r}")
    return backend


class Backend(ABC):
    """How a loaded float32 model is prepared and run."""

    name: str
    dtype: str

    @abstractmethod
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return the model to run (may convert it in place)."""

    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of shape (batch,) as float32."""
        return model(**inputs).logits[:, 0].float()


class Fp32Backend(Backend):
    name, dtype = "fp32", "float32"

    def prepare(self, model):
        return model.float()


class Bf16Backend(Backend):
    """Weights and activations in bfloat16 (``model.to(torch.bfloat16)``)."""

    name, dtype = "bf16", "bfloat16"

    def prepare(self, model):
        import torch

        return model.to(torch.bfloat16)


class Bf16AutocastBackend(Backend):
    """fp32 weights, matmuls under ``torch.autocast('cpu', bfloat16)``; kept for the benchmark's comparison."""

    name, dtype = "bf16-autocast", "float32+autocast(bfloat16)"

    def prepare(self, model):
        return model.float()

    def forward(self, model, inputs):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**inputs).logits[:, 0].float()


class Int8Backend(Backend):
    """Torch dynamic quantisation of the encoder's ``nn.Linear`` layers to int8 (weights int8, activations quantised
    per batch; VNNI instructions where the CPU has them).

    The pooler and the 1-logit head stay fp32: they run on one token per pair (no measurable time) and the head's
    output is the score itself, so keeping it in fp32 costs nothing and avoids rounding the final logit.
    """

    name, dtype = "int8", "qint8-dynamic"

    def prepare(self, model):
        import torch
        from torch.ao.quantization import quantize_dynamic

        model = model.float()
        spec: set = {
            name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".encoder." in f".{name}."
        } or {torch.nn.Linear}  # no encoder.* naming: quantise every Linear
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao; the API still works and is all we need.
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, spec, dtype=torch.qint8)


_BACKENDS: dict[str, type[Backend]] = {
    "fp32": Fp32Backend,
    "bf16": Bf16Backend,
    "int8": Int8Backend,
    "bf16-autocast": Bf16AutocastBackend,
}


def make_backend(name: str, cpuinfo: str | None = None) -> Backend:
    """Backend for a settings name (``auto``, ``fp32``, ``bf16``, ``int8``, or ``bf16-autocast``)."""
    return _BACKENDS[resolve_backend_name(name, cpuinfo)]()


# ------------------------------------------------------------------------------------------------- resolution


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or ref in (".", "..") or "\\" in ref or ref.count("/") > 1


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise RerankerLoadError(f"cross-encoder path expects a directory, but {path} is a file")
    if not (path / "config.json").is_file():
        raise RerankerLoadError(f"cross-encoder directory expects a config.json, but {path} has none")
    if (path / UNTRAINED_MARKER).exists():
        raise RerankerLoadError(
            f"{path} holds a cross-encoder with an untrained head ({UNTRAINED_MARKER}); it would rank at random. "
            "Train it first (agro bootstrap or agro train), or point AGRO_RERANKER_MODEL_PATH at a trained model."
        )
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        detail = f" (found only {', '.join(found)}: pickle formats are never loaded)" if found else ""
        raise RerankerLoadError(f"cross-encoder directory expects safetensors weights, but {path} has none{detail}")


def _resolve_ref(ref: str) -> tuple[str, bool]:
    """(what from_pretrained loads, is_local_dir). A path-like ref must exist; anything else is a hub id."""
    p = Path(ref).expanduser()
    if p.exists():
        p = p.resolve()
        _check_model_dir(p)
        return str(p), True
    if _looks_like_path(ref) or Path(ref).is_absolute():
        raise RerankerLoadError(f"cross-encoder path does not exist: {ref}")
    return ref, False


# ---------------------------------------------------------------------------------------------------- scorer


class CrossEncoderScorer:
    """A loaded cross-encoder: ``score(query, texts)`` returns one raw logit per text.

    Thread-safe for concurrent ``score`` calls (the model is only read). Build with :meth:`load`.
    """

    kind = "cross-encoder"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        backend: Backend,
        *,
        model_id: str,
        release_id: str | None = None,
        maxlen: int = 256,
        query_max_tokens: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._backend = backend
        self.model_id = model_id
        self.release_id = release_id
        self.backend = backend.name
        self.dtype = backend.dtype
        self.device = "cpu"
        self.maxlen = maxlen
        self.query_max_tokens = query_max_tokens
        self.loaded_at = time.time()
        self.layers = model_layers(model)
        # Specials around a pair ([CLS] q [SEP] t [SEP] = 3 for BERT, 4 for RoBERTa-style).
        self._n_special = tokenizer.num_special_tokens_to_add(pair=True)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(
        cls,
        ref: str | Path,
        *,
        backend: str = "auto",
        maxlen: int = 256,
        query_max_tokens: int = 64,
        threads: int | None = None,
        release_id: str | None = None,
        model_id: str | None = None,
        local_files_only: bool = True,
    ) -> CrossEncoderScorer:
        """Load a cross-encoder from a local directory or a hub id (from the local HF cache by default).

        Raises:
            RerankerLoadError: missing path, no safetensors, untrained head, or not a 1-label sequence classifier.
        """
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        source, is_dir = _resolve_ref(str(ref))
        if threads:
            torch.set_num_threads(threads)
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise RerankerLoadError(f"cannot read a model config from {ref}: {exc}") from exc
        archs = list(getattr(config, "architectures", None) or [])
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise RerankerLoadError(
                f"CrossEncoderScorer expects a sequence classifier (cross-encoder), but {ref} is {', '.join(archs)}"
            )
        if config.num_labels != 1:
            raise RerankerLoadError(
                f"CrossEncoderScorer expects a cross-encoder with 1 output label, but got {config.num_labels} ({ref})"
            )
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                source,
                config=config,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=local_files_only,
                dtype=torch.float32,
            )
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise RerankerLoadError(f"cannot load the cross-encoder at {ref}: {exc}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise RerankerLoadError(f"CrossEncoderScorer expects a fast tokenizer (tokenizer.json), but {ref} has none")
        model.eval()
        be = make_backend(backend)
        model = be.prepare(model)
        scorer = cls(
            model,
            tokenizer,
            be,
            model_id=model_id or (release_id or source),
            release_id=release_id,
            maxlen=maxlen,
            query_max_tokens=query_max_tokens,
        )
        logger.info("loaded cross-encoder %s (backend %s, local dir %s)", scorer.model_id, be.name, is_dir)
        return scorer

    # ------------------------------------------------------------------------------------------ tokenisation

    def _cap_query(self, query: str) -> tuple[str, int]:
        """The query cut to at most ``query_max_tokens`` tokens (by character offsets), and its token count."""
        cap = max(1, min(self.query_max_tokens, self.maxlen - self._n_special - 1))
        enc = self.tokenizer(query, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = enc["input_ids"]
        if len(ids) <= cap:
            return query, len(ids)
        return query[: enc["offset_mapping"][cap - 1][1]], cap

    def encode(self, query: str, texts: list[str]) -> list[dict[str, list[int]]]:
        """Token ids for each (query, text) pair, at most ``maxlen`` tokens, keeping each text's first tokens."""
        query = _clean(query)
        query, q_len = self._cap_query(query)
        budget = max(1, self.maxlen - q_len - self._n_special)
        cut = budget * _CHARS_PER_TOKEN
        cleaned = [_clean(t[: cut * 2]) for t in texts]  # cheap bound before the exact cut below
        pre = [t[:cut] for t in cleaned]
        encs = self._encode_pairs(query, pre)
        # A text cut by characters that still came out under budget lost content it had room for: redo it whole.
        redo = [i for i, t in enumerate(cleaned) if len(t) > cut and len(encs[i]["input_ids"]) < self.maxlen]
        if redo:
            more = self._encode_pairs(query, [_clean(texts[i][: cut * 16]) for i in redo])
            for i, e in zip(redo, more):
                encs[i] = e
        return encs

    def _encode_pairs(self, query: str, texts: list[str]) -> list[dict[str, list[int]]]:
        if not texts:
            return []
        enc = self.tokenizer(
            [query] * len(texts),
            texts,
            truncation="only_second",
            max_length=self.maxlen,
            return_attention_mask=False,
        )
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    # --------------------------------------------------------------------------------------------- scoring

    def score(
        self, query: str, texts: list[str], batch: int = 16, cancel: threading.Event | None = None
    ) -> np.ndarray:
        """Raw logits, one per text, as float32.

        Texts are batched by token length (sorted, padded per batch). ``cancel``, when set between batches,
        stops the work with :class:`ScoringCancelled`.
        """
        import torch

        out = np.zeros(len(texts), dtype=np.float32)
        if not texts:
            return out
        encs = self.encode(query, texts)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i]["input_ids"]))
        batch = max(1, int(batch))
        with torch.inference_mode():
            for start in range(0, len(order), batch):
                if cancel is not None and cancel.is_set():
                    raise ScoringCancelled("scoring cancelled")
                idx = order[start : start + batch]
                inputs = self._pad([encs[i] for i in idx])
                logits = self._backend.forward(self.model, inputs)
                out[idx] = logits.numpy()
        return out

    def _pad(self, encs: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(e["input_ids"]) for e in encs)
        ids = torch.full((len(encs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        types = torch.zeros((len(encs), width), dtype=torch.long) if "token_type_ids" in encs[0] else None
        for row, e in enumerate(encs):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.tensor(e["token_type_ids"], dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        return inputs

    def n_params(self) -> int:
        """Parameter count of the underlying float model (int8 packed weights are not counted)."""
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        return _describe(self)


# ------------------------------------------------------------------------------------------------ bi-encoder


def is_bi_encoder_dir(path: str | Path) -> bool:
    """True for a local sentence-transformers bi-encoder folder (``modules.json`` with a pooling module and no
    sequence-classification head), which :func:`load_scorer` serves with :class:`BiEncoderScorer`."""
    p = Path(path).expanduser()
    try:
        modules = json.loads((p / "modules.json").read_text(encoding="utf-8"))
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    pooled = any("Pooling" in str(m.get("type", "")) for m in modules if isinstance(m, dict))
    return pooled and not any(str(a).endswith("ForSequenceClassification") for a in archs)


class BiEncoderScorer:
    """A fine-tuned bi-encoder as a reranker: ``score(query, texts)`` is the cosine of their embeddings.

    Trained by the same pipeline as a cross-encoder (``AGRO_TRAINING_MODEL_KIND=bi-encoder``, the default): it starts
    from the embedding model, which already ranks code well, so a few dozen feedback questions improve it where a
    cross-encoder's fresh head needs many thousands of pairs to rank at all. Candidate vectors are cached by text (a
    chunk is embedded once per model, however many searches rank it), the query goes through the embedder's lean
    path. Thread-safe (the embedder is).
    """

    kind = "bi-encoder"

    def __init__(self, embedder: Any, *, model_id: str, release_id: str | None, backend: str, maxlen: int,
                 cache_size: int = 20_000) -> None:
        from collections import OrderedDict

        self.embedder = embedder
        self.model_id = model_id
        self.release_id = release_id
        self.backend = backend
        self.dtype = embedder.dtype
        self.device = "cpu"
        self.maxlen = maxlen
        self.query_max_tokens = maxlen  # the query is embedded on its own: its first window of maxlen tokens
        self.loaded_at = time.time()
        self.layers = model_layers(embedder._model[0].auto_model) if hasattr(embedder._model[0], "auto_model") else None
        self.tokenizer = embedder.tokenizer
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.embedded = 0  # texts this scorer has run through the model (shipped or cached vectors are not counted)
        self.shipped: dict[str, Any] | None = None  # what reranker.vectors loaded into the cache, or why it refused

    @classmethod
    def load(cls, ref: str | Path, *, backend: str = "auto", maxlen: int = 256, threads: int | None = None,
             release_id: str | None = None, model_id: str | None = None, **_: Any) -> BiEncoderScorer:
        """Load a local sentence-transformers bi-encoder folder (safetensors only, no remote code).

        ``backend``: ``auto`` / ``bf16`` / ``fp32`` / ``int8`` as for cross-encoders (``bf16-autocast`` runs as bf16).

        Raises:
            RerankerLoadError: not a bi-encoder folder, no safetensors, or it cannot be loaded.
        """
        import torch

        from retrieval.embed import Embedder

        p = Path(ref).expanduser()
        if not is_bi_encoder_dir(p):
            raise RerankerLoadError(f"BiEncoderScorer expects a sentence-transformers bi-encoder folder, but {ref} is not")
        _check_model_dir(p.resolve())
        name = resolve_backend_name(backend)
        dtype = "bf16" if name.startswith("bf16") else name
        if threads:
            torch.set_num_threads(threads)
        try:
            emb = Embedder(str(p.resolve()), dtype=dtype, max_tokens=maxlen)
        except (OSError, ValueError, RuntimeError) as exc:
            raise RerankerLoadError(f"cannot load the bi-encoder at {ref}: {exc}") from exc
        scorer = cls(emb, model_id=model_id or (release_id or str(p.resolve())), release_id=release_id, backend=name,
                     maxlen=maxlen)
        logger.info("loaded bi-encoder reranker %s (%s, query path %s)", scorer.model_id, emb.dtype, emb.query_path)
        return scorer

    def _vectors(self, texts: list[str], batch: int, cancel: threading.Event | None) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        out = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, k in enumerate(keys):
                v = self._cache.get(k)
                if v is None:
                    missing.setdefault(k, []).append(i)
                else:
                    self._cache.move_to_end(k)
                    out[i] = v
        todo = list(missing)
        step = max(1, int(batch))
        for start in range(0, len(todo), step):
            if cancel is not None and cancel.is_set():
                raise ScoringCancelled("scoring cancelled")
            chunk = todo[start : start + step]
            vecs = self.embedder.encode_documents([_clean(texts[missing[k][0]]) for k in chunk])
            with self._lock:
                self.embedded += len(chunk)
                for k, v in zip(chunk, vecs):
                    out[missing[k]] = v
                    self._cache[k] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out

    def warm(self, texts: Any, batch: int = 32, cancel: threading.Event | None = None, duty: float = 0.5,
             progress: Any = None) -> int:
        """Embed candidate texts ahead of the searches that will rank them; returns how many were embedded.

        ``texts`` is any iterable (read lazily); at most the cache's size are taken, so warming never evicts what it
        warmed. Between batches the thread rests so it uses about ``duty`` of one caller's time, leaving the CPU to
        searches. Stops quietly when ``cancel`` is set (a newer release loaded, the server is closing). ``progress``
        is called with the running count after each batch.
        """
        done = 0
        pending: list[str] = []

        def flush() -> None:
            nonlocal done
            t0 = time.perf_counter()
            with self._lock:
                fresh = [t for t in pending if self._key(t) not in self._cache]
            if fresh:
                self._vectors(fresh, len(fresh), cancel)
                done += len(fresh)
                if progress is not None:
                    progress(done)
            pending.clear()
            if 0 < duty < 1 and fresh and cancel is not None:
                cancel.wait((time.perf_counter() - t0) * (1.0 / duty - 1.0))

        try:
            for n, text in enumerate(texts):
                if n >= self._cache_size or (cancel is not None and cancel.is_set()):
                    break
                pending.append(text)
                if len(pending) >= batch:
                    flush()
            if pending and not (cancel is not None and cancel.is_set()):
                flush()
        except ScoringCancelled:
            pass
        return done

    def put_vectors(self, keys: list[str], vectors: np.ndarray) -> int:
        """Place known vectors (by text key, see :meth:`key`) in the cache, at most its size; returns how many."""
        n = min(len(keys), self._cache_size)
        with self._lock:
            for k, v in zip(keys[:n], vectors[:n]):
                self._cache[k] = v
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return n

    def cached_vectors(self, keys: list[str]) -> list[np.ndarray | None]:
        """The cached vector of each text key, None where there is none."""
        with self._lock:
            return [self._cache.get(k) for k in keys]

    @staticmethod
    def key(text: str) -> str:
        """The cache key of a candidate text: a content hash of what the model reads."""
        return BiEncoderScorer._key(text)

    @staticmethod
    def _key(text: str) -> str:
        import hashlib

        return hashlib.blake2b(_clean(text).encode("utf-8", "replace"), digest_size=16).hexdigest()

    def score(self, query: str, texts: list[str], batch: int = 16, cancel: threading.Event | None = None) -> np.ndarray:
        """Cosine similarities, one per text, as float32 (texts cut at ``maxlen`` tokens like the index's)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        q = self.embedder.encode_query(_clean(query))
        return (self._vectors(list(texts), batch, cancel) @ q).astype(np.float32)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.embedder._model.parameters())

    def describe(self) -> dict[str, Any]:
        return {**_describe(self), "cached_vectors": len(self._cache), "embedded": self.embedded,
                "shipped": self.shipped}


def load_scorer(ref: str | Path, **kwargs: Any):
    """The scorer for a model reference: :class:`BiEncoderScorer` for a local bi-encoder folder (what training
    makes by default), else :class:`CrossEncoderScorer` (a local folder or a hub id)."""
    if is_bi_encoder_dir(ref):
        return BiEncoderScorer.load(ref, **kwargs)
    return CrossEncoderScorer.load(ref, **kwargs)


_DESCRIBED = ("kind", "model_id", "release_id", "backend", "dtype", "device", "loaded_at", "maxlen",
              "query_max_tokens", "layers")


def _describe(scorer: Any) -> dict[str, Any]:
    """What ``reranker_admin info`` and the benches report of a loaded scorer of either kind."""
    return {k: getattr(scorer, k) for k in _DESCRIBED}


def _clean(text: str) -> str:
    """Text the Rust tokenizer accepts: lone surrogates (from undecodable bytes) become U+FFFD."""
    if not isinstance(text, str):
        text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


clean_text = _clean  # what the scorers feed their tokenizer (the query key of a bi-encoder's query cache)


# ---------------------------------------------------------------------------------------------------- create


def _layer_list(model: Any) -> tuple[Any, str, str]:
    """(module holding the layer list, its attribute name, the config field counting layers) of a HF encoder."""
    base = getattr(model, "base_model", model)
    for holder_name, attr, field_name in (("encoder", "layer", "num_hidden_layers"),
                                          ("transformer", "layer", "n_layers")):
        holder = getattr(base, holder_name, None)
        if holder is not None and hasattr(holder, attr):
            return holder, attr, field_name
    raise ValueError(
        f"cut_layers expects a BERT-like encoder (encoder.layer or transformer.layer), but got {type(model).__name__}"
    )


def model_layers(model: Any) -> int | None:
    """Number of transformer layers of a HF encoder model (None when its layout is unknown)."""
    try:
        holder, attr, _ = _layer_list(model)
    except ValueError:
        return None
    return len(getattr(holder, attr))


def cut_layers(model: Any, n: int) -> int:
    """Keep the first ``n`` transformer layers of a HF encoder model in place (embeddings and head untouched).

    The config's layer count follows, so ``save_pretrained`` writes a model that loads as an ``n``-layer one.
    A model with ``n`` layers or fewer is left as it is. Returns the number of layers kept.

    Raises:
        ValueError: ``n`` < 1, or a model whose layer list is not ``encoder.layer`` / ``transformer.layer``.
    """
    import torch

    if n < 1:
        raise ValueError(f"cut_layers expects at least 1 layer, but got {n}")
    holder, attr, field_name = _layer_list(model)
    layers = getattr(holder, attr)
    if len(layers) <= n:
        return len(layers)
    setattr(holder, attr, torch.nn.ModuleList(list(layers)[:n]))
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, field_name, n)
        if field_name == "num_hidden_layers" and getattr(config, "layer_types", None):
            config.layer_types = list(config.layer_types)[:n]
    return n


def create_from_backbone(out_dir: str | Path, backbone: str | Path | None = None, *,
                         num_layers: int | None = None) -> Path:
    """Write a cross-encoder built from a BERT backbone (default: offline MiniLM) with a fresh 1-logit head.

    With ``num_layers``, only the backbone's first ``num_layers`` transformer layers are kept (a layer-cut student:
    fewer layers score proportionally faster). The directory gets safetensors weights, config, tokenizer and an
    ``agro_untrained.json`` marker, so it is refused by :meth:`CrossEncoderScorer.load` until training saves a trained
    model without the marker.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from retrieval.models import minilm_path

    src = str(backbone) if backbone is not None else str(minilm_path())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Marker first: a crash mid-write must never leave a loadable untrained model.
    (out / UNTRAINED_MARKER).write_text(
        json.dumps({"backbone": src, "created_at": time.time(), "num_layers": num_layers,
                    "note": "fresh classification head; train before use"})
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=1, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    if num_layers is not None:
        cut_layers(model, num_layers)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)  # transformers 5 writes safetensors only
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(out)
    logger.info("created an untrained cross-encoder from %s at %s (%s layers)", src, out, model_layers(model))
    return out
