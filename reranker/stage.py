"""The rerank stage: score the head of the fused list with the cross-encoder and blend.

Final score of a head hit = ``alpha * minmax(rerank logits over the head) + (1 - alpha) * retrieval``, where
``retrieval = (1 - w) * minmax(fused) + w * minmax(dense cosine)`` over the head. ``w`` (``dense_weight``: 0.5,
or the release's own) lets the bi-encoder's cosine count beside the fusion, which ranks worse than dense alone on
some code (docstring_httpx: dense 0.673 vs fused 0.546 file MRR@10) and better on other code (jinja: 0.662 vs
0.724). Min-max (not sigmoid) for the logits: a trained cross-encoder's logits for one query's candidates often sit
in a narrow band far from 0, where a sigmoid squashes them to nearly equal values and alpha stops meaning "weight of
the cross-encoder". Min-max gives both signals the range [0, 1], so alpha is their true weight. A constant column
(one candidate, or all equal) normalises to 1.0. Tail hits (below ``topn``) keep their fused order with scores in
``[head_min - 1, head_min - 0.5]``, strictly below every head score.

The stage never fails a search: any error, or a run past ``timeout_ms``, returns the fused order unchanged with
``fallback_reason`` set.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reranker.cache import ScoreCache
from reranker.manager import LoadedReranker, RerankerManager, effective_alpha, effective_dense_weight
from reranker.model import ScoringCancelled
from reranker.settings import RerankerSettings
from retrieval.types import Hit, located_text

__all__ = ["RerankOutcome", "blend_scores", "minmax", "rerank", "retrieval_scores", "tail_scores"]

logger = logging.getLogger(__name__)


class RerankOutcome(NamedTuple):
    hits: list[Hit]
    used: bool
    model: str | None
    fallback_reason: str | None
    ms: float
    cached: int
    kept_fused: bool = False  # fused order by design (a query too long for the release), not a failure


def minmax(values: Sequence[float]) -> np.ndarray:
    """Min-max to [0, 1]; a constant (or single) column maps to 1.0."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return a
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.ones_like(a)
    return (a - lo) / (hi - lo)


def retrieval_scores(fused: Sequence[float], dense: Sequence[float | None] | None = None,
                     dense_weight: float = 0.0) -> np.ndarray:
    """``(1 - w) * minmax(fused) + w * minmax(dense)``. A hit without a dense score (outside the dense candidates
    of a backend that does not score every chunk) counts as the lowest dense score of the list; with no dense score
    at all, the fused score alone."""
    f = minmax(fused)
    known = [d for d in dense or () if d is not None]
    if dense_weight <= 0.0 or not known:
        return f
    low = min(known)
    d = minmax([low if x is None else x for x in dense])  # type: ignore[union-attr]
    return (1.0 - dense_weight) * f + dense_weight * d


def blend_scores(rerank: Sequence[float], fused: Sequence[float], alpha: float,
                 dense: Sequence[float | None] | None = None, dense_weight: float = 0.0) -> np.ndarray:
    """``alpha * minmax(rerank) + (1 - alpha) * retrieval_scores(fused, dense, dense_weight)``."""
    return alpha * minmax(rerank) + (1.0 - alpha) * retrieval_scores(fused, dense, dense_weight)


def tail_scores(fused: Sequence[float], head_min: float) -> np.ndarray:
    """Scores for the tail, in ``[head_min - 1, head_min - 0.5]``, monotone in the fused score."""
    return head_min - 1.0 + 0.5 * minmax(fused)


