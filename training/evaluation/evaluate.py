"""The evaluator: ranking configurations side by side on the same questions, always with the baseline.

Each configuration is a function from a query (:mod:`training.evaluation.datasets`) to a ranked list of hits;
:func:`evaluate` judges every list at file and span level (rules in :mod:`training.evaluation.metrics`, the same as
the bench's ``score.py``) and returns an :class:`EvalReport`. :mod:`training.evaluation.run` wires the search
pipeline to it; :mod:`training.evaluation.report` prints and saves the report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from retrieval.types import Hit
from training.evaluation.datasets import EvalError, EvalQuery
from training.evaluation.metrics import (
    AGGREGATE_KEYS,
    Loc,
    aggregate,
    bootstrap_ci,
    judge_files,
    judge_spans,
    latency_percentiles,
    query_metrics,
)

__all__ = [
    "CI_MAX_N",
    "CONFIGS",
    "EvalReport",
    "LEVELS",
    "RUN_TOP_K",
    "RankFn",
    "Ranking",
    "evaluate",
    "loc_of",
]

LEVELS = ("file", "span")
CONFIGS = ("bm25", "dense", "fused", "fused+rerank", "fused+candidate")
CI_MAX_N = 200  # below this many queries, MRR@10 gets a bootstrap confidence interval
RUN_TOP_K = 100


@dataclass(slots=True)
class Ranking:
    """What a rank function may return instead of a bare list: hits plus stage timings in ms."""

    hits: Sequence[Any]
    timings_ms: dict[str, float] = field(default_factory=dict)


RankFn = Callable[[EvalQuery], "Sequence[Hit] | Ranking"]


def loc_of(item: Any) -> Loc:
    """(path, start, end) of a Hit, a Chunk, a result dict or a Loc tuple."""
    if isinstance(item, tuple):
        return item
    if isinstance(item, Mapping):
        return (item["path"], item.get("start_line"), item.get("end_line"))
    chunk = getattr(item, "chunk", item)
    return (chunk.path, chunk.start_line, chunk.end_line)


# ------------------------------------------------------------------------------------------------- evaluate


@dataclass(slots=True)
class EvalReport:
    """Every metric of every configuration at every level, with latencies and (small sets) confidence intervals."""

    name: str
    created_at: str
    model: str | None
    configs: list[str]
    levels: list[str]
    n_queries: int
    n_by_level: dict[str, int]
    metrics: dict[str, dict[str, dict[str, float]]]  # config -> level -> metric -> value
    ci: dict[str, dict[str, dict[str, list[float]]]]  # config -> level -> metric -> [lo, hi]
    latency_ms: dict[str, dict[str, dict[str, float]]]  # config -> stage -> {p50, p95, n}
    per_query: dict[str, dict[str, list[dict[str, Any]]]]  # config -> level -> rows with qid
    baseline: str
    notes: list[str] = field(default_factory=list)
    runs: dict[str, dict[str, list[Loc]]] = field(default_factory=dict)  # config -> qid -> ranked locs

    def to_dict(self, per_query: bool = True) -> dict[str, Any]:
        """JSON-ready payload (the ranked runs are left out; write them with :func:`write_run_jsonl`)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("runs", "per_query")}
        if per_query:
            d["per_query"] = self.per_query
        return d


def _as_ranking(out: Any) -> Ranking:
    if isinstance(out, Ranking):
        return out
    if hasattr(out, "hits") and hasattr(out, "timings"):  # retrieval.search.SearchResult
        return Ranking(out.hits, dict(out.timings))
    return Ranking(list(out))


