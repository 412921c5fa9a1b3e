"""The evaluator: every configuration scored on the same questions at file and span level."""

import pytest

from tests.training.evaluation.sample_runs import QUERIES, base_fn, hit, reranked_fn
from training.evaluation.datasets import EvalError, EvalQuery, GoldLoc
from training.evaluation.evaluate import evaluate


def test_evaluate_scores_every_config_at_file_and_span_level():
    report = evaluate(QUERIES, {"fused": base_fn, "fused+rerank": reranked_fn}, name="unit")
    f = report.metrics["fused"]["file"]
    # file ranks: 2, 1, miss, 3 -> MRR = (1/2 + 1 + 0 + 1/3) / 4
    assert f["MRR@10"] == pytest.approx((0.5 + 1 + 1 / 3) / 4)
    assert f["Hit@1"] == 0.25 and f["Hit@3"] == 0.75
    s = report.metrics["fused"]["span"]
    # span: q1 gold 20-30 overlaps rank 3 only; q2 whole file -> rank 1; q3 miss; q4 rank 3
    assert s["MRR@10"] == pytest.approx((1 / 3 + 1 + 0 + 1 / 3) / 4)
    r = report.metrics["fused+rerank"]
    assert r["file"]["MRR@10"] == pytest.approx(0.75)
    assert r["span"]["MRR@10"] == pytest.approx(0.75)
    assert report.n_by_level == {"file": 4, "span": 4}
    assert set(report.ci["fused"]["file"]) == {"MRR@10"}
    assert report.latency_ms["fused+rerank"]["rerank"]["p50"] == pytest.approx(20.0)
    assert "rerank" not in report.latency_ms["fused"]


def test_empty_evaluation_set_is_a_clear_error():
    with pytest.raises(EvalError, match="evaluation set is empty"):
        evaluate([], {"fused": base_fn})
    with pytest.raises(EvalError, match="at least one ranking configuration"):
        evaluate(QUERIES, {})


def test_span_gold_empty_list_leaves_query_out_of_span_level():
    qs = [QUERIES[0], EvalQuery("q9", "x", "c", [GoldLoc("a.py")], span_gold=[])]
    report = evaluate(qs, {"fused": lambda q: [hit("a.py")]})
    assert report.n_by_level == {"file": 2, "span": 1}
    assert any("span level: 1 of 2" in n for n in report.notes)
