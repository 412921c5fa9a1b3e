"""The chunk vectors a bi-encoder candidate ships with its release (see :mod:`reranker.vectors`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reranker.vectors import VECTORS_FILE, embed_texts, weights_sha256, write_vectors
from retrieval.types import located_text

__all__ = ["indexed_texts", "ship_vectors"]

logger = logging.getLogger(__name__)


def indexed_texts(ws: Any, limit: int) -> Iterator[str]:
    """The indexed chunks' located texts (what a reranker reads), corpus by corpus, at most ``limit``: the same
    chunks, in the same order, as the server's warm-up takes."""
    for corpus in ws.corpora():
        if limit <= 0:
            return
        chunks = ws.generation(corpus).some_chunks(limit)
        limit -= len(chunks)
        for c in chunks:
            yield located_text(c.path, c.symbol, c.text)


def ship_vectors(ws: Any, ctx: Any, model_dir: Path, loaded: Any = None) -> dict[str, Any] | None:
    """Embed the indexed chunks with the bi-encoder in ``model_dir`` and write them beside it (``agro_vectors.npz``),
    where a promotion copies them with the weights. ``loaded`` (the candidate the gate just ranked with) is reused
    with every vector it already holds; without it the model is loaded. Returns the file's metadata, or None for a
    cross-encoder or with ``AGRO_TRAINING_SHIP_VECTORS_MAX=0`` (an older vectors file is removed then)."""
    from reranker.model import is_bi_encoder_dir

    ts, rr = ws.settings.training, ws.settings.reranker
    out = Path(model_dir) / VECTORS_FILE
    if not is_bi_encoder_dir(model_dir) or ts.ship_vectors_max <= 0:
        out.unlink(missing_ok=True)
        return None
    if loaded is None:
        from training.evaluation.run import load_reranker

        loaded = load_reranker(str(model_dir), rr)
    scorer = loaded.scorer
    if not hasattr(scorer, "put_vectors"):
        return None
    t0 = time.perf_counter()
    before = scorer.embedded
    keys, vecs = embed_texts(scorer, indexed_texts(ws, ts.ship_vectors_max), ts.ship_vectors_max,
                             batch=max(16, rr.batch))
    meta = write_vectors(out, keys, vecs, weights=weights_sha256(model_dir), maxlen=scorer.maxlen,
                         backend=scorer.backend, model_id=Path(model_dir).parent.name, dtype=ts.ship_vectors_dtype)
    meta["embedded_now"] = scorer.embedded - before
    ctx.log("shipped vectors: %d indexed chunks (%d embedded now, the rest reused from the gate) in %.1fs, %s",
            len(keys), meta["embedded_now"], time.perf_counter() - t0, ts.ship_vectors_dtype)
    return meta
