"""Evaluation questions from golden.json, held-out feedback rows and bench collections."""

import pytest

from training.evaluation.datasets import EvalError, GoldLoc, load_bench, queries_from_feedback, queries_from_golden
from training.evaluation.golden import GoldenItem, GoldenSpan


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
