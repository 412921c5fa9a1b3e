"""What each console page shows, gathered from the engine, the store and the model folders (no HTML here).

Every figure is read from where the other faces write it: runs and releases from ``AGRO_HOME/models``, feedback,
jobs, evaluations and promotions from the event store, the reranker's state from its manager.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agro_mcp.web.charts import Series, line_chart, stacked_bars

__all__ = [
    "corpora_view",
    "evaluation_charts",
    "feedback_view",
    "learning_view",
    "reranker_view",
    "run_view",
]

logger = logging.getLogger(__name__)

SIGNAL_ORDER = ("click", "used", "thumbs_up", "thumbs_down", "rating", "correct_location")
SOURCE_ORDER = ("assistant", "person", "import")
# evaluation configs -> the series names the charts show
SERIES = (("bm25", "BM25", "s0"), ("dense", "dense", "s1"), ("fused", "fused", "s2"),
          ("fused+rerank", "reranked", "s3"), ("fused+candidate", "candidate", "s4"))
GATE_ROWS = (("fused+candidate", "candidate"), ("fused+rerank", "current release"), ("fused", "retrieval alone"))
GATE_METRICS = ("MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10")


def fmt_ts(ts: float | str | None) -> str:
    if ts is None:
        return "—"
    if isinstance(ts, str):
        return ts.replace("T", " ").replace("+00:00", " UTC")
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------- corpora
def corpora_view(engine: Any) -> list[dict[str, Any]]:
    out = []
    for corpus in engine.corpora():
        try:
            st = engine.status(corpus)
        except (ValueError, OSError) as exc:  # a broken corpus must not hide the others
            out.append({"corpus": corpus, "error": str(exc)})
            continue
        st["last_indexed_fmt"] = fmt_ts(st.get("last_indexed"))
        st["skipped_sorted"] = sorted((st.get("skipped") or {}).items(), key=lambda kv: -kv[1])
        out.append(st)
    return out


def indexed_paths(engine: Any, corpus: str, query: str, limit: int = 30) -> list[str]:
    """Indexed files of ``corpus`` whose path contains ``query`` (prefix matches first)."""
    files = engine.generation(corpus).manifest["files"]
    q = query.lower()
    starts = [p for p in files if p.lower().startswith(q)]
    inside = [p for p in files if q in p.lower() and not p.lower().startswith(q)]
    return sorted(starts)[:limit] + sorted(inside)[: max(0, limit - len(starts))]


# ------------------------------------------------------------------------------------------------- feedback
def feedback_view(store: Any, days: int = 30, now: float | None = None) -> dict[str, Any]:
    """Feedback of the last ``days`` days per day and signal, and totals per source and signal."""
    now = time.time() if now is None else now
    since = now - days * 86400
    per_day: dict[str, Counter] = defaultdict(Counter)
    per_day_source: dict[str, Counter] = defaultdict(Counter)
    by_source: dict[str, Counter] = defaultdict(Counter)
    total = 0
    for fb in store.iter_feedback(since=since):
        day = datetime.fromtimestamp(fb.ts, timezone.utc).strftime("%m-%d")
        per_day[day][fb.signal] += 1
        per_day_source[day][fb.source] += 1
        by_source[fb.source][fb.signal] += 1
        total += 1
    labels = [datetime.fromtimestamp(since + 86400 * (i + 1), timezone.utc).strftime("%m-%d") for i in range(days)]
    series = [Series(sig, [per_day[d][sig] for d in labels], f"s{i}") for i, sig in enumerate(SIGNAL_ORDER)]
    sources = [(src, [by_source[src][sig] for sig in SIGNAL_ORDER], sum(by_source[src].values()))
               for src in SOURCE_ORDER if by_source.get(src)]
    source_series = [Series(src, [per_day_source[d][src] for d in labels], f"s{i + 3}")
                     for i, src in enumerate(SOURCE_ORDER)]
    return {"total": total, "days": days, "signals": SIGNAL_ORDER, "by_source": sources,
            "chart": stacked_bars(f"Feedback per day (last {days} days), by signal", labels, series),
            "source_chart": stacked_bars("… and by source", labels, source_series)}


# ------------------------------------------------------------------------------------------------- runs
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def runs_view(models_dir: Path, limit: int = 50) -> list[dict[str, Any]]:
    from training.releases.admin import list_runs

    rows = list_runs(models_dir, limit=limit)
    for row in rows:
        run = _read_json(models_dir / "runs" / row["run_id"] / "run.json") or {}
        split = run.get("split") or {}
        row["mined"] = split.get("sources") or {}
        row["kind"] = run.get("model_kind")
        row["created_fmt"] = fmt_ts(row.get("created_at"))
    return rows


def run_view(engine: Any, run_id: str) -> dict[str, Any]:
    """One run: config, mined counts, the loss curve and the gate's table (from its evaluation)."""
    from training.learning.trainer import load_run, run_dir

    models_dir = Path(engine.home) / "models"
    run = load_run(models_dir, run_id)
    d = run_dir(models_dir, run_id)
    evaluation = _read_json(d / "evaluation.json")
    epochs = run.get("epochs") or []
    losses = [e.get("train_loss") for e in epochs]
    loss_chart = line_chart("Training loss per epoch", [Series("train loss", losses, "s3")],
                            [f"ep {e.get('epoch')}" for e in epochs]) if epochs else None
    gate = None
    if evaluation is not None:
        gate = gate_table(engine.store, run_id, evaluation)
    return {"run_id": run_id, "run": run, "mined": (run.get("split") or {}).get("sources") or {},
            "loss_chart": loss_chart, "losses": losses, "gate": gate, "evaluation": evaluation,
            "created_fmt": fmt_ts(run.get("created_at"))}


