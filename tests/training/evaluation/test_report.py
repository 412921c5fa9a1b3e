"""Reports: the Base -> Reranked table, saved evaluations, and runs in score.py's format."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.evaluation.sample_runs import BASE, QUERIES, base_fn, hit, reranked_fn
from training.evaluation.datasets import EvalQuery
from training.evaluation.evaluate import evaluate
from training.evaluation.report import format_table, save_report, write_run_jsonl

SCORE_PY = Path(__file__).resolve().parents[4] / "shared" / "bench" / "tools" / "score.py"


def test_table_shows_every_config_and_the_baseline_comparison():
    report = evaluate(QUERIES, {"bm25": base_fn, "fused": base_fn, "fused+rerank": reranked_fn}, name="unit")
    table = format_table(report)
    assert report.baseline == "fused"
    for config in ("bm25", "fused", "fused+rerank"):
        assert f"\n{config} " in table
    assert "Base -> Reranked" in table
    assert "fused -> fused+rerank: MRR@10 0.458 -> 0.750 (+0.292)" in table
    assert "[file level, n=4]" in table and "[span level, n=4]" in table


class FakeStore:
    def __init__(self):
        self.rows = []

    def add_evaluation(self, name, model, payload):
        self.rows.append((name, model, payload))
        return len(self.rows)


def test_save_report_writes_latest_and_history_and_the_store(tmp_path):
    report = evaluate(QUERIES, {"fused": base_fn, "fused+rerank": reranked_fn}, name="golden", model="rel-1")
    store = FakeStore()
    saved = save_report(report, store, tmp_path / "exports")
    assert saved.eval_id == 1 and store.rows[0][:2] == ("golden", "rel-1")
    latest = json.loads((tmp_path / "exports" / "evals" / "latest.json").read_text())
    assert latest["eval_id"] == 1
    assert latest["metrics"]["fused+rerank"]["file"]["MRR@10"] == pytest.approx(0.75)
    assert latest["created_at"].endswith("+00:00") and "T" in latest["created_at"]
    assert json.loads(saved.history_path.read_text()) == latest
    again = save_report(report, None, tmp_path / "exports")
    assert again.history_path != saved.history_path
    assert len(list((tmp_path / "exports" / "evals").glob("*.json"))) == 3


@pytest.mark.skipif(not SCORE_PY.is_file(), reason="../shared/bench/tools/score.py is not present")
@pytest.mark.parametrize("level", ["file", "span"])
def test_run_file_scores_the_same_with_score_py(tmp_path, level):
    qs = [EvalQuery(q.qid, q.query, q.corpus, q.gold, exact_paths=True) for q in QUERIES]
    exact_base = {qid: [hit(h.chunk.path.removeprefix("src/"), h.chunk.start_line, h.chunk.end_line) for h in hits]
                  for qid, hits in BASE.items()}
    report = evaluate(qs, {"fused": lambda q: exact_base[q.qid]})
    run = tmp_path / "run.jsonl"
    write_run_jsonl(report.runs["fused"], run)
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text("".join(
        json.dumps({"qid": q.qid, "path": g.path, "start_line": g.start_line or 1,
                    "end_line": g.end_line or 10**6, "relevance": 1}) + "\n"
        for q in qs for g in q.gold
    ))
    out = subprocess.run([sys.executable, str(SCORE_PY), str(qrels), str(run), "--level", level, "--json"],
                         check=True, capture_output=True, text=True)
    expected = json.loads(out.stdout)["all"]
    for key in ("MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10", "nDCG@10", "Recall@10"):
        assert report.metrics["fused"][level][key] == pytest.approx(expected[key]), key
