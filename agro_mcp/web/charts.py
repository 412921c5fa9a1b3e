"""Charts as server-rendered SVG: line charts (evaluation history, loss curve) and stacked bars (feedback per day).

Colours come from CSS classes (``s0``..``s7``) in ``console.css``; every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Series", "line_chart", "stacked_bars"]

_W, _H = 560, 220
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 44, 12, 26, 40


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float | None]
    cls: str = "s0"


def _fmt(v: float, integer: bool = False) -> str:
    return f"{v:.0f}" if integer or abs(v) >= 10 else f"{v:.2f}"


def _frame(title: str, y_lo: float, y_hi: float, parts: list[str], integer: bool = False) -> None:
    parts.append(f'<text class="ct" x="{_PAD_L}" y="16">{escape(title)}</text>')
    inner_h = _H - _PAD_T - _PAD_B
    for i in range(5):
        v = y_lo + (y_hi - y_lo) * i / 4
        y = _PAD_T + inner_h * (1 - i / 4)
        parts.append(f'<line class="grid" x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="ax" x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v, integer)}</text>')


def _legend(series: Sequence[Series], parts: list[str]) -> None:
    x = _PAD_L
    for s in series:
        parts.append(f'<rect class="{escape(s.cls)}" x="{x}" y="{_H - 12}" width="10" height="10"/>')
        parts.append(f'<text class="ax" x="{x + 14}" y="{_H - 3}">{escape(s.name)}</text>')
        x += 22 + 7 * len(s.name)


def line_chart(
    title: str,
    series: Sequence[Series],
    x_labels: Sequence[str],
    *,
    y_range: tuple[float, float] | None = None,
    marks: Sequence[tuple[int, str]] = (),
    point_titles: Sequence[str] | None = None,
) -> Markup:
    """A line chart of ``series`` over ``len(x_labels)`` points (None leaves a gap).

    Args:
        y_range: fixed (lo, hi); default from the data, starting at 0.
        marks: (index, label) pairs: a dashed vertical line before point ``index`` (e.g. a new question set).
        point_titles: a tooltip per x position.
    """
    n = len(x_labels)
    vals = [v for s in series for v in s.values if v is not None]
    if y_range is None:
        hi = max(vals) if vals else 1.0
        y_lo, y_hi = 0.0, (hi * 1.1 if hi > 0 else 1.0)
    else:
        y_lo, y_hi = y_range
    inner_w = _W - _PAD_L - _PAD_R
    inner_h = _H - _PAD_T - _PAD_B

    def xy(i: int, v: float) -> tuple[float, float]:
        x = _PAD_L + (inner_w * (i + 0.5) / max(n, 1))
        y = _PAD_T + inner_h * (1 - (v - y_lo) / ((y_hi - y_lo) or 1))
        return x, y

    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    _frame(title, y_lo, y_hi, parts)
    if not vals:
        parts.append(f'<text class="ax" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data yet</text>')
    for idx, label in marks:
        x = _PAD_L + inner_w * idx / max(n, 1)
        parts.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD_T}" y2="{_H - _PAD_B}"/>')
        parts.append(f'<text class="mk" x="{x + 3:.1f}" y="{_PAD_T + 9}">{escape(label)}</text>')
    step = max(1, n // 10)
    for i, label in enumerate(x_labels):
        if i % step == 0:
            x, _ = xy(i, y_lo)
            parts.append(f'<text class="ax" x="{x:.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle">'
                         f'{escape(label)}</text>')
    for s in series:
        segs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                segs.append([])
            else:
                segs[-1].append(xy(i, v))
        for seg in segs:
            if len(seg) > 1:
                pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
                parts.append(f'<polyline class="ln {escape(s.cls)}" points="{pts}"/>')
        for i, v in enumerate(s.values):
            if v is not None:
                x, y = xy(i, v)
                tip = f"{s.name}: {v:.3f}" + (f" ({point_titles[i]})" if point_titles else "")
                parts.append(f'<circle class="pt {escape(s.cls)}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                             f'<title>{escape(tip)}</title></circle>')
    _legend(series, parts)
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(title: str, x_labels: Sequence[str], series: Sequence[Series]) -> Markup:
    """Stacked bars: one bar per x label, one segment per series (counts)."""
    n = len(x_labels)
    totals = [sum((s.values[i] or 0) for s in series) for i in range(n)]
    y_hi = 4 * max(1, math.ceil(max(totals, default=0) * 1.05 / 4))  # counts: whole-number grid lines
    inner_w = _W - _PAD_L - _PAD_R
    inner_h = _H - _PAD_T - _PAD_B
    bw = inner_w / max(n, 1)
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    _frame(title, 0, y_hi, parts, integer=True)
    step = max(1, n // 8)
    for i, label in enumerate(x_labels):
        base = 0.0
        x = _PAD_L + bw * i + bw * 0.15
        for s in series:
            v = s.values[i] or 0
            if v:
                h = inner_h * v / y_hi
                y = _PAD_T + inner_h * (1 - (base + v) / y_hi)
                parts.append(f'<rect class="{escape(s.cls)}" x="{x:.1f}" y="{y:.1f}" width="{bw * 0.7:.1f}" '
                             f'height="{h:.1f}"><title>{escape(label)} {escape(s.name)}: {v:g}</title></rect>')
                base += v
        if i % step == 0:
            parts.append(f'<text class="ax" x="{x + bw * 0.35:.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle">'
                         f'{escape(label)}</text>')
    _legend(series, parts)
    parts.append("</svg>")
    return Markup("".join(parts))