def gate_table(store: Any, run_id: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The gate's figures as rows (candidate, current release, retrieval alone) x levels x metrics, with the
    MRR@10 confidence interval of the stored report when it has one."""
    decision = evaluation.get("decision") or {}
    figures = decision.get("figures") or {}
    levels_fig = figures.get("levels") or {}
    ci: dict = {}
    try:
        saved = store.latest_evaluation(name=f"heldout-{run_id}")
    except Exception:  # noqa: BLE001 - the intervals are extra; the table stands without them
        logger.debug("no stored evaluation for %s", run_id, exc_info=True)
        saved = None
    if saved is not None:
        ci = (saved.get("payload") or {}).get("ci") or {}
    levels = [lv for lv in ("span", "file") if any(lv in (levels_fig.get(c) or {}) for c, _ in GATE_ROWS)]
    rows = []
    for config, label in GATE_ROWS:
        if config not in levels_fig:
            continue
        cells = []
        for lv in levels:
            m = (levels_fig[config] or {}).get(lv) or {}
            interval = ((ci.get(config) or {}).get(lv) or {}).get("MRR@10")
            cells.append({"level": lv, "values": [m.get(k) for k in GATE_METRICS], "ci": interval})
        rows.append({"config": config, "label": label, "cells": cells})
    diffs = [(k.removeprefix("hit1_diff_vs_"), v) for k, v in figures.items() if k.startswith("hit1_diff_vs_")]
    return {"promote": bool(decision.get("promote")), "reasons": decision.get("reasons") or [],
            "levels": levels, "metrics": GATE_METRICS, "rows": rows, "hit1_diffs": diffs,
            "n_queries": figures.get("n_queries"), "required_mrr": figures.get("required_mrr"),
            "best_other": figures.get("best_other"), "current_release": evaluation.get("current_release"),
            "notes": evaluation.get("notes") or []}


# ------------------------------------------------------------------------------------------------- evaluations
def evaluation_charts(store: Any, limit: int = 60) -> dict[str, Any]:
    """MRR@10 and Hit@5 per level over the stored evaluations (oldest first), one series per configuration, with
    a mark where the question set changes."""
    evals = list(reversed(store.list_evaluations(limit=limit)))
    labels = [f"#{e['id']}" for e in evals]
    names = [f"{e['name']}, {fmt_ts(e['ts'])}" for e in evals]
    families = ["held-out" if str(e["name"]).startswith("heldout-") else str(e["name"]) for e in evals]
    marks = [(i, families[i]) for i in range(len(evals)) if i == 0 or families[i] != families[i - 1]]
    charts = []
    for metric in ("MRR@10", "Hit@5"):
        for level in ("file", "span"):
            series = []
            for config, label, cls in SERIES:
                vals = [(((e["payload"].get("metrics") or {}).get(config) or {}).get(level) or {}).get(metric)
                        for e in evals]
                if any(v is not None for v in vals):
                    series.append(Series(label, vals, cls))
            charts.append(line_chart(f"{metric}, {level} level", series, labels, y_range=(0.0, 1.0), marks=marks,
                                     point_titles=names))
    return {"n": len(evals), "charts": charts,
            "rows": [{"id": e["id"], "ts": fmt_ts(e["ts"]), "name": e["name"], "model": e["model"]}
                     for e in reversed(evals[-10:])]}


# ------------------------------------------------------------------------------------------------- releases
def releases_view(engine: Any) -> dict[str, Any]:
    from training.releases.promote import list_releases

    models_dir = Path(engine.home) / "models"
    releases = list_releases(models_dir)
    for r in releases:
        r["promoted_fmt"] = fmt_ts(r.get("promoted_at"))
    current = next((r for r in releases if r.get("current")), None)
    parent = current.get("parent") if current else None
    promotions = engine.store.list_promotions(limit=15)
    for p in promotions:
        p["ts_fmt"] = fmt_ts(p["ts"])
    return {"releases": list(reversed(releases)), "current": current, "rollback_to": parent,
            "promotions": promotions}


def jobs_view(store: Any, limit: int = 15) -> list[dict[str, Any]]:
    store.reap_dead_jobs()
    return [{"run_id": j.run_id, "kind": j.kind, "state": j.state, "progress": j.progress,
             "message": j.message, "error": j.error, "created_fmt": fmt_ts(j.created), "finished": j.finished}
            for j in store.list_jobs(limit=limit)]


def learning_view(engine: Any, runs_limit: int = 50) -> dict[str, Any]:
    models_dir = Path(engine.home) / "models"
    return {
        "feedback": feedback_view(engine.store),
        "runs": runs_view(models_dir, runs_limit),
        "releases": releases_view(engine),
        "jobs": jobs_view(engine.store),
        "evals": evaluation_charts(engine.store),
    }


# ------------------------------------------------------------------------------------------------- reranker
def reranker_view(engine: Any) -> dict[str, Any]:
    """The reranker's kind, release, backend, blend weight, warm-up, last reload and last error."""
    info = dict(engine.reranker.info())
    warm = info.get("warm") or {}
    if not info.get("enabled"):
        state = "disabled (AGRO_RERANKER_ENABLED=0)"
    elif info.get("loaded"):
        state = "loaded"
    elif info.get("none_reason"):
        state = f"not loaded: {info['none_reason']}"
    else:
        state = "loading"
    rows = [
        ("state", state),
        ("kind", info.get("kind") or "—"),
        ("release", info.get("release_id") or info.get("resolved_release") or "— (no release; base model)"),
        ("model", info.get("model") or "—"),
        ("backend", " / ".join(str(x) for x in (info.get("backend"), info.get("dtype"), info.get("device")) if x)
         or "—"),
        ("blend weight (alpha)", f"{info.get('alpha')} ({info.get('alpha_source')})"),
        ("dense weight", f"{info.get('dense_weight')} ({info.get('dense_weight_source')})"),
        ("warm-up", ", ".join(f"{k} {v}" for k, v in warm.items()) if warm else
         ("on" if info.get("prewarm") else "off")),
        ("top-N / batch / max length", f"{info.get('topn')} / {info.get('batch')} / {info.get('maxlen')}"),
        ("last reload", fmt_ts(info.get("loaded_at"))),
        ("last check", fmt_ts(info.get("last_check"))),
        ("last error", info.get("last_error") or "none"),
    ]
    return {"rows": rows, "info": info}