class _Fallback(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _score_with_deadline(
    loaded: LoadedReranker, query: str, texts: list[str], batch: int, timeout_ms: int | None
) -> np.ndarray:
    if timeout_ms is None:
        return loaded.scorer.score(query, texts, batch)
    cancel = threading.Event()
    done = threading.Event()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["scores"] = loaded.scorer.score(query, texts, batch, cancel)
        except ScoringCancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which reports it
            box["error"] = exc
        finally:
            done.set()

    # A daemon thread: past the deadline the search returns, and the worker stops at its next batch boundary.
    threading.Thread(target=work, name="agro-rerank-score", daemon=True).start()
    if not done.wait(timeout_ms / 1000.0):
        cancel.set()
        raise _Fallback(f"reranker timed out after {timeout_ms} ms")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["scores"]  # type: ignore[return-value]


def query_token_limit(loaded: LoadedReranker, settings: RerankerSettings) -> int | None:
    """Longest query this release reranks, from the longest question it was trained on; None = no limit."""
    trained = ((loaded.manifest or {}).get("data") or {}).get("query_tokens_max")
    if not settings.long_query_factor or not isinstance(trained, int) or isinstance(trained, bool) or trained <= 0:
        return None  # not recorded (a model named by path, an older release) or switched off
    return int(settings.long_query_factor * max(trained, settings.query_max_tokens))


def long_query_reason(query: str, loaded: LoadedReranker, settings: RerankerSettings) -> str | None:
    """Why ``query`` keeps the fused order (it is far longer than any question the release learned from), or None."""
    limit = query_token_limit(loaded, settings)
    if limit is None:
        return None
    tok = getattr(loaded.scorer, "tokenizer", None)
    if tok is None:
        return None
    n = len(tok(query, add_special_tokens=False)["input_ids"])
    if n <= limit:
        return None
    return (f"query has {n} tokens, over {limit}: release {loaded.model_id} learned from questions of at most "
            f"{loaded.manifest['data']['query_tokens_max']} tokens, so the fused order is kept "
            "(AGRO_RERANKER_LONG_QUERY_FACTOR=0 reranks every query)")


def rerank(
    query: str,
    hits: list[Hit],
    manager_or_loaded: RerankerManager | LoadedReranker | None,
    settings: RerankerSettings,
    cache: ScoreCache | None = None,
    *,
    wait: bool | float = False,
) -> RerankOutcome:
    """Rerank the first ``settings.topn`` hits (0 = all) and blend; the tail keeps its fused order.

    Args:
        query: the user's query.
        hits: fused hits, best first (not modified; reranked hits are copies).
        manager_or_loaded: the process's manager, a model grabbed from it, or None.
        settings: alpha, topn, batch, timeout_ms.
        cache: score cache shared by searches (optional).
        wait: with a manager, how long to wait for its first load (see ``RerankerManager.get``).

    Returns:
        The new order, or the fused order unchanged with ``fallback_reason`` when reranking was not possible.
    """
    t0 = time.perf_counter()

    def fallback(reason: str | None, model: str | None = None, cached: int = 0) -> RerankOutcome:
        return RerankOutcome(list(hits), False, model, reason, (time.perf_counter() - t0) * 1000.0, cached)

    if not settings.enabled:
        return fallback("reranker disabled (AGRO_RERANKER_ENABLED=0)")
    if isinstance(manager_or_loaded, RerankerManager):
        loaded = manager_or_loaded.get(wait)
        if loaded is None:
            return fallback(manager_or_loaded.none_reason or "no reranker model loaded")
    elif manager_or_loaded is None:
        return fallback("no reranker model loaded")
    else:
        loaded = manager_or_loaded
    if not hits:
        return RerankOutcome([], False, loaded.model_id, None, (time.perf_counter() - t0) * 1000.0, 0)
    too_long = long_query_reason(query, loaded, settings)
    if too_long:
        return fallback(too_long, loaded.model_id)._replace(kept_fused=True)

    n_head = len(hits) if settings.topn == 0 else min(settings.topn, len(hits))
    head, tail = hits[:n_head], hits[n_head:]
    cached = 0
    try:
        # The model scores the located text (path and symbol header), so a cached score belongs to that location.
        hashes = [f"{h.chunk.hash}\x1f{h.chunk.path}\x1f{h.chunk.symbol or ''}" for h in head]
        key = loaded.cache_key
        scores: list[float | None] = cache.get_many(key, query, hashes) if cache is not None else [None] * n_head
        missing = [i for i, s in enumerate(scores) if s is None]
        cached = n_head - len(missing)
        if missing:
            texts = [located_text(head[i].chunk.path, head[i].chunk.symbol, head[i].chunk.text) for i in missing]
            new = _score_with_deadline(loaded, query, texts, settings.batch, settings.timeout_ms)
            if len(new) != len(missing):
                raise _Fallback(f"reranker returned {len(new)} scores for {len(missing)} candidates")
            for i, s in zip(missing, new):
                scores[i] = float(s)
            if settings.timeout_ms is not None and (time.perf_counter() - t0) * 1000.0 > settings.timeout_ms:
                raise _Fallback(f"reranker timed out after {settings.timeout_ms} ms")
            if cache is not None:
                cache.put_many(key, query, [(hashes[i], scores[i]) for i in missing])
        if not all(math.isfinite(s) for s in scores):  # type: ignore[arg-type]
            raise _Fallback("reranker returned non-finite scores")
    except _Fallback as exc:
        logger.warning("rerank fell back to fused order (model %s): %s", loaded.model_id, exc.reason)
        return fallback(exc.reason, loaded.model_id, cached)
    except Exception as exc:  # noqa: BLE001 - the stage must never fail a search; the reason is reported
        reason = f"reranker error: {type(exc).__name__}: {exc}"
        logger.warning("rerank fell back to fused order (model %s): %s", loaded.model_id, reason, exc_info=exc)
        return fallback(reason, loaded.model_id, cached)

    alpha, _ = effective_alpha(loaded, settings)
    w, _ = effective_dense_weight(loaded, settings)
    final = blend_scores(scores, [h.fused_score for h in head], alpha,  # type: ignore[arg-type]
                         [h.dense_score for h in head], w)
    order = sorted(range(n_head), key=lambda i: -final[i])  # stable: ties keep fused order
    out = [dataclasses.replace(head[i], rerank_score=float(scores[i]), score=float(final[i])) for i in order]
    if tail:
        t_scores = tail_scores([h.fused_score for h in tail], float(final.min()))
        out.extend(dataclasses.replace(h, score=float(s), rerank_score=None) for h, s in zip(tail, t_scores))
    return RerankOutcome(out, True, loaded.model_id, None, (time.perf_counter() - t0) * 1000.0, cached)
