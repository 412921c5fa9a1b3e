"""The blend weight a candidate is served with, chosen on questions it was not trained on.

The final score of a reranked hit is ``alpha * minmax(cross-encoder) + (1 - alpha) * minmax(fused)``. How much a
freshly trained cross-encoder should weigh depends on what it learned: measured on the docstring benchmarks, a
candidate trained on ~50 feedback queries ranked httpx's held-out half at span MRR@10 0.354 with the default alpha
0.7 and 0.447 with alpha 0.3 (fused alone: 0.383). So each run sets a *calibration* slice of its training queries
aside (seeded, by query, like the held-out split), trains on the rest, and picks the alpha that ranks the
calibration questions best. The gate then judges the candidate at that alpha on the held-out questions, which
neither training nor calibration has seen, and a promoted release carries it in ``manifest.json`` (``blend``).
An ``AGRO_RERANKER_ALPHA`` set by the user always wins over the release's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.miners import MinedSplit, Triplet, heldout_questions, split_by_query

__all__ = ["ALPHA_GRID", "calibrate_alpha", "calibration_split", "pick_alpha"]

logger = logging.getLogger(__name__)

ALPHA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
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
            "(AGRO_TRAINING_CALIBRATION_MIN_QUERIES) on each side, so the run is served with the configured alpha")}}
        return MinedSplit(split.train, split.heldout, info), []
    info = {**split.info, "calibration": {"queries": n_cal, "triplets": len(inner.heldout), "fraction": fraction,
                                          "fit_queries": inner.info["train_queries"]}}
    return MinedSplit(inner.train, split.heldout, info), inner.heldout


def pick_alpha(mrr_by_alpha: dict[float, float], default: float) -> float:
    """The alpha with the highest MRR@10; among ties, the one closest to ``default``."""
    best = max(mrr_by_alpha.values())
    tied = [a for a, m in mrr_by_alpha.items() if m >= best - 1e-12]
    return min(tied, key=lambda a: (round(abs(a - default), 9), a))


def calibrate_alpha(
    engine: Any,
    model_dir: Path,
    calibration: Sequence[Triplet],
    *,
    grid: Sequence[float] = ALPHA_GRID,
    progress: Callable[[int, int], None] | None = None,
    generations: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the candidate in ``model_dir`` on the calibration questions at every alpha of ``grid``.

    The cross-encoder runs once per question (a score cache is shared by the grid); only the blend changes.
    ``generations`` are the views the gate uses (corpus-bootstrap questions without their answers' docstrings), so
    the weight is chosen on the same footing as it is judged.
    Returns ``{"alpha", "level", "n_queries", "mrr_by_alpha", "fused_mrr"}``.
    """
    from reranker.cache import ScoreCache
    from reranker.manager import LoadedReranker
    from reranker.model import CrossEncoderScorer
    from training.evaluate import make_rerank_fn, queries_from_feedback, run_evaluation

    known = set(engine.corpora())
    rows = [r for r in heldout_questions(calibration) if r["corpus"] in known]
    rr = engine.settings.reranker
    if not rows:
        return {"alpha": None, "reason": "no calibration question is on an indexed corpus", "n_queries": 0}
    scorer = CrossEncoderScorer.load(model_dir, backend=rr.backend, maxlen=rr.maxlen,
                                     query_max_tokens=rr.query_max_tokens, threads=rr.threads)
    loaded = LoadedReranker(scorer=scorer, model_id=f"calibration:{model_dir}", target=str(model_dir))
    cache = ScoreCache(max(1024, 2 * len(rows) * max(rr.topn, 50)))
    queries = queries_from_feedback(rows)
    level = "span"
    mrr: dict[float, float] = {}
    fused_mrr = None
    for i, a in enumerate(grid, 1):
        fn = make_rerank_fn(loaded, rr.model_copy(update={"alpha": float(a)}), cache)
        report = run_evaluation(queries, Path(engine.home), engine.settings.index, engine.settings.retrieval,
                                configs=("fused",), candidate_rerank_fn=fn, embedder=engine.embedder(),
                                levels=("span", "file"), index_backend=engine.indexes, generations=generations,
                                k=50)
        if not report.metrics["fused+candidate"].get("span"):
            level = "file"
        mrr[float(a)] = float(report.metrics["fused+candidate"][level]["MRR@10"])
        fused_mrr = float(report.metrics["fused"][level]["MRR@10"])
        if progress is not None:
            progress(i, len(grid))
    alpha = pick_alpha(mrr, rr.alpha)
    logger.info("calibration on %d questions (%s level): alpha %.1f (MRR@10 %.3f; fused %.3f; by alpha %s)",
                len(rows), level, alpha, mrr[alpha], fused_mrr,
                ", ".join(f"{a:.1f}: {m:.3f}" for a, m in mrr.items()))
    return {"alpha": alpha, "level": level, "n_queries": len(rows), "mrr_by_alpha": {str(a): m for a, m in mrr.items()},
            "fused_mrr": fused_mrr, "views": sorted(generations or {})}

