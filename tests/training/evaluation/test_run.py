import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.types import Chunk, Hit
from training.evaluation.datasets import (
    EvalError,
    EvalQuery,
    GoldLoc,
    load_bench,
    queries_from_feedback,
    queries_from_golden,
)
from training.evaluation.evaluate import Ranking, evaluate
from training.evaluation.report import format_table, save_report, write_run_jsonl
from training.evaluation.run import run_evaluation
from training.evaluation.golden import GoldenItem, GoldenSpan

SCORE_PY = Path(__file__).resolve().parents[4] / "shared" / "bench" / "tools" / "score.py"


def hit(path: str, start: int = 1, end: int = 10, score: float = 0.0) -> Hit:
    return Hit(Chunk.make(path, start, end, "python", None, f"{path}:{start}"), fused_score=score, score=score)


QUERIES = [
    EvalQuery("q1", "where is rrf", "c", [GoldLoc("retrieval/fusion.py", 20, 30)]),
    EvalQuery("q2", "where is bm25", "c", [GoldLoc("retrieval/lexical.py")]),
    EvalQuery("q3", "where are secrets", "c", [GoldLoc("retrieval/discovery.py", 5, 9)]),
    EvalQuery("q4", "how is reload done", "c", [GoldLoc("reranker/model.py", 100, 120)]),
]

# Baseline: gold at rank 2, 1, none, 3 (file); the reranked config puts every gold first.
BASE = {
    "q1": [hit("src/x.py"), hit("src/retrieval/fusion.py", 1, 10), hit("src/retrieval/fusion.py", 21, 25)],
    "q2": [hit("retrieval/lexical.py", 40, 60), hit("a.py")],
    "q3": [hit("myretrieval/discovery.py", 5, 9), hit("b.py")],
    "q4": [hit("a.py"), hit("b.py"), hit("reranker/model.py", 110, 115)],
}


def base_fn(q: EvalQuery):
    return BASE[q.qid]


def reranked_fn(q: EvalQuery):
    hits = BASE[q.qid]
    gold = [h for h in hits if h.chunk.path.endswith(q.gold[0].path) and not h.chunk.path.startswith("my")]
    rest = [h for h in hits if h not in gold]
    return Ranking(sorted(gold, key=lambda h: -h.chunk.start_line) + rest, {"rerank": float(len(q.qid) * 10)})


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


def test_table_shows_every_config_and_the_baseline_comparison():
    report = evaluate(QUERIES, {"bm25": base_fn, "fused": base_fn, "fused+rerank": reranked_fn}, name="unit")
    table = format_table(report)
    assert report.baseline == "fused"
    for config in ("bm25", "fused", "fused+rerank"):
        assert f"\n{config} " in table
    assert "Base -> Reranked" in table
    assert "fused -> fused+rerank: MRR@10 0.458 -> 0.750 (+0.292)" in table
    assert "[file level, n=4]" in table and "[span level, n=4]" in table


def test_empty_evaluation_set_is_a_clear_error():
    with pytest.raises(EvalError, match="evaluation set is empty"):
        evaluate([], {"fused": base_fn})
    with pytest.raises(EvalError, match="at least one ranking configuration"):
        evaluate(QUERIES, {})


def test_run_evaluation_rejects_an_empty_golden_file(tmp_path):
    (tmp_path / "golden.json").write_text("[]")
    with pytest.raises(EvalError, match="empty"):
        run_evaluation(tmp_path / "golden.json", tmp_path / "home", configs=("bm25",))


def test_span_gold_empty_list_leaves_query_out_of_span_level():
    qs = [QUERIES[0], EvalQuery("q9", "x", "c", [GoldLoc("a.py")], span_gold=[])]
    report = evaluate(qs, {"fused": lambda q: [hit("a.py")]})
    assert report.n_by_level == {"file": 2, "span": 1}
    assert any("span level: 1 of 2" in n for n in report.notes)


def test_golden_items_become_queries_with_whole_file_and_span_gold():
    item = GoldenItem(
        q="how is the reranker hot-reloaded", repo="agro-mcp", expect_paths=["reranker/model.py", "reranker/x.py"],
        expect_spans=[GoldenSpan(path="reranker/model.py", start_line=5, end_line=9)],
    )
    (q,) = queries_from_golden([item])
    assert q.qid == "golden-0000" and q.corpus == "agro-mcp" and not q.exact_paths
    assert q.file_gold() == ["reranker/model.py", "reranker/x.py"]
    assert q.spans() == [("reranker/model.py", 5, 9), ("reranker/x.py", None, None)]


def test_feedback_rows_accept_doc_ids_and_name_bad_rows():
    (q,) = queries_from_feedback([{"query": "q", "corpus": "c", "gold": ["a/b.py:3-9", {"path": "c.py"}]}])
    assert q.gold == [GoldLoc("a/b.py", 3, 9), GoldLoc("c.py")]
    with pytest.raises(EvalError, match="row 1"):
        queries_from_feedback([q, {"query": "q", "corpus": "c", "gold": []}])


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


def test_load_bench_reads_single_and_per_query_corpora(tmp_path):
    doc = tmp_path / "docstring_demo"
    (doc / "corpus_stripped" / "pkg").mkdir(parents=True)
    (doc / "queries.jsonl").write_text('{"qid": "d-1", "query": "make a key"}\n')
    (doc / "qrels.jsonl").write_text('{"qid": "d-1", "path": "pkg/a.py", "start_line": 3, "end_line": 7, "relevance": 1}\n')
    bench = load_bench(doc)
    assert bench.roots == {"bench-docstring_demo": doc / "corpus_stripped"}
    (q,) = bench.queries
    assert q.exact_paths and q.spans() == [("pkg/a.py", 3, 7)] and q.file_gold() == ["pkg/a.py"]

    swe = tmp_path / "swebench_demo"
    for iid in ("o__r-1", "o__r-2"):
        (swe / iid / "repo").mkdir(parents=True)
    (swe / "queries.jsonl").write_text(
        '{"qid": "o__r-1", "query": "bug", "corpus": "o__r-1"}\n{"qid": "o__r-2", "query": "bug2", "corpus": "o__r-2"}\n'
    )
    (swe / "qrels.jsonl").write_text(
        '{"qid": "o__r-1", "path": "s/m.py", "relevance": 1, "corpus": "o__r-1"}\n'
        '{"qid": "o__r-2", "path": "s/n.py", "relevance": 1, "corpus": "o__r-2"}\n'
    )
    (swe / "qrels_functions.jsonl").write_text(
        '{"qid": "o__r-1", "path": "s/m.py", "start_line": 4, "end_line": 8, "relevance": 1}\n'
    )
    bench = load_bench(swe)
    assert set(bench.roots) == {"bench-swe-o__r-1", "bench-swe-o__r-2"}
    q1, q2 = bench.queries
    assert q1.spans() == [("s/m.py", 4, 8)] and q2.spans() == []
    with pytest.raises(EvalError, match="not a bench collection"):
        load_bench(tmp_path)


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
