"""An evaluation report as a table (``Base -> Reranked``), saved to the store and ``exports/evals``, and runs in
score.py's format."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from retrieval.atomic import write_text_atomic
from training.evaluation.evaluate import RUN_TOP_K, EvalReport, loc_of

__all__ = ["SavedReport", "format_table", "save_report", "write_run_jsonl"]

logger = logging.getLogger(__name__)


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
            p, s, e = loc_of(h)
            row: dict[str, Any] = {"qid": qid, "path": p}
            if s is not None:
                row.update(start_line=s, end_line=e)
            row["rank"] = rank
            lines.append(json.dumps(row) + "\n")
    _atomic_write(Path(path), "".join(lines))
    return len(lines)
