"""Ranking metrics, as pure functions that agree with ``../shared/bench/tools/score.py``.

A ranked list is first *judged* against the gold locations, which turns it into ``list[bool]`` (one flag per rank)
plus the number of gold units; every metric is then a function of those two.

* File level: the ranked list is reduced to distinct paths (first occurrence wins); a path is relevant when it
  matches a gold path not matched yet.
* Span level: a result is relevant when it is in a gold file and its line range overlaps a gold span not matched
  yet (each gold span is matched once, in gold order). A gold or a result without lines covers the whole file.

Paths match by suffix on ``/`` boundaries (gold ``auth/oauth.py`` matches ``src/auth/oauth.py``, never
``myauth/oauth.py``), or exactly when the caller knows both sides are relative to the same root (as in the bench,
which is what score.py does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "AGGREGATE_KEYS",
    "Loc",
    "aggregate",
    "bootstrap_ci",
    "hit_at",
    "judge_files",
    "judge_spans",
    "latency_percentiles",
    "ndcg_at",
    "norm_path",
    "path_matches",
    "percentile",
    "query_metrics",
    "recall_at",
    "reciprocal_rank",
]

# (path, start_line, end_line); lines may be None for "whole file".
Loc = tuple[str, int | None, int | None]

AGGREGATE_KEYS: tuple[str, ...] = (
    "MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10", "nDCG@10", "Recall@10", "Recall@50",
)
_WHOLE_FILE_END = 10**9


def norm_path(path: str) -> str:
    """POSIX separators, no leading ``./`` or ``/`` (as score.py's ``norm``)."""
    p = path.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/")


def path_matches(gold: str, got: str, exact: bool = False) -> bool:
    """Whether a retrieved path is the gold file.

    Args:
        gold: the expected path (possibly a suffix such as ``auth/oauth.py``).
        got: the retrieved path.
        exact: compare whole normalised paths only (score.py's rule).
    """
    g, p = norm_path(gold), norm_path(got)
    if not g:
        return False
    if exact or p == g:
        return p == g
    return p.endswith("/" + g)


def reciprocal_rank(ranked_rel: Sequence[bool], k: int = 10) -> float:
    """1 / rank of the first relevant result within the top ``k``, else 0."""
    for i, rel in enumerate(ranked_rel[:k]):
        if rel:
            return 1.0 / (i + 1)
    return 0.0


def hit_at(ranked_rel: Sequence[bool], k: int) -> float:
    """1.0 if any of the top ``k`` is relevant, else 0.0."""
    return 1.0 if any(ranked_rel[:k]) else 0.0


def recall_at(ranked_rel: Sequence[bool], k: int, n_gold: int) -> float:
    """Fraction of the ``n_gold`` gold units found in the top ``k`` (0 when there is no gold)."""
    if n_gold <= 0:
        return 0.0
    return sum(1 for rel in ranked_rel[:k] if rel) / n_gold


def ndcg_at(ranked_rel: Sequence[bool], n_gold: int, k: int = 10) -> float:
    """nDCG with binary gains; the ideal list has ``min(n_gold, k)`` relevant results on top."""
    dcg = sum(1.0 / math.log2(i + 2) for i, rel in enumerate(ranked_rel[:k]) if rel)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_gold, k)))
    return dcg / idcg if idcg else 0.0


def judge_files(gold_paths: Iterable[str], ranked_paths: Iterable[str], exact: bool = False) -> tuple[list[bool], int]:
    """File-level relevance flags for a ranked list of paths.

    Returns:
        ``(flags, n_gold)``: one flag per *distinct* retrieved path, and the number of distinct gold paths.
    """
    golds = list(dict.fromkeys(norm_path(g) for g in gold_paths))
    matched = [False] * len(golds)
    seen: set[str] = set()
    flags: list[bool] = []
    for raw in ranked_paths:
        p = norm_path(raw)
        if p in seen:
            continue
        seen.add(p)
        hit = False
        for j, g in enumerate(golds):
            if not matched[j] and path_matches(g, p, exact):
                matched[j] = hit = True
                break
        flags.append(hit)
    return flags, len(golds)


def judge_spans(gold: Sequence[Loc], ranked: Iterable[Loc], exact: bool = False) -> tuple[list[bool], int]:
    """Span-level relevance flags: same file and overlapping lines with a gold span not matched yet.

    Returns:
        ``(flags, n_gold)``: one flag per retrieved result, and the number of gold spans.
    """
    spans = [(norm_path(p), s or 1, e or _WHOLE_FILE_END) for p, s, e in gold]
    matched = [False] * len(spans)
    flags: list[bool] = []
    for path, start, end in ranked:
        s, e = start or 1, end or _WHOLE_FILE_END
        hit = False
        for j, (gp, gs, ge) in enumerate(spans):
            if not matched[j] and s <= ge and e >= gs and path_matches(gp, path, exact):
                matched[j] = hit = True
                break
        flags.append(hit)
    return flags, len(spans)


def query_metrics(ranked_rel: Sequence[bool], n_gold: int) -> dict[str, float]:
    """Every per-query metric in :data:`AGGREGATE_KEYS`."""
    return {
        "MRR@10": reciprocal_rank(ranked_rel, 10),
        "Hit@1": hit_at(ranked_rel, 1),
        "Hit@3": hit_at(ranked_rel, 3),
        "Hit@5": hit_at(ranked_rel, 5),
        "Hit@10": hit_at(ranked_rel, 10),
        "nDCG@10": ndcg_at(ranked_rel, n_gold, 10),
        "Recall@10": recall_at(ranked_rel, 10, n_gold),
        "Recall@50": recall_at(ranked_rel, 50, n_gold),
    }


def aggregate(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    """Macro average of per-query metrics (the keys of the first row; every row must have them).

    Raises:
        ValueError: on an empty list.
    """
    if not per_query:
        raise ValueError("aggregate expects at least one per-query row, but got none")
    keys = [k for k in per_query[0] if isinstance(per_query[0][k], (int, float)) and not isinstance(per_query[0][k], bool)]
    return {k: sum(float(row[k]) for row in per_query) / len(per_query) for k in keys}


def bootstrap_ci(
    values: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: per-query values (e.g. reciprocal ranks).
        n: resamples.
        seed: RNG seed; the same inputs always give the same interval.
        alpha: 0.05 gives a 95% interval.

    Raises:
        ValueError: on empty values or alpha outside (0, 1).
    """
    if len(values) == 0:
        raise ValueError("bootstrap_ci expects at least one value, but got none")
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci expects 0 < alpha < 1, but got {alpha}")
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n, len(arr)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in 0..100.

    Raises:
        ValueError: on empty values.
    """
    if len(values) == 0:
        raise ValueError("percentile expects at least one value, but got none")
    xs = sorted(float(v) for v in values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_percentiles(ms: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p95", "n"}`` of latencies in milliseconds (empty dict when there are none)."""
    if len(ms) == 0:
        return {}
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "n": len(ms)}
