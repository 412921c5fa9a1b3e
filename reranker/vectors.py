"""Candidate vectors shipped with a bi-encoder release, so a served release is a lookup from its first search.

The gate embeds the indexed chunks with a bi-encoder candidate (:func:`embed_texts`, reusing every vector its
evaluation already computed) and writes them beside the model (:func:`write_vectors`, ``agro_vectors.npz``); the
promotion copies the file with the weights and records it in the manifest (:func:`manifest_entry`) before the
manifest is written, so a release either has complete vectors or none. A server loading the release puts them in the
scorer's cache before it serves (:func:`preload`). Chunks a later index refresh added or changed are embedded by the
background warm-up, and :func:`persist_delta` keeps them outside the release, which stays immutable
(``models/vectors/<release>.delta.npz``), so the next start is warm too.

Each vector is keyed by the content hash of the located text the model reads (path, symbol, text: a changed chunk
gets a new key and is never served an old vector). The file names the model it was computed with (the sha256 of
its weights), the window (``maxlen``) and backend, and a sha256 of its payload: a file that is truncated, corrupted,
or made by another model or window is refused with a log line, and the release embeds on demand as without one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import fsync_dir
from retrieval.errors import AgroError

__all__ = ["VECTORS_FILE", "VectorsError", "delta_path", "embed_texts", "manifest_entry", "persist_delta",
           "preload", "read_vectors", "weights_sha256", "write_vectors"]

logger = logging.getLogger(__name__)

VECTORS_FILE = "agro_vectors.npz"
FORMAT = 1
DTYPES = ("float16", "float32")


class VectorsError(AgroError, ValueError):
    """A vectors file that cannot be served (unreadable, truncated, corrupted, or made for another model)."""


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over the model's safetensors files (names and bytes): the identity of the vectors' model."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _payload_sha(keys: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(keys).tobytes())
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


def embed_texts(scorer: Any, texts: Iterable[str], cap: int, batch: int = 64) -> tuple[list[str], np.ndarray]:
    """The keys and float32 vectors of at most ``cap`` distinct texts, embedded by ``scorer`` (a
    ``BiEncoderScorer``): texts it already holds (what the gate's evaluation ranked) are not embedded again."""
    keys: list[str] = []
    seen: set[str] = set()
    texts_by_key: list[str] = []
    for t in texts:
        if len(keys) >= cap:
            break
        k = scorer.key(t)
        if k not in seen:
            seen.add(k)
            keys.append(k)
            texts_by_key.append(t)
    dim = scorer.embedder.dim
    out = np.zeros((len(keys), dim), dtype=np.float32)
    step = max(256, batch)
    for i in range(0, len(keys), step):
        part = texts_by_key[i : i + step]
        # _vectors looks up the scorer's cache first and embeds only the rest (and caches those up to its size).
        out[i : i + len(part)] = scorer._vectors(part, batch, None)
    return keys, out


def write_vectors(path: str | Path, keys: list[str], vectors: np.ndarray, *, weights: str, maxlen: int,
                  backend: str, model_id: str | None, dtype: str = "float32") -> dict[str, Any]:
    """Write ``keys`` and ``vectors`` to ``path`` atomically (a temporary file beside it, fsync, rename); returns
    the file's metadata (what :func:`manifest_entry` records)."""
    if dtype not in DTYPES:
        raise ValueError(f"vectors dtype expects one of {DTYPES}, but got {dtype!r}")
    path = Path(path)
    k = np.frombuffer(b"".join(bytes.fromhex(x) for x in keys), dtype=np.uint8).reshape(len(keys), -1) \
        if keys else np.zeros((0, 16), dtype=np.uint8)
    v = np.asarray(vectors, dtype=dtype).reshape(len(keys), -1)
    meta = {"format": FORMAT, "count": len(keys), "dim": int(v.shape[1]), "dtype": dtype, "weights_sha256": weights,
            "maxlen": int(maxlen), "backend": backend, "model_id": model_id, "sha256": _payload_sha(k, v)}
    buf = io.BytesIO()
    np.savez(buf, keys=k, vectors=v, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return meta


def read_vectors(path: str | Path, expect: dict[str, Any]) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Keys, float32 vectors and metadata of a vectors file, checked against ``expect`` (any of ``weights_sha256``,
    ``maxlen``, ``backend``, ``dim``, ``count``, ``sha256``, ``dtype``).

    Raises:
        VectorsError: the file is missing, unreadable, truncated, inconsistent, or does not match ``expect``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()  # read whole: np.load leaves its file open when the zip inside is truncated
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            keys, vecs = z["keys"], z["vectors"]
    except FileNotFoundError:
        raise VectorsError(f"{path.name} is missing") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise VectorsError(f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VectorsError(f"{path.name} has an unknown format")
    n = meta.get("count")
    if keys.shape != (n, 16) or vecs.ndim != 2 or vecs.shape[0] != n or str(vecs.dtype) != meta.get("dtype") \
            or vecs.shape[1] != meta.get("dim"):
        raise VectorsError(f"{path.name} holds {vecs.shape} {vecs.dtype} vectors and {keys.shape} keys, not the "
                           f"{n} x {meta.get('dim')} {meta.get('dtype')} its header names")
    if _payload_sha(keys, vecs) != meta.get("sha256"):
        raise VectorsError(f"{path.name} is corrupted (its content does not match its checksum)")
    for field, want in expect.items():
        if want is not None and meta.get(field) != want:
            raise VectorsError(f"{path.name} was made with {field} {meta.get(field)!r}, but {want!r} is serving")
    if not np.isfinite(vecs).all():
        raise VectorsError(f"{path.name} holds non-finite vectors")
    return [bytes(r).hex() for r in keys], vecs.astype(np.float32), meta


def manifest_entry(meta: dict[str, Any]) -> dict[str, Any]:
    """What a release manifest records of its vectors file (``vectors``)."""
    keys = ("count", "dim", "dtype", "model_id", "weights_sha256", "maxlen", "backend", "sha256")
    return {"file": VECTORS_FILE, **{k: meta.get(k) for k in keys}}


def _expect(scorer: Any, weights: str) -> dict[str, Any]:
    return {"weights_sha256": weights, "maxlen": scorer.maxlen, "backend": scorer.backend,
            "dim": scorer.embedder.dim}


def delta_path(models_dir: str | Path, release_dir: str | Path) -> Path:
    """Where the vectors a server embedded for a release since it shipped are kept (outside the release)."""
    return Path(models_dir) / "vectors" / f"{Path(release_dir).name}.delta.npz"


def preload(scorer: Any, release_dir: str | Path, manifest: dict[str, Any] | None,
            delta: Path | None = None) -> dict[str, Any] | None:
    """Load a release's shipped vectors (and those in ``delta``, kept since by :func:`persist_delta`) into a
    bi-encoder scorer's cache before it serves. Returns what was loaded or refused (also set as
    ``scorer.shipped``); None for a scorer without a vector cache (a cross-encoder) or a release with nothing to
    load. Never raises for a bad file: it is refused with a warning, and the release embeds on demand."""
    if not hasattr(scorer, "put_vectors"):
        return None
    d = Path(release_dir)
    entry = (manifest or {}).get("vectors")
    has_delta = delta is not None and delta.is_file()
    if not isinstance(entry, dict) and not has_delta:
        return None
    weights = weights_sha256(d)
    state: dict[str, Any] = {"shipped": 0, "delta": 0, "refused": []}
    keys: list[str] = []
    if isinstance(entry, dict):
        try:
            k, v, _ = read_vectors(d / str(entry.get("file") or VECTORS_FILE),
                                   {**_expect(scorer, weights), "count": entry.get("count"),
                                    "sha256": entry.get("sha256")})
            state["shipped"] = scorer.put_vectors(k, v)
            keys = k
        except VectorsError as exc:
            state["refused"].append(str(exc))
            logger.warning("reranker %s: shipped vectors refused: %s; chunks are embedded on demand",
                           scorer.model_id, exc)
    if has_delta:
        try:
            k, v, _ = read_vectors(delta, _expect(scorer, weights))  # type: ignore[arg-type]
            state["delta"] = scorer.put_vectors(k, v)
        except VectorsError as exc:
            state["refused"].append(str(exc))
            logger.warning("reranker %s: refreshed vectors refused: %s; chunks are embedded on demand",
                           scorer.model_id, exc)
    scorer.shipped = dict(state)
    state["keys"] = set(keys)  # the shipped ones: a refreshed set is rewritten whole, beside them
    logger.info("reranker %s: %d shipped and %d refreshed chunk vectors loaded", scorer.model_id, state["shipped"],
                state["delta"])
    return state


def persist_delta(scorer: Any, release_dir: str | Path, delta: Path, texts: list[str], shipped: set[str],
                  dtype: str = "float32") -> int:
    """Keep the vectors of ``texts`` (the indexed chunks the warm-up saw) that the release did not ship in
    ``delta`` (:func:`delta_path`), replacing the previous one, so the next start loads them too. Returns how many
    were written (0: nothing new, nothing written). A folder that cannot be written is only logged."""
    keys = list(dict.fromkeys(scorer.key(t) for t in texts))
    fresh = [k for k in keys if k not in shipped]
    got = scorer.cached_vectors(fresh)
    pairs = [(k, v) for k, v in zip(fresh, got) if v is not None]
    if not pairs:
        return 0
    d = Path(release_dir)
    try:
        delta.parent.mkdir(parents=True, exist_ok=True)
        write_vectors(delta, [k for k, _ in pairs], np.stack([v for _, v in pairs]),
                      weights=weights_sha256(d), maxlen=scorer.maxlen, backend=scorer.backend,
                      model_id=scorer.model_id, dtype=dtype)
    except OSError as exc:
        logger.warning("reranker %s: cannot keep the refreshed vectors in %s: %s", scorer.model_id, delta, exc)
        return 0
    return len(pairs)
