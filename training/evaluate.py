"""The evaluator: ranking configurations side by side on the same questions, always with the baseline.

Inputs are :class:`EvalQuery` lists from golden.json (:func:`queries_from_golden`), a ``../shared/bench``
collection (:func:`load_bench`) or held-out feedback questions (:func:`queries_from_feedback`). Each
configuration is a function from a query to a ranked list of hits; :func:`evaluate` judges every list at file and
span level (rules in :mod:`training.metrics`, the same as the bench's ``score.py``) and returns an
:class:`EvalReport`. :func:`run_evaluation` wires the search pipeline (BM25, dense, fused, fused + reranker,
fused + candidate) to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from retrieval.atomic import write_text_atomic
from retrieval.types import Hit, parse_doc_id
from training.golden import GoldenItem, load_golden
from training.metrics import (
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
    "BenchSet",
    "CONFIGS",
    "EvalError",
    "EvalQuery",
    "EvalReport",
    "GoldLoc",
    "RankFn",
    "Ranking",
    "RerankFn",
    "SavedReport",
    "evaluate",
    "format_table",
    "load_bench",
    "load_rerank_fn",
    "make_rerank_fn",
    "queries_from_feedback",
    "queries_from_golden",
    "run_evaluation",
    "save_report",
    "write_run_jsonl",
]

logger = logging.getLogger(__name__)

LEVELS = ("file", "span")
CONFIGS = ("bm25", "dense", "fused", "fused+rerank", "fused+candidate")
CI_MAX_N = 200  # below this many queries, MRR@10 gets a bootstrap confidence interval
RUN_TOP_K = 100


class EvalError(ValueError):
    """The evaluation cannot run as asked (empty set, unknown config, missing corpus or reranker)."""


@dataclass(frozen=True, slots=True)
class GoldLoc:
    """An expected location: a file, or a line range of it (1-based, inclusive)."""

    path: str
    start_line: int | None = None
    end_line: int | None = None

    def loc(self) -> Loc:
        return (self.path, self.start_line, self.end_line)


@dataclass(slots=True)
class EvalQuery:
    """One question with its gold.

    Attributes:
        gold: expected files and spans. File level uses its distinct paths; span level uses its spans, and a
            path given without lines counts as the whole file unless a span of the same path is listed.
        span_gold: when not None, the span-level gold instead (the bench's ``qrels_functions``); an empty list
            leaves the query out of span level, as score.py does.
        exact_paths: compare whole paths (the bench, where both sides are relative to the corpus root) instead of
            path suffixes (golden.json).
    """

    qid: str
    query: str
    corpus: str
    gold: list[GoldLoc]
    span_gold: list[GoldLoc] | None = None
    exact_paths: bool = False

    def file_gold(self) -> list[str]:
        return list(dict.fromkeys(g.path for g in self.gold))

    def spans(self) -> list[Loc]:
        if self.span_gold is not None:
            return [g.loc() for g in self.span_gold]
        with_lines = [g for g in self.gold if g.start_line is not None]
        spanned = {g.path for g in with_lines}
        whole = [g for g in dict.fromkeys(g for g in self.gold if g.start_line is None) if g.path not in spanned]
        return [g.loc() for g in with_lines + whole]


@dataclass(slots=True)
class Ranking:
    """What a rank function may return instead of a bare list: hits plus stage timings in ms."""

    hits: Sequence[Any]
    timings_ms: dict[str, float] = field(default_factory=dict)


RankFn = Callable[[EvalQuery], "Sequence[Hit] | Ranking"]
RerankFn = Callable[[str, list[Hit]], tuple[list[Hit], float]]  # (reordered hits, rerank ms)


def _loc_of(item: Any) -> Loc:
    """(path, start, end) of a Hit, a Chunk, a result dict or a Loc tuple."""
    if isinstance(item, tuple):
        return item
    if isinstance(item, Mapping):
        return (item["path"], item.get("start_line"), item.get("end_line"))
    chunk = getattr(item, "chunk", item)
    return (chunk.path, chunk.start_line, chunk.end_line)


# ------------------------------------------------------------------------------------------------- loaders


def queries_from_golden(items: Iterable[GoldenItem], qid_prefix: str = "golden") -> list[EvalQuery]:
    """golden.json rows as queries (qids ``golden-0000`` … by row index; suffix path matching)."""
    out = []
    for i, it in enumerate(items):
        gold = [GoldLoc(s.path, s.start_line, s.end_line) for s in it.expect_spans]
        gold += [GoldLoc(p) for p in it.expect_paths]
        out.append(EvalQuery(f"{qid_prefix}-{i:04d}", it.q, it.repo, gold))
    return out


def queries_from_feedback(rows: Iterable[EvalQuery | Mapping[str, Any]]) -> list[EvalQuery]:
    """Held-out feedback questions as queries.

    Each row is an :class:`EvalQuery` or a mapping ``{"qid"?, "query", "corpus", "gold": [...]}`` whose gold
    entries are ``{"path", "start_line"?, "end_line"?}`` mappings or ``"path:start-end"`` doc ids.

    Raises:
        EvalError: naming the row that has no query, corpus or gold.
    """
    out: list[EvalQuery] = []
    for i, row in enumerate(rows):
        if isinstance(row, EvalQuery):
            out.append(row)
            continue
        missing = [k for k in ("query", "corpus", "gold") if not row.get(k)]
        if missing:
            raise EvalError(f"held-out row {i} expects keys query, corpus and a non-empty gold, but lacks {missing}")
        gold = []
        for g in row["gold"]:
            if isinstance(g, str):
                try:
                    gold.append(GoldLoc(*parse_doc_id(g)))
                except ValueError:
                    gold.append(GoldLoc(g))
            else:
                gold.append(GoldLoc(g["path"], g.get("start_line"), g.get("end_line")))
        out.append(EvalQuery(str(row.get("qid") or f"heldout-{i:04d}"), row["query"], row["corpus"], gold))
    return out


@dataclass(slots=True)
class BenchSet:
    """A ``../shared/bench`` collection: its queries and the root folder of every corpus they need."""

    name: str
    queries: list[EvalQuery]
    roots: dict[str, Path]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise EvalError(f"{path}:{n} is not valid JSON: {exc}") from None
    return rows


def _qrels(path: Path) -> dict[str, list[GoldLoc]]:
    by_q: dict[str, list[GoldLoc]] = {}
    for r in _read_jsonl(path):
        if r.get("relevance", 1) <= 0:
            continue
        by_q.setdefault(r["qid"], []).append(GoldLoc(r["path"], r.get("start_line"), r.get("end_line")))
    return by_q


def load_bench(collection: str | Path) -> BenchSet:
    """Load a bench collection folder (``queries.jsonl`` + ``qrels.jsonl`` + a corpus folder).

    * ``corpus_stripped/`` (docstring sets) or ``corpus/``: one corpus, id ``bench-<folder name>``.
    * rows that carry ``corpus`` (SWE-bench): one corpus per query at ``<corpus>/repo``, id ``bench-swe-<corpus>``;
      span level then uses ``qrels_functions.jsonl`` when present.

    Raises:
        EvalError: if the folder lacks the files or a corpus root.
    """
    d = Path(collection)
    for f in ("queries.jsonl", "qrels.jsonl"):
        if not (d / f).is_file():
            raise EvalError(f"{d} is not a bench collection: {f} is missing")
    queries = _read_jsonl(d / "queries.jsonl")
    gold = _qrels(d / "qrels.jsonl")
    functions = _qrels(d / "qrels_functions.jsonl") if (d / "qrels_functions.jsonl").is_file() else None
    corpus_of_qrel = {r["qid"]: r["corpus"] for r in _read_jsonl(d / "qrels.jsonl") if "corpus" in r}
    single = next((d / c for c in ("corpus_stripped", "corpus") if (d / c).is_dir()), None)
    roots: dict[str, Path] = {}
    out: list[EvalQuery] = []
    for row in queries:
        qid = row["qid"]
        if qid not in gold:
            logger.warning("%s: query %s has no qrels; skipped", d.name, qid)
            continue
        per_query = row.get("corpus") or corpus_of_qrel.get(qid)
        if per_query:
            corpus, root = f"bench-swe-{per_query}", d / per_query / "repo"
        elif single is not None:
            corpus, root = f"bench-{d.name}", single
        else:
            raise EvalError(f"{d}: no corpus folder (corpus_stripped/ or corpus/) and query {qid} names no corpus")
        if not root.is_dir():
            raise EvalError(f"{d}: corpus root {root} for query {qid} does not exist")
        roots[corpus] = root
        span_gold = None if functions is None else functions.get(qid, [])
        out.append(EvalQuery(qid, row["query"], corpus, gold[qid], span_gold, exact_paths=True))
    return BenchSet(d.name, out, roots)


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
            locs = [_loc_of(h) for h in ranking.hits[:top_k]]
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


# ------------------------------------------------------------------------------------------------- output

_COLS = ("MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10", "nDCG@10", "Recall@50")
_DELTA_COLS = ("MRR@10", "Hit@1", "Hit@5", "nDCG@10")


def _compare(report: EvalReport, level: str, a: str, b: str) -> str:
    ma, mb = report.metrics[a][level], report.metrics[b][level]
    parts = [f"{k} {ma[k]:.3f} -> {mb[k]:.3f} ({mb[k] - ma[k]:+.3f})" for k in _DELTA_COLS]
    return f"  {a} -> {b}: " + ", ".join(parts)


def format_table(report: EvalReport) -> str:
    """Every configuration side by side per level, then the ``Base -> Reranked`` lines."""
    lines = [
        f"Evaluation {report.name!r}: {report.n_queries} queries, {report.created_at}, "
        f"reranker {report.model or '-'}, baseline {report.baseline}"
    ]
    width = max(len(c) for c in report.configs) + 2
    for lv in report.levels:
        if not any(lv in report.metrics[c] for c in report.configs):
            continue
        lines.append("")
        lines.append(f"[{lv} level, n={report.n_by_level[lv]}]")
        head = "config".ljust(width) + "".join(f"{k:>10}" for k in _COLS) + f"{'MRR@10 95% CI':>18}"
        head += f"{'rerank p50/p95 ms':>20}{'total p50/p95 ms':>19}"
        lines.append(head)
        for c in report.configs:
            m = report.metrics[c][lv]
            row = c.ljust(width) + "".join(f"{m[k]:>10.3f}" for k in _COLS)
            lohi = report.ci.get(c, {}).get(lv, {}).get("MRR@10")
            cell = f"[{lohi[0]:.3f}, {lohi[1]:.3f}]" if lohi else "-"
            row += f"{cell:>18}"
            for stage, w in (("rerank", 20), ("total", 19)):
                lat = report.latency_ms.get(c, {}).get(stage)
                cell = f"{lat['p50']:.1f} / {lat['p95']:.1f}" if lat else "-"
                row += f"{cell:>{w}}"
            lines.append(row)
        pairs = []
        base = report.baseline
        for other in ("fused+rerank", "fused+candidate"):
            if other in report.metrics and other != base:
                pairs.append((base, other))
        if "fused+rerank" in report.metrics and "fused+candidate" in report.metrics:
            pairs.append(("fused+rerank", "fused+candidate"))
        if not pairs:
            pairs = [(base, c) for c in report.configs if c != base]
        lines.append("Base -> Reranked")
        lines.extend(_compare(report, lv, a, b) for a, b in pairs)
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


class SavedReport(NamedTuple):
    eval_id: int | None
    latest_path: Path
    history_path: Path


class _EvalStore(Protocol):
    def add_evaluation(self, name: str, model: str | None, payload: dict[str, Any]) -> int: ...


def save_report(report: EvalReport, store: _EvalStore | None, exports_dir: Path) -> SavedReport:
    """Record the report in the store (``evaluations``) and export it as JSON.

    Writes ``exports_dir/evals/latest.json`` (atomically replaced) and a copy for history,
    ``exports_dir/evals/<UTC stamp>-<name>[-<id>].json``.
    """
    payload = report.to_dict()
    eval_id = store.add_evaluation(report.name, report.model, payload) if store is not None else None
    doc = {"eval_id": eval_id, **payload}
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    evals = Path(exports_dir) / "evals"
    stamp = datetime.fromisoformat(report.created_at).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", report.name)[:80]
    history = evals / f"{stamp}-{slug}{'' if eval_id is None else f'-{eval_id}'}.json"
    n = 1
    while history.exists():
        n += 1
        history = history.with_name(f"{stamp}-{slug}-{n}.json")
    _atomic_write(history, text)
    _atomic_write(evals / "latest.json", text)
    logger.info("Saved evaluation %s (id %s) to %s", report.name, eval_id, history)
    return SavedReport(eval_id, evals / "latest.json", history)


def write_run_jsonl(hits_by_qid: Mapping[str, Sequence[Any]], path: Path, top_k: int = RUN_TOP_K) -> int:
    """Write a run in score.py's format: ``{"qid", "path", "start_line", "end_line", "rank"}`` per result.

    ``hits_by_qid`` values may be hits, chunks, result dicts or ``(path, start, end)`` tuples
    (e.g. ``report.runs["fused"]``). Returns the number of rows written.
    """
    lines = []
    for qid, hits in hits_by_qid.items():
        for rank, h in enumerate(hits[:top_k], 1):
            p, s, e = _loc_of(h)
            row: dict[str, Any] = {"qid": qid, "path": p}
            if s is not None:
                row.update(start_line=s, end_line=e)
            row["rank"] = rank
            lines.append(json.dumps(row) + "\n")
    _atomic_write(Path(path), "".join(lines))
    return len(lines)


# ------------------------------------------------------------------------------------------------- pipeline


def _load_dataset(
    dataset: str | Path | Sequence[EvalQuery] | BenchSet, roots: Mapping[str, Path] | None
) -> tuple[str, list[EvalQuery], dict[str, Path]]:
    known = dict(roots or {})
    if isinstance(dataset, BenchSet):
        return dataset.name, dataset.queries, {**dataset.roots, **known}
    if not isinstance(dataset, (str, Path)):
        return "heldout", queries_from_feedback(dataset), known
    path = Path(dataset)
    if path.is_dir() and not (path / "queries.jsonl").exists() and (path / "golden.json").is_file():
        path = path / "golden.json"
    if path.is_file():
        items = load_golden(path)
        qs = queries_from_golden(items)
        for it in items:  # golden.json sits at its repository's root
            known.setdefault(it.repo, path.parent)
        return path.stem, qs, known
    if path.is_dir():
        bench = load_bench(path)
        return bench.name, bench.queries, {**bench.roots, **known}
    raise EvalError(f"dataset expects golden.json or a bench collection folder, but {path} does not exist")


def _self_paths(dataset, roots: Mapping[str, Path]) -> dict[str, set[str]]:
    """A golden file inside the corpus it asks about holds every question verbatim: never count it as an answer."""
    if not isinstance(dataset, (str, Path)):
        return {}
    path = Path(dataset)
    if path.is_dir():
        path = path / "golden.json"
    if not path.is_file():
        return {}
    out: dict[str, set[str]] = {}
    for corpus, root in roots.items():
        try:
            out.setdefault(corpus, set()).add(path.resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            continue
    return out


def _ensure_index(backend: Any, corpus: str, root: Path | None, index_settings, retrieval_settings, embedder):
    """The current generation of ``corpus`` in ``backend``, built from ``root`` first when there is none."""
    from retrieval.index import IndexVersionError, NoIndexError

    try:
        gen = backend.load_current(corpus)
    except IndexVersionError:
        if root is None:
            raise
        gen = None  # written by another format: the build rebuilds it from scratch
    except NoIndexError as exc:
        if root is None:
            raise EvalError(
                f"No index for corpus {corpus!r}. Run: agro index /path/to/repo --corpus {corpus}"
            ) from exc
        gen = None
    if gen is not None:
        if root is not None and Path(gen.root).resolve() != root.resolve():
            # An indexed corpus's root is fixed: a dataset found elsewhere never re-roots (or re-indexes) it.
            logger.warning("corpus %s is indexed from %s; the dataset's folder %s is not indexed in its place",
                           corpus, gen.root, root)
        logger.info("Reusing index %s of corpus %s", gen.generation_id, corpus)
        return gen
    logger.info("Indexing %s as corpus %s", root, corpus)
    backend.build(root, corpus, index_settings, retrieval_settings, embedder)
    return backend.load_current(corpus)


def _copy_hits(hits: Sequence[Hit]) -> list[Hit]:
    return [dataclasses.replace(h, extra=dict(h.extra)) for h in hits]


def make_rerank_fn(loaded_model: Any, settings: Any, cache: Any = None) -> RerankFn:
    """Adapt ``reranker.stage.rerank`` (imported lazily) to ``(query, hits) -> (hits, ms)``.

    A query the release keeps in the fused order by design (``long_query_factor``) is scored in that order, as
    it is served.

    Raises:
        EvalError: when the reranker fell back instead of reranking (an evaluation must not score a fallback
            as the reranker).
    """
    from reranker.stage import rerank

    def fn(query: str, hits: list[Hit]) -> tuple[list[Hit], float]:
        out = rerank(query, hits, loaded_model, settings, cache=cache)
        if out.kept_fused:  # served in the fused order by design (too long for this release): scored so
            return list(out.hits), float(out.ms)
        if not out.used:
            raise EvalError(f"the reranker did not run ({out.fallback_reason}); fix it or drop 'fused+rerank'")
        return list(out.hits), float(out.ms)

    return fn


def _model_manifest(model_dir: Path) -> dict[str, Any] | None:
    """A release folder's ``manifest.json``, or for a run's ``model/`` folder its ``run.json`` (both may carry the
    calibrated ``blend``); None for any other folder or hub id."""
    for p in (model_dir / "manifest.json", model_dir.parent / "run.json"):
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and (p.name == "manifest.json" or model_dir.name == "model"):
            return m
    return None


def load_rerank_fn(model_ref: str | Path, settings: Any, *, release_id: str | None = None,
                   manifest: dict[str, Any] | None = None) -> RerankFn:
    """Load a cross-encoder (a candidate run or a release folder) and adapt it with :func:`make_rerank_fn`.

    It is blended as it would be served: with the calibrated alpha of ``manifest`` (default: the release's
    ``manifest.json`` or the run's ``run.json``), unless the settings set alpha explicitly.

    Raises:
        reranker.model.RerankerLoadError: when the folder holds no usable cross-encoder.
    """
    from reranker.manager import LoadedReranker
    from reranker.model import load_scorer

    scorer = load_scorer(
        model_ref, backend=settings.backend, maxlen=settings.maxlen, query_max_tokens=settings.query_max_tokens,
        threads=settings.threads, release_id=release_id,
    )
    # The manifest's ``blend`` (a calibrated alpha) weighs this model as serving would.
    if manifest is None:
        manifest = _model_manifest(Path(model_ref))
    loaded = LoadedReranker(scorer=scorer, model_id=release_id or str(model_ref), release_id=release_id,
                            target=str(model_ref), manifest=manifest)
    return make_rerank_fn(loaded, settings)


def run_evaluation(
    dataset: str | Path | Sequence[EvalQuery] | BenchSet,
    home: Path,
    index_settings: Any = None,
    retrieval_settings: Any = None,
    *,
    configs: Sequence[str] = ("bm25", "dense", "fused", "fused+rerank"),
    rerank_fn: RerankFn | None = None,
    candidate_model: str | None = None,
    candidate_rerank_fn: RerankFn | None = None,
    reranker_settings: Any = None,
    model: str | None = None,
    roots: Mapping[str, Path] | None = None,
    embedder: Any = None,
    levels: Sequence[str] = LEVELS,
    limit: int | None = None,
    k: int = RUN_TOP_K,
    progress: Callable[[int, int], None] | None = None,
    index_backend: Any = None,
    generations: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Index what the dataset needs (reusing existing indexes), run the configurations, return the report.

    Args:
        dataset: a golden.json path (or the folder holding it), a bench collection folder, a :class:`BenchSet`, or
            held-out feedback questions (see :func:`queries_from_feedback`).
        home: data home holding ``indexes/``. Bench corpora are indexed there as ``bench-docstring_<name>`` or
            ``bench-swe-<instance_id>``.
        index_settings, retrieval_settings: defaults when None.
        configs: among ``bm25``, ``dense``, ``fused``, ``fused+rerank``; ``fused+candidate`` is added when a
            candidate is given.
        rerank_fn: the current reranker as ``(query, hits) -> (hits, ms)`` (see :func:`make_rerank_fn`);
            required for ``fused+rerank``.
        candidate_model: folder of a candidate cross-encoder, loaded with ``reranker_settings`` (see
            :func:`load_rerank_fn`) unless ``candidate_rerank_fn`` is given.
        model: id of the current reranker, recorded in the report.
        roots: corpus id -> folder, for corpora not indexed yet (golden.json's own folder is known).
        limit: score only the first ``limit`` queries (smoke runs).
        k: results kept per query (Recall@50 needs at least 50).
        index_backend: where the corpora are indexed (``Engine.indexes``); default: the embedded backend in ``home``.
        generations: corpus -> generation to search instead of the corpus's current one (the gate's views).

    Raises:
        EvalError: on an empty set, an unknown config, a missing reranker or a corpus with no index and no root.
    """
    name, queries, known_roots = _load_dataset(dataset, roots)
    excluded = _self_paths(dataset, known_roots)
    if limit is not None:
        queries = queries[:limit]
    if not queries:
        raise EvalError(f"The evaluation set {name!r} is empty: no queries to score.")
    configs = list(configs)
    if (candidate_model or candidate_rerank_fn) and "fused+candidate" not in configs:
        configs.append("fused+candidate")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise EvalError(f"configs expects values among {CONFIGS}, but got {unknown}")
    if "fused+rerank" in configs and rerank_fn is None:
        raise EvalError("config 'fused+rerank' needs a reranker (rerank_fn); pass one or drop the config")
    if "fused+candidate" in configs and candidate_rerank_fn is None:
        if candidate_model is None:
            raise EvalError("config 'fused+candidate' needs candidate_model or candidate_rerank_fn")
        from reranker.settings import RerankerSettings

        candidate_rerank_fn = load_rerank_fn(candidate_model, reranker_settings or RerankerSettings())

    from retrieval.embed import load_embedder
    from retrieval.search import search
    from retrieval.settings import IndexSettings, RetrievalSettings

    index_settings = index_settings or IndexSettings()
    retrieval_settings = retrieval_settings or RetrievalSettings()
    embedder = embedder or load_embedder(retrieval_settings)
    if index_backend is None:
        from retrieval.backend import EmbeddedIndexBackend

        index_backend = EmbeddedIndexBackend(home)
    gens = {
        c: (generations or {}).get(c)
        or _ensure_index(index_backend, c, known_roots.get(c), index_settings, retrieval_settings, embedder)
        for c in dict.fromkeys(q.corpus for q in queries)
    }
    fused_cache: dict[str, Ranking] = {}

    def searcher(mode: str) -> RankFn:
        def fn(q: EvalQuery) -> Ranking:
            # No query-vector cache: every config pays for its own query embedding, so latencies compare.
            res = search(gens[q.corpus], embedder, q.query, k, retrieval_settings, mode=mode, use_query_cache=False)
            skip = excluded.get(q.corpus, ())
            return Ranking([h for h in res.hits if h.chunk.path not in skip], dict(res.timings))

        return fn

    def fused(q: EvalQuery) -> Ranking:
        if q.qid not in fused_cache:
            fused_cache.clear()
            fused_cache[q.qid] = searcher("fused")(q)
        return fused_cache[q.qid]

    def reranked(fn: RerankFn) -> RankFn:
        def rank(q: EvalQuery) -> Ranking:
            base = fused(q)
            hits, ms = fn(q.query, _copy_hits(base.hits))
            timings = dict(base.timings_ms, rerank=ms)
            timings["total"] = float(base.timings_ms.get("total", 0.0)) + ms
            return Ranking(hits, timings)

        return rank

    table: dict[str, RankFn] = {}
    for c in configs:
        if c in ("bm25", "dense"):
            table[c] = searcher(c)
        elif c == "fused":
            table[c] = fused
        elif c == "fused+rerank":
            table[c] = reranked(rerank_fn)  # type: ignore[arg-type]
        else:
            table[c] = reranked(candidate_rerank_fn)  # type: ignore[arg-type]
    report = evaluate(queries, table, levels, name=name, model=model, progress=progress)
    if candidate_model:
        report.notes.append(f"candidate: {candidate_model}")
    return report
