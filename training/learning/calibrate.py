"""The blend weights a candidate is served with, chosen on questions it was not trained on.

The final score of a reranked hit is ``alpha * minmax(cross-encoder) + (1 - alpha) * retrieval``, where retrieval
is ``(1 - w) * minmax(fused) + w * minmax(dense)``. ``w`` is chosen first, on all training questions, with no
model involved (:func:`choose_dense_weight`). How much a freshly trained cross-encoder should weigh depends on what
it learned: measured on the docstring benchmarks, a candidate trained on ~50 feedback queries ranked httpx's
held-out half at span MRR@10 0.354 with alpha 0.7 and 0.447 with alpha 0.3 (fused alone: 0.383). So each run sets
a *calibration* slice of its training queries aside (seeded, by query, like the held-out split), trains on the
rest, and picks the alpha that ranks the calibration questions best, if it beats
``AGRO_TRAINING_UNCALIBRATED_ALPHA`` (0.3, measured) there by 5%: on a dozen questions the best grid point is
mostly noise. The gate then judges the candidate at that alpha on the held-out questions, which neither training
nor calibration has seen, and a promoted release carries both weights in ``manifest.json`` (``blend``). Weights
set by the user (``AGRO_RERANKER_ALPHA``, ``AGRO_RERANKER_DENSE_WEIGHT``) always win over the release's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reranker.path import RankingPath, RetrievalBlend
from training.learning.miners import MinedSplit, Triplet, heldout_questions, split_by_query
from training.workspace import Workspace

__all__ = ["ALPHA_GRID", "DENSE_WEIGHT_GRID", "calibrate_alpha", "calibration_split", "choose_dense_weight",
           "pick_with_prior"]

logger = logging.getLogger(__name__)

ALPHA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DENSE_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
PRIOR_MARGIN = 0.05  # relative MRR@10 gain over the default that calibration questions must show to move a weight
_SALT = 7919  # the calibration slice is drawn with another seed than the held-out split


def calibration_split(split: MinedSplit, fraction: float, seed: int, min_queries: int) -> tuple[MinedSplit, list[Triplet]]:
    """``(split with train reduced to the fitting part, calibration triplets)``; no slice when it would hold fewer
    than ``min_queries`` questions or leave fewer than ``min_queries`` to fit on (the calibration list is then
    empty and the split unchanged)."""
    inner = split_by_query(split.train, fraction, seed + _SALT)
    n_cal = inner.info["heldout_queries"]
    if n_cal < min_queries or inner.info["train_queries"] < min_queries:
        info = {**split.info, "calibration": {"queries": 0, "reason": (
            f"{n_cal} calibration question(s) of {len(split.train)} training triplets; need at least {min_queries} "
            "(AGRO_TRAINING_CALIBRATION_MIN_QUERIES) on each side")}}
        return MinedSplit(split.train, split.heldout, info), []
    info = {**split.info, "calibration": {"queries": n_cal, "triplets": len(inner.heldout), "fraction": fraction,
                                          "fit_queries": inner.info["train_queries"]}}
    return MinedSplit(inner.train, split.heldout, info), inner.heldout


def pick_with_prior(mrr_by_weight: dict[float, float], default: float, margin: float = PRIOR_MARGIN) -> float:
    """The weight with the highest MRR@10 if it beats ``default``'s by ``margin`` (relative), else ``default``
    (among equal bests, the one closest to ``default``). On a few dozen questions the best grid point is mostly
    noise: docstring_httpx's training half preferred dense weight 0.25, its test half 1.0; docstring_boltons's 14
    calibration questions preferred alpha 0.5-0.7 by 2% over 0.3, and its test half 0.3 by 9-10%. So a measured
    default holds unless the questions clearly say otherwise."""
    best = max(mrr_by_weight, key=lambda w: (mrr_by_weight[w], -round(abs(w - default), 9), -w))
    base = mrr_by_weight.get(default)
    if base is None or mrr_by_weight[best] > base * (1.0 + margin):
        return best
    return default


def _mrr_by_weight(
    ws: Workspace,
    queries: Sequence[Any],
    grid: Sequence[float],
    path_for: Callable[[float], RankingPath],
    generations: Mapping[str, Any] | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, dict[float, float], float | None]:
    """``(level, MRR@10 of the ranking path_for(w) at each w of grid, fused MRR@10)``: span level, or file level
    where the questions have no span gold."""
    from training.evaluation.run import run_evaluation

    level, mrr, fused_mrr = "span", {}, None
    for i, w in enumerate(grid, 1):
        report = run_evaluation(queries, Path(ws.home), ws.settings.index, ws.settings.retrieval,
                                configs=("fused",), candidate_path=path_for(w), embedder=ws.embedder(),
                                levels=("span", "file"), index_backend=ws.indexes, generations=generations,
                                k=50, use_query_cache=True)  # the same questions at every grid point
        if not report.metrics["fused+candidate"].get("span"):
            level = "file"
        mrr[w] = float(report.metrics["fused+candidate"][level]["MRR@10"])
        fused_mrr = float(report.metrics["fused"][level]["MRR@10"])
        if progress is not None:
            progress(i, len(grid))
    return level, mrr, fused_mrr


def choose_dense_weight(
    ws: Workspace,
    questions: Sequence[Triplet],
    *,
    grid: Sequence[float] = DENSE_WEIGHT_GRID,
    min_queries: int = 10,
    max_queries: int = 300,
    seed: int = 0,
    views: Callable[[Sequence[Triplet]], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The dense share ``w`` of the blend's retrieval side (``(1 - w) * minmax(fused) + w * minmax(dense)`` over
    the reranked head) for a run, from how retrieval alone ranks ``questions`` (no cross-encoder) at each ``w`` of
    ``grid``: :func:`pick_with_prior` against the configured default (``AGRO_RERANKER_DENSE_WEIGHT``).

    No model is involved, so the training questions themselves can choose it: it only says, per data home, how
    much of the bi-encoder's cosine to trust against the lexical + dense fusion. Fewer than ``min_queries``
    questions keep the default. At most ``max_queries`` questions are used (a seeded sample); ``views(triplets)``
    gives the index views they are scored on (corpus-bootstrap questions without their answers' docstrings, as the
    gate scores them).
    Returns ``{"dense_weight", "default", "level", "n_queries", "mrr_by_dense_weight"}``.
    """
    from training.evaluation.datasets import queries_from_feedback

    default = float(ws.settings.reranker.dense_weight)
    known = set(ws.corpora())
    rows = [r for r in heldout_questions(questions) if r["corpus"] in known]
    if len(rows) < min_queries:
        return {"dense_weight": default, "default": default, "n_queries": len(rows), "reason": (
            f"{len(rows)} training question(s); need at least {min_queries} to move the dense weight from its "
            "default")}
    if len(rows) > max_queries:
        rows = random.Random(seed).sample(rows, max_queries)
    chosen = {(r["corpus"], r["query"]) for r in rows}
    generations = views([t for t in questions if (t.corpus, t.query) in chosen]) if views else None

    def retrieval_blend(w: float) -> RankingPath:  # the head ordered by the blend's retrieval side at w, no model
        return ws.path.with_reranker(RetrievalBlend(w))

    level, mrr, _ = _mrr_by_weight(ws, queries_from_feedback(rows), sorted({*map(float, grid), default}),
                                   retrieval_blend, generations)
    w = pick_with_prior(mrr, default)
    logger.info("dense weight on %d training questions (%s level): %.2f (default %.2f; MRR@10 by weight %s)",
                len(rows), level, w, default, ", ".join(f"{k:.2f}: {m:.3f}" for k, m in mrr.items()))
    return {"dense_weight": w, "default": default, "level": level, "n_queries": len(rows),
            "mrr_by_dense_weight": {str(k): m for k, m in mrr.items()}}