def evaluate(
    queries: Sequence[EvalQuery],
    rank_fns: Mapping[str, RankFn],
    levels: Sequence[str] = LEVELS,
    *,
    name: str = "eval",
    model: str | None = None,
    baseline: str | None = None,
    top_k: int = RUN_TOP_K,
    ci_max_n: int = CI_MAX_N,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run every configuration on the same queries and score them.

    Args:
        queries: the evaluation set.
        rank_fns: config name -> function returning the ranked hits (or a :class:`Ranking` with timings).
        levels: ``"file"`` and/or ``"span"``.
        name: dataset name recorded in the report.
        model: reranker model id recorded in the report.
        baseline: config the others are compared with (default ``fused`` when present, else the first).
        top_k: ranked results kept per query.
        ci_max_n: bootstrap a 95% interval for MRR@10 when a level has fewer queries than this.
        progress: called with ``(done, total)`` after each query.

    Raises:
        EvalError: on an empty set, no configs or an unknown level.
    """
    if not queries:
        raise EvalError("The evaluation set is empty: no queries to score. Check the dataset path and its rows.")
    if not rank_fns:
        raise EvalError("evaluate expects at least one ranking configuration, but got none")
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise EvalError(f"levels expects values among {LEVELS}, but got {bad}")
    configs = list(rank_fns)
    base = baseline or ("fused" if "fused" in rank_fns else configs[0])
    if base not in rank_fns:
        raise EvalError(f"baseline expects one of {configs}, but got {base!r}")

    per: dict[str, dict[str, list[dict[str, Any]]]] = {c: {lv: [] for lv in levels} for c in configs}
    timings: dict[str, dict[str, list[float]]] = {c: {} for c in configs}
    runs: dict[str, dict[str, list[Loc]]] = {c: {} for c in configs}
    for done, q in enumerate(queries, 1):
        spans = q.spans()
        for c in configs:
            t0 = time.perf_counter()
            ranking = _as_ranking(rank_fns[c](q))
            wall_ms = (time.perf_counter() - t0) * 1000.0
            locs = [loc_of(h) for h in ranking.hits[:top_k]]
            runs[c][q.qid] = locs
            stage_ms = dict(ranking.timings_ms)
            stage_ms.setdefault("total", wall_ms)
            for stage, ms in stage_ms.items():
                if isinstance(ms, (int, float)):
                    timings[c].setdefault(stage, []).append(float(ms))
            if "file" in levels:
                flags, n = judge_files(q.file_gold(), (p for p, _, _ in locs), exact=q.exact_paths)
                per[c]["file"].append({"qid": q.qid, **query_metrics(flags, n)})
            if "span" in levels and spans:
                flags, n = judge_spans(spans, locs, exact=q.exact_paths)
                per[c]["span"].append({"qid": q.qid, **query_metrics(flags, n)})
        if progress is not None:
            progress(done, len(queries))

    notes: list[str] = []
    metrics: dict[str, dict[str, dict[str, float]]] = {c: {} for c in configs}
    ci: dict[str, dict[str, dict[str, list[float]]]] = {c: {} for c in configs}
    n_by_level = {lv: len(per[configs[0]][lv]) for lv in levels}
    for lv in levels:
        if n_by_level[lv] == 0:
            notes.append(f"no query has {lv}-level gold; {lv} level not scored")
            continue
        if n_by_level[lv] < len(queries):
            notes.append(f"{lv} level: {n_by_level[lv]} of {len(queries)} queries have {lv}-level gold")
        for c in configs:
            rows = per[c][lv]
            metrics[c][lv] = {k: v for k, v in aggregate(rows).items() if k in AGGREGATE_KEYS}
            if len(rows) < ci_max_n:
                ci[c][lv] = {"MRR@10": list(bootstrap_ci([r["MRR@10"] for r in rows]))}
    latency = {c: {stage: latency_percentiles(v) for stage, v in timings[c].items()} for c in configs}
    return EvalReport(
        name=name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=model,
        configs=configs,
        levels=list(levels),
        n_queries=len(queries),
        n_by_level=n_by_level,
        metrics=metrics,
        ci=ci,
        latency_ms=latency,
        per_query=per,
        baseline=base,
        notes=notes,
        runs=runs,
    )
