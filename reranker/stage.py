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
import re
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reranker.cache import ScoreCache
from reranker.manager import LoadedReranker, RerankerManager, effective_alpha, effective_dense_weight
from reranker.model import ScoringCancelled
from reranker.settings import RerankerSettings
from retrieval.errors import AgroError
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
    windows: int = 0  # a long query read in this many windows (long_query_mode "windows"); 0 = read whole


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


class _Fallback(AgroError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _score_with_deadline(
    loaded: LoadedReranker, query: str, texts: list[str], batch: int, timeout_ms: int | None,
    report_ms: int | None = None,
) -> np.ndarray:
    """Score on a worker thread for at most ``timeout_ms``; a timeout is reported as ``report_ms`` (the whole
    stage's budget, of which ``timeout_ms`` is what is left)."""
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
        raise _Fallback(f"reranker timed out after {report_ms or timeout_ms} ms")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["scores"]  # type: ignore[return-value]


def _head_scores(query: str, head: list[Hit], hashes: list[str], loaded: LoadedReranker,
                 settings: RerankerSettings, cache: ScoreCache | None, t0: float) -> tuple[np.ndarray, int]:
    """The model's score of ``query`` against each head hit's located text (cached ones looked up, only the
    others built and scored), and how many were cached. ``settings.timeout_ms`` counts from ``t0``, the start of
    the whole rerank."""
    key = loaded.cache_key
    scores: list[float | None] = cache.get_many(key, query, hashes) if cache is not None else [None] * len(hashes)
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        left = None
        if settings.timeout_ms is not None:
            left = int(settings.timeout_ms - (time.perf_counter() - t0) * 1000.0)
            if left <= 0:
                raise _Fallback(f"reranker timed out after {settings.timeout_ms} ms")
        texts = [located_text(head[i].chunk.path, head[i].chunk.symbol, head[i].chunk.text) for i in missing]
        new = _score_with_deadline(loaded, query, texts, settings.batch, left, settings.timeout_ms)
        if len(new) != len(missing):
            raise _Fallback(f"reranker returned {len(new)} scores for {len(missing)} candidates")
        for i, s in zip(missing, new):
            scores[i] = float(s)
        if settings.timeout_ms is not None and (time.perf_counter() - t0) * 1000.0 > settings.timeout_ms:
            raise _Fallback(f"reranker timed out after {settings.timeout_ms} ms")
        if cache is not None:
            cache.put_many(key, query, [(hashes[i], scores[i]) for i in missing])
    return np.asarray(scores, dtype=np.float64), len(hashes) - len(missing)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def query_windows(query: str, loaded: LoadedReranker, settings: RerankerSettings, texts: Sequence[str]) -> list[str]:
    """A long query cut into windows of the scorer's query share (``query_max_tokens`` tokens), at most
    ``settings.long_query_windows`` of them: the first (where a title or summary sits) and the ones whose words
    best single out candidates (each word weighs ``log(n / df)`` over the ``n`` head texts that hold it, so a word
    in no candidate or in all of them adds nothing), kept in query order. Empty when the scorer has no tokenizer
    that gives offsets."""
    tok = getattr(loaded.scorer, "tokenizer", None)
    size = settings.query_max_tokens
    if tok is None:
        return []
    try:
        offsets = tok(query, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except Exception:  # noqa: BLE001 - a slow (python) tokenizer without offsets: keep the fused order
        return []
    if not offsets:
        return []
    spans = [(offsets[i][0], offsets[min(i + size, len(offsets)) - 1][1]) for i in range(0, len(offsets), size)]
    wins = [query[a:b].strip() for a, b in spans]
    wins = [w for w in wins if w]
    cap = settings.long_query_windows
    if len(wins) <= cap:
        return wins
    n = len(texts)
    df: dict[str, int] = {}
    for t in texts:
        for w in {m.group(0).lower() for m in _WORD.finditer(t)}:
            df[w] = df.get(w, 0) + 1

    def weight(win: str) -> float:
        return sum(math.log(n / df[w]) for w in {m.group(0).lower() for m in _WORD.finditer(win)} if w in df)

    rest = sorted(range(1, len(wins)), key=lambda i: (-weight(wins[i]), i))[: cap - 1]
    return [wins[i] for i in sorted([0, *rest])]


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
            "(AGRO_RERANKER_LONG_QUERY_MODE=windows reads it in windows; AGRO_RERANKER_LONG_QUERY_FACTOR=0 reranks every "
            "query as it is)")


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
    n_head = len(hits) if settings.topn == 0 else min(settings.topn, len(hits))
    head, tail = hits[:n_head], hits[n_head:]
    windows: list[str] = []
    too_long = long_query_reason(query, loaded, settings)
    if too_long:
        if settings.long_query_mode == "windows":
            windows = query_windows(query, loaded, settings, [h.chunk.text for h in head])
        if not windows:
            return fallback(too_long, loaded.model_id)._replace(kept_fused=True)
    cached = 0
    try:
        # The model scores the located text (path and symbol header), so a cached score belongs to that location.
        hashes = [f"{h.chunk.hash}\x1f{h.chunk.path}\x1f{h.chunk.symbol or ''}" for h in head]
        per_window = []
        for q in windows or [query]:
            got, n_cached = _head_scores(q, head, hashes, loaded, settings, cache, t0)
            cached += n_cached
            per_window.append(got)
        pooled = np.max(per_window, axis=0) if settings.long_query_pool == "max" else np.mean(per_window, axis=0)
        scores = [float(x) for x in pooled]
        if not all(math.isfinite(s) for s in scores):
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
    return RerankOutcome(out, True, loaded.model_id, None, (time.perf_counter() - t0) * 1000.0, cached,
                         windows=len(windows))
