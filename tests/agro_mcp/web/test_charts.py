"""The SVG charts: labels escaped, gaps for missing values, one polyline per run of values."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agro_mcp.web.charts import Series, line_chart, stacked_bars

NS = "{http://www.w3.org/2000/svg}"


def test_line_chart_escapes_labels_and_breaks_the_line_at_missing_values():
    svg = line_chart("<b>t</b>", [Series("a<script>", [0.5, None, 0.2, 0.4], "s1")], ["1", "2", "3", "4"],
                     y_range=(0, 1), marks=[(2, "new<set>")])
    root = ET.fromstring(str(svg))  # well-formed: every label escaped
    assert "<script>" not in str(svg) and "&lt;script&gt;" in str(svg)
    polylines = root.findall(f"{NS}polyline")
    assert len(polylines) == 1 and len(polylines[0].get("points").split()) == 2  # 0.2 -> 0.4 only
    assert len(root.findall(f"{NS}circle")) == 3
    assert len([ln for ln in root.findall(f"{NS}line") if ln.get("class") == "mark"]) == 1


def test_line_chart_without_data_says_so():
    assert "no data yet" in str(line_chart("t", [], []))


def test_stacked_bars_stack_each_series_on_the_previous():
    svg = stacked_bars("t", ["d1", "d2"], [Series("x", [2, 0], "s0"), Series("y", [2, 1], "s1")])
    root = ET.fromstring(str(svg))
    bars = [r for r in root.findall(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert len(bars) == 3  # zero counts draw nothing
    first, second = bars[0], bars[1]
    assert float(first.get("height")) == float(second.get("height"))  # 2 and 2
    assert float(second.get("y")) + float(second.get("height")) == float(first.get("y"))  # y stacked on x