def calibrate_alpha(
    ws: Workspace,
    model_dir: Path,
    calibration: Sequence[Triplet],
    *,
    grid: Sequence[float] = ALPHA_GRID,
    progress: Callable[[int, int], None] | None = None,
    generations: Mapping[str, Any] | None = None,
    dense_weight: float = 0.0,
    default: float | None = None,
) -> dict[str, Any]:
    """Score the candidate in ``model_dir`` on the calibration questions at every alpha of ``grid`` (and
    ``default``) and pick one with :func:`pick_with_prior`: ``default`` (``AGRO_TRAINING_UNCALIBRATED_ALPHA`` in
    the loop; None = the reranker's alpha) unless another ranks clearly better.

    The cross-encoder runs once per question (a score cache is shared by the grid); only the blend changes.
    ``generations`` are the views the gate uses (corpus-bootstrap questions without their answers' docstrings), so
    the weight is chosen on the same footing as it is judged.
    Returns ``{"alpha", "level", "n_queries", "mrr_by_alpha", "fused_mrr"}``.
    """
    from reranker.cache import ScoreCache
    from reranker.manager import LoadedReranker
    from reranker.model import load_scorer
    from training.evaluation.datasets import queries_from_feedback

    known = set(ws.corpora())
    rows = [r for r in heldout_questions(calibration) if r["corpus"] in known]
    rr = ws.settings.reranker
    if not rows:
        return {"alpha": None, "reason": "no calibration question is on an indexed corpus", "n_queries": 0}
    scorer = load_scorer(model_dir, backend=rr.backend, maxlen=rr.maxlen,
                                     query_max_tokens=rr.query_max_tokens, threads=rr.threads)
    loaded = LoadedReranker(scorer=scorer, model_id=f"calibration:{model_dir}", target=str(model_dir))
    cache = ScoreCache(max(1024, 2 * len(rows) * max(rr.topn, 50)))
    prior = float(rr.alpha if default is None else default)

    def blend_at(a: float) -> RankingPath:
        return ws.path.with_reranker(loaded, rr.model_copy(update={"alpha": a, "dense_weight": float(dense_weight)}),
                                     cache)

    level, mrr, fused_mrr = _mrr_by_weight(ws, queries_from_feedback(rows), sorted({*map(float, grid), prior}),
                                           blend_at, generations, progress)
    alpha = pick_with_prior(mrr, prior)
    logger.info("calibration on %d questions (%s level): alpha %.1f (default %.1f; MRR@10 %.3f; fused %.3f; by alpha "
                "%s)", len(rows), level, alpha, prior, mrr[alpha], fused_mrr,
                ", ".join(f"{a:.1f}: {m:.3f}" for a, m in mrr.items()))
    return {"alpha": alpha, "default": prior, "level": level, "n_queries": len(rows),
            "mrr_by_alpha": {str(a): m for a, m in mrr.items()}, "fused_mrr": fused_mrr,
            "views": sorted(generations or {})}

