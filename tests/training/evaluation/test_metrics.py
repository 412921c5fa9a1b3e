import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from training.evaluation.metrics import (
    aggregate,
    bootstrap_ci,
    hit_at,
    judge_files,
    judge_spans,
    latency_percentiles,
    ndcg_at,
    path_matches,
    percentile,
    query_metrics,
    recall_at,
    reciprocal_rank,
)

SCORE_PY = Path(__file__).resolve().parents[4] / "shared" / "bench" / "tools" / "score.py"

# Four queries: (relevance flags by rank, number of gold units).
FOUR = [
    ([False, True, False], 1),  # first hit at rank 2
    ([True, False], 1),  # first hit at rank 1
    ([False] * 5, 1),  # no hit
    ([False, False, True, True], 2),  # two gold, found at ranks 3 and 4
]


def test_four_query_example_matches_hand_computed_mrr_and_ndcg():
    per = [query_metrics(rel, n) for rel, n in FOUR]
    agg = aggregate(per)
    # MRR = (1/2 + 1 + 0 + 1/3) / 4
    assert agg["MRR@10"] == pytest.approx(0.4583333, abs=1e-6)
    # nDCG: q1 = 1/log2(3) = 0.6309298; q2 = 1; q3 = 0;
    # q4 = (1/log2(4) + 1/log2(5)) / (1 + 1/log2(3)) = 0.9306766 / 1.6309298 = 0.5706417
    assert per[0]["nDCG@10"] == pytest.approx(0.6309298, abs=1e-6)
    assert per[3]["nDCG@10"] == pytest.approx(0.5706417, abs=1e-6)
    assert agg["nDCG@10"] == pytest.approx((0.6309298 + 1 + 0 + 0.5706417) / 4, abs=1e-6)
    assert agg["Hit@1"] == 0.25
    assert agg["Hit@3"] == 0.75
    assert agg["Hit@5"] == 0.75
    assert agg["Recall@10"] == 0.75
    assert set(agg) >= {"MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10", "nDCG@10", "Recall@50"}


def test_reciprocal_rank_ignores_hits_beyond_k():
    assert reciprocal_rank([False] * 10 + [True], k=10) == 0.0
    assert reciprocal_rank([False] * 10 + [True], k=11) == pytest.approx(1 / 11)


def test_hit_recall_and_ndcg_edge_cases():
    assert hit_at([], 5) == 0.0
    assert recall_at([True, True], 1, 2) == 0.5
    assert recall_at([True], 10, 0) == 0.0
    assert ndcg_at([True], 0) == 0.0
    # ideal DCG is capped at k ones
    assert ndcg_at([True] * 10, 50, k=10) == pytest.approx(1.0)


def test_suffix_matching_respects_path_boundaries():
    assert path_matches("auth/oauth.py", "src/auth/oauth.py")
    assert path_matches("auth/oauth.py", "auth/oauth.py")
    assert path_matches("./auth/oauth.py", "/src/auth/oauth.py")
    assert not path_matches("auth/oauth.py", "myauth/oauth.py")
    assert not path_matches("auth/oauth.py", "src/auth/oauth.pyc")
    assert not path_matches("auth/oauth.py", "src/auth/oauth.py", exact=True)
    assert not path_matches("", "x.py")


def test_file_level_reduces_to_distinct_paths_first_occurrence_wins():
    flags, n = judge_files(["auth/oauth.py"], ["a.py", "a.py", "src/auth/oauth.py", "src/auth/oauth.py", "b.py"])
    assert (flags, n) == ([False, True, False], 1)


def test_file_level_counts_each_gold_once_under_suffix_matching():
    flags, n = judge_files(["utils.py"], ["a/utils.py", "b/utils.py"])
    assert (flags, n) == ([True, False], 1)


def test_file_level_rejects_loose_substring():
    flags, _ = judge_files(["auth/oauth.py"], ["myauth/oauth.py"])
    assert flags == [False]


def test_span_level_overlap_and_each_gold_matched_once():
    gold = [("m.py", 10, 20), ("m.py", 40, 50)]
    ranked = [("m.py", 1, 9), ("m.py", 15, 25), ("m.py", 18, 19), ("m.py", 50, 60), ("other.py", 10, 20)]
    flags, n = judge_spans(gold, ranked)
    assert n == 2
    assert flags == [False, True, False, True, False]


