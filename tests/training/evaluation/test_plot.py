"""The evaluation history plot."""

import pytest

from tests.training.evaluation.sample_runs import QUERIES, base_fn, reranked_fn
from training.evaluation.evaluate import evaluate


def test_plot_history_writes_a_png(tmp_path):
    from training.evaluation.plot import plot_history

    report = evaluate(QUERIES, {"fused": base_fn, "fused+rerank": reranked_fn}, name="golden")
    evals = [
        {"id": 2, "ts": 1_790_000_000.0, "name": "golden", "model": "rel-2", "payload": report.to_dict()},
        {"id": 1, "ts": 1_780_000_000.0, "name": "golden", "model": "rel-1", "payload": report.to_dict()},
    ]
    out = plot_history(evals, tmp_path / "history.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none"):
        plot_history([{"id": 3, "ts": 0.0, "payload": {}}], tmp_path / "x.png")
