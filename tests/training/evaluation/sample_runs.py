"""Four questions with hand-computed rankings, shared by the evaluation tests."""

from __future__ import annotations

from retrieval.types import Chunk, Hit
from training.evaluation.datasets import EvalQuery, GoldLoc
from training.evaluation.evaluate import Ranking


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
