"""A PNG of the evaluation history: MRR@10 and Hit@5 per model release over time."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["plot_history"]

logger = logging.getLogger(__name__)

_PREFERRED = ("fused+rerank", "fused+candidate", "fused")


def _when(ev: dict[str, Any]) -> datetime:
    ts = ev.get("ts")
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, tz=timezone.utc)
    created = ev.get("created_at") or ev.get("payload", {}).get("created_at")
    if created:
        return datetime.fromisoformat(created)
    raise ValueError(f"evaluation {ev.get('id')!r} expects a 'ts' or 'created_at', but has neither")


def _point(ev: dict[str, Any], config: str | None, level: str) -> tuple[str, float, float] | None:
    payload = ev.get("payload", ev)
    metrics = payload.get("metrics", {})
    names = [config] if config else [*_PREFERRED, *metrics]
    for name in names:
        m = metrics.get(name, {}).get(level)
        if m and "MRR@10" in m and "Hit@5" in m:
            return name, float(m["MRR@10"]), float(m["Hit@5"])
    return None


def plot_history(
    evaluations: Sequence[dict[str, Any]],
    out_png: Path,
    *,
    config: str | None = None,
    level: str = "file",
    title: str | None = None,
) -> Path:
    """Plot MRR@10 and Hit@5 over time, one point per evaluation, labelled with its model release.

    Args:
        evaluations: rows of ``EventStore.list_evaluations()`` (``id, ts, name, model, payload``), any order;
            payloads as written by :func:`training.evaluation.report.save_report`.
        out_png: where the PNG goes (written beside, then renamed).
        config: configuration to follow (default: ``fused+rerank``, else the first one present).
        level: ``file`` or ``span``.
        title: figure title (default names the config and level).

    Raises:
        ValueError: when no evaluation has the metrics to plot.
    """
    points = []
    for ev in evaluations:
        p = _point(ev, config, level)
        if p is not None:
            model = ev.get("model") or ev.get("payload", {}).get("model") or "no reranker"
            points.append((_when(ev), model, *p))
    if not points:
        raise ValueError(f"plot_history expects evaluations with {level}-level MRR@10 and Hit@5, but got none")
    points.sort(key=lambda p: p[0])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    try:
        ax.plot(xs, [p[3] for p in points], marker="o", label="MRR@10")
        ax.plot(xs, [p[4] for p in points], marker="s", label="Hit@5")
        for when, model, _cfg, mrr, _hit in points:
            ax.annotate(str(model)[:24], (when, mrr), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=7, rotation=20)
        configs = sorted({p[2] for p in points})
        ax.set_title(title or f"Evaluation history ({', '.join(configs)}, {level} level)")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        fig.autofmt_xdate()
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".png", dir=out_png.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, out_png)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    logger.info("Wrote evaluation history plot (%d points) to %s", len(points), out_png)
    return out_png