def test_span_level_whole_file_on_either_side():
    flags, _ = judge_spans([("m.py", None, None)], [("m.py", 500, 520)])
    assert flags == [True]
    flags, _ = judge_spans([("m.py", 500, 520)], [("m.py", None, None)])
    assert flags == [True]
    flags, _ = judge_spans([("auth/oauth.py", 1, 5)], [("myauth/oauth.py", 1, 5)])
    assert flags == [False]


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    values = [0, 1, 0.5, 0.25, 1, 0, 0.333, 1]
    lo, hi = bootstrap_ci(values, n=1000, seed=0)
    assert (lo, hi) == bootstrap_ci(values, n=1000, seed=0)
    mean = sum(values) / len(values)
    assert 0 <= lo < mean < hi <= 1
    assert bootstrap_ci([0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_latency_percentiles_interpolate_like_numpy():
    ms = [10, 20, 30, 40, 100]
    assert percentile(ms, 50) == 30
    assert percentile(ms, 95) == pytest.approx(88.0)
    assert latency_percentiles(ms)["p95"] == pytest.approx(88.0)
    assert latency_percentiles([]) == {}


def test_aggregate_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])


# --- agreement with the public scorer -------------------------------------------------------------------------

QRELS = [
    {"qid": "q1", "path": "pkg/a.py", "start_line": 10, "end_line": 20},
    {"qid": "q2", "path": "pkg/b.py", "start_line": 1, "end_line": 5},
    {"qid": "q2", "path": "pkg/c.py", "start_line": 30, "end_line": 40},
    {"qid": "q3", "path": "pkg/d.py", "start_line": 5, "end_line": 6},
    {"qid": "q4", "path": "pkg/e.py", "start_line": 100, "end_line": 120},  # missing from the run
    {"qid": "q5", "path": "pkg/a.py", "start_line": 1, "end_line": 3},
    {"qid": "q5", "path": "pkg/a.py", "start_line": 50, "end_line": 60},
]
RUN = {
    "q1": [("pkg/x.py", 1, 5), ("pkg/a.py", 1, 9), ("pkg/a.py", 12, 14), ("pkg/y.py", 1, 2)],
    "q2": [("pkg/c.py", 35, 36), ("pkg/z.py", 1, 9), ("pkg/z.py", 10, 19)]
    + [(f"pkg/f{i}.py", 1, 2) for i in range(10)]
    + [("pkg/b.py", None, None)],
    "q3": [(f"pkg/g{i}.py", 1, 2) for i in range(4)] + [("pkg/d.py", 1, 100)],
    "q5": [("pkg/a.py", 2, 2), ("pkg/a.py", 2, 3), ("pkg/a.py", 55, 58), ("pkg/q.py", None, None)],
}


def _score_py(tmp_path: Path, level: str) -> dict:
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text("".join(json.dumps(dict(r, relevance=1)) + "\n" for r in QRELS))
    run = tmp_path / "run.jsonl"
    lines = []
    for qid, rows in RUN.items():
        for rank, (p, s, e) in enumerate(rows, 1):
            row = {"qid": qid, "path": p, "rank": rank}
            if s is not None:
                row.update(start_line=s, end_line=e)
            lines.append(json.dumps(row) + "\n")
    run.write_text("".join(lines))
    out = subprocess.run(
        [sys.executable, str(SCORE_PY), str(qrels), str(run), "--level", level, "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["all"]


@pytest.mark.skipif(not SCORE_PY.is_file(), reason="../shared/bench/tools/score.py is not present")
@pytest.mark.parametrize("level", ["file", "span"])
@pytest.mark.parametrize("exact", [True, False])
def test_metrics_agree_with_score_py(tmp_path, level, exact):
    expected = _score_py(tmp_path, level)
    gold_by_q: dict[str, list] = {}
    for r in QRELS:
        gold_by_q.setdefault(r["qid"], []).append((r["path"], r["start_line"], r["end_line"]))
    per = []
    for qid, gold in gold_by_q.items():
        ranked = RUN.get(qid, [])
        if level == "file":
            flags, n = judge_files([g[0] for g in gold], [r[0] for r in ranked], exact=exact)
        else:
            flags, n = judge_spans(gold, ranked, exact=exact)
        per.append(query_metrics(flags, n))
    ours = aggregate(per)
    for key in ("MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10", "nDCG@10", "Recall@10"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key
    assert not math.isnan(ours["Recall@50"])
