"""Evaluation questions with their gold: from golden.json, a ``../shared/bench`` collection or held-out feedback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import AgroUserError
from retrieval.types import parse_doc_id
from training.evaluation.golden import GoldenItem, load_golden
from training.evaluation.metrics import Loc

__all__ = [
    "BenchSet",
    "EvalError",
    "EvalQuery",
    "GoldLoc",
    "load_bench",
    "load_dataset",
    "queries_from_feedback",
    "queries_from_golden",
    "self_paths",
]

logger = logging.getLogger(__name__)


class EvalError(AgroUserError, ValueError):
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


def load_dataset(
    dataset: str | Path | Sequence[EvalQuery] | BenchSet, roots: Mapping[str, Path] | None
) -> tuple[str, list[EvalQuery], dict[str, Path]]:
    """The dataset's name, its queries and the root folder of every corpus known for it.

    ``dataset`` is a golden.json path (or the folder holding it), a bench collection folder, a :class:`BenchSet`
    or held-out feedback questions (see :func:`queries_from_feedback`).
    """
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


def self_paths(dataset, roots: Mapping[str, Path]) -> dict[str, set[str]]:
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
