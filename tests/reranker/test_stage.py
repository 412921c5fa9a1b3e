from __future__ import annotations

import threading

import numpy as np
import pytest

from reranker.cache import ScoreCache
from reranker.manager import LoadedReranker
from reranker.model import CrossEncoderScorer, ScoringCancelled
from reranker.settings import RerankerSettings
from reranker.stage import blend_scores, minmax, rerank
from retrieval.types import Chunk, Hit


class TableScorer:
    """A model stand-in whose logit for a text is looked up in a table (the stage is the unit under test)."""

    backend, dtype, device = "fp32", "float32", "cpu"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls = 0

    def score(self, query, texts, batch=16, cancel=None):
        self.calls += 1
        self.seen = list(texts)
        # The stage sends each chunk under its location header; the table is keyed by the bare chunk text.
        return np.array([self.table[t.split("\n", 1)[1]] for t in texts], dtype=np.float32)


class FailsOnceScorer(TableScorer):
    def score(self, query, texts, batch=16, cancel=None):
        self.calls += 1
        if self.calls == 1:
            raise MemoryError("out of memory in matmul")
        return super().score(query, texts, batch, cancel)


class BlockingScorer(TableScorer):
    """Works until its cancel event is set: models a stage far slower than the timeout."""

    def __init__(self, table):
        super().__init__(table)
        self.cancelled = threading.Event()

    def score(self, query, texts, batch=16, cancel=None):
        cancel.wait()
        self.cancelled.set()
        raise ScoringCancelled("cancelled")


def hits_from(fused: list[float]) -> list[Hit]:
    return [Hit(Chunk.make(f"f{i}.py", 1, 2, "python", None, f"t{i}"), fused_score=f, score=f) for i, f in
            enumerate(fused)]


def loaded(scorer) -> LoadedReranker:
    return LoadedReranker(scorer=scorer, model_id="r-test", identity=("test", id(scorer)))


def test_blend_matches_a_hand_computed_example():
    # fused head 0.05, 0.04, 0.03 -> minmax 1, 0.5, 0; logits 1, 3, 2 -> minmax 0, 1, 0.5; alpha 0.7:
    # t0 = 0.7*0 + 0.3*1 = 0.30, t1 = 0.7*1 + 0.3*0.5 = 0.85, t2 = 0.7*0.5 + 0.3*0 = 0.35
    hits = hits_from([0.05, 0.04, 0.03, 0.02, 0.01])
    scorer = TableScorer({"t0": 1.0, "t1": 3.0, "t2": 2.0})
    out = rerank("q", hits, loaded(scorer), RerankerSettings(alpha=0.7, topn=3), None)
    assert out.used and out.fallback_reason is None and out.model == "r-test"
    assert [h.doc_id for h in out.hits] == ["f1.py:1-2", "f2.py:1-2", "f0.py:1-2", "f3.py:1-2", "f4.py:1-2"]
    np.testing.assert_allclose([h.score for h in out.hits[:3]], [0.85, 0.35, 0.30])
    assert [h.rerank_score for h in out.hits[:3]] == [3.0, 2.0, 1.0]
    assert [h.fused_score for h in out.hits[:3]] == [0.04, 0.03, 0.05]
    # Tail: fused 0.02, 0.01 -> minmax 1, 0 -> head_min - 1 + 0.5 * (1, 0) = -0.2, -0.7
    np.testing.assert_allclose([h.score for h in out.hits[3:]], [-0.2, -0.7])
    assert all(h.rerank_score is None for h in out.hits[3:])


def test_gate_reranks_only_the_head_and_the_tail_keeps_fused_order_below_it():
    fused = [1.0 - i * 0.01 for i in range(10)]
    hits = hits_from(fused)
    table = {f"t{i}": float(i) for i in range(10)}  # the model prefers the worst fused hits
    out = rerank("q", hits, loaded(TableScorer(table)), RerankerSettings(alpha=1.0, topn=4), None)
    assert [h.doc_id for h in out.hits[4:]] == [h.doc_id for h in hits[4:]]
    assert min(h.score for h in out.hits[:4]) > max(h.score for h in out.hits[4:])
    assert [h.score for h in out.hits] == sorted([h.score for h in out.hits], reverse=True)
    all_out = rerank("q", hits, loaded(TableScorer(table)), RerankerSettings(alpha=1.0, topn=0), None)
    assert [h.doc_id for h in all_out.hits] == [h.doc_id for h in reversed(hits)]


def test_alpha_one_orders_by_the_cross_encoder_score_alone():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=20)
    hits = hits_from(sorted(rng.random(20), reverse=True))
    out = rerank("q", hits, loaded(TableScorer({f"t{i}": float(v) for i, v in enumerate(logits)})),
                 RerankerSettings(alpha=1.0, topn=0), None)
    assert [h.doc_id for h in out.hits] == [f"f{i}.py:1-2" for i in np.argsort(-logits, kind="stable")]


def test_the_model_scores_each_chunk_under_its_path_and_symbol_header():
    hits = [Hit(Chunk.make("pkg/sock.py", 5, 9, "python", "BufferedSocket.close", "def close(self): ..."), 0.9, 0.9),
            Hit(Chunk.make("pkg/util.py", 1, 2, "python", None, "x = 1"), 0.5, 0.5)]
    scorer = TableScorer({"def close(self): ...": 1.0, "x = 1": 0.0})
    rerank("q", hits, loaded(scorer), RerankerSettings(topn=0), None)
    assert scorer.seen == ["# pkg/sock.py :: BufferedSocket.close\ndef close(self): ...", "# pkg/util.py\nx = 1"]


def test_single_candidate_and_constant_scores_do_not_divide_by_zero():
    assert minmax([4.2]).tolist() == [1.0]
    np.testing.assert_allclose(blend_scores([2.0, 2.0, 2.0], [0.3, 0.2, 0.1], 0.5), [1.0, 0.75, 0.5])
    out = rerank("q", hits_from([0.5]), loaded(TableScorer({"t0": -3.0})), RerankerSettings(), None)
    assert out.used and out.hits[0].score == 1.0 and out.hits[0].rerank_score == -3.0


def test_reranking_leaves_the_callers_hits_untouched():
    hits = hits_from([0.3, 0.2, 0.1])
    before = [(h.doc_id, h.score, h.rerank_score) for h in hits]
    rerank("q", hits, loaded(TableScorer({"t0": 0.0, "t1": 5.0, "t2": 1.0})), RerankerSettings(), None)
    assert [(h.doc_id, h.score, h.rerank_score) for h in hits] == before


def test_a_model_that_raises_falls_back_to_fused_order_and_the_next_call_reranks(caplog):
    hits = hits_from([0.3, 0.2, 0.1])
    lr = loaded(FailsOnceScorer({"t0": 0.0, "t1": 5.0, "t2": 1.0}))
    first = rerank("q", hits, lr, RerankerSettings(), None)
    assert not first.used and "MemoryError" in first.fallback_reason
    assert [h.doc_id for h in first.hits] == [h.doc_id for h in hits]
    assert [h.score for h in first.hits] == [0.3, 0.2, 0.1]
    assert any("fell back" in r.message for r in caplog.records)
    second = rerank("q", hits, lr, RerankerSettings(), None)
    assert second.used and second.hits[0].doc_id == "f1.py:1-2"


def test_a_stage_slower_than_the_timeout_falls_back_and_stops_the_worker():
    hits = hits_from([0.3, 0.2])
    scorer = BlockingScorer({})
    out = rerank("q", hits, loaded(scorer), RerankerSettings(timeout_ms=30), None)
    assert not out.used and "timed out after 30 ms" in out.fallback_reason
    assert [h.doc_id for h in out.hits] == [h.doc_id for h in hits]
    assert scorer.cancelled.wait(5)


def test_timeout_with_a_real_model_that_is_fast_enough_reranks(tiny_dir):
    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32")
    out = rerank("q", hits_from([0.3, 0.2, 0.1]), loaded(scorer), RerankerSettings(timeout_ms=60_000), None)
    assert out.used and all(h.rerank_score is not None for h in out.hits)


def test_no_model_or_disabled_falls_back_with_a_reason():
    hits = hits_from([0.3, 0.2])
    assert rerank("q", hits, None, RerankerSettings(), None).fallback_reason == "no reranker model loaded"
    off = rerank("q", hits, loaded(TableScorer({})), RerankerSettings(enabled=False), None)
    assert not off.used and "disabled" in off.fallback_reason


def test_cached_scores_are_reused_for_the_same_model_and_query():
    cache = ScoreCache(100)
    table = {f"t{i}": float(i) for i in range(5)}
    scorer = TableScorer(table)
    lr = loaded(scorer)
    first = rerank("q", hits_from([0.5, 0.4, 0.3]), lr, RerankerSettings(), cache)
    assert first.cached == 0 and scorer.calls == 1
    second = rerank("q", hits_from([0.5, 0.4, 0.3, 0.2, 0.1]), lr, RerankerSettings(), cache)
    assert second.cached == 3 and scorer.calls == 2
    assert [h.rerank_score for h in second.hits] == [4.0, 3.0, 2.0, 1.0, 0.0]
    third = rerank("q", hits_from([0.5, 0.4]), lr, RerankerSettings(), cache)
    assert third.cached == 2 and scorer.calls == 2
    other_model = rerank("q", hits_from([0.5, 0.4]), loaded(TableScorer(table)), RerankerSettings(), cache)
    assert other_model.cached == 0


def test_cache_evicts_least_recently_used_and_size_zero_stores_nothing():
    cache = ScoreCache(2)
    cache.put_many("m", "q", [("a", 1.0), ("b", 2.0)])
    assert cache.get_many("m", "q", ["a"]) == [1.0]
    cache.put_many("m", "q", [("c", 3.0)])
    assert cache.get_many("m", "q", ["a", "b", "c"]) == [1.0, None, 3.0]
    off = ScoreCache(0)
    off.put_many("m", "q", [("a", 1.0)])
    assert len(off) == 0


@pytest.mark.parametrize("query", ["   ", "", "naïve 🦀 \udcff"])
def test_odd_queries_and_empty_chunks_rerank_with_a_real_model(tiny_dir, query):
    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32", maxlen=32)
    hits = [Hit(Chunk.make("a.py", 1, 1, "python", None, t), fused_score=f, score=f)
            for t, f in [("", 0.3), ("x\udcfey", 0.2), ("def f(): pass", 0.1)]]
    out = rerank(query, hits, loaded(scorer), RerankerSettings(), ScoreCache(10))
    assert out.used and len(out.hits) == 3


def test_a_release_is_blended_with_its_calibrated_alpha_unless_the_user_set_one():
    from reranker.manager import effective_alpha

    fused = [0.9, 0.8, 0.1]
    table = {"t0": 0.0, "t1": 0.2, "t2": 1.0}  # the model prefers t2, fused retrieval t0
    rel = LoadedReranker(scorer=TableScorer(table), model_id="r", manifest={"blend": {"alpha": 0.2}})
    assert effective_alpha(rel, RerankerSettings()) == (0.2, "release")
    out = rerank("q", hits_from(fused), rel, RerankerSettings(topn=0), None)
    assert [h.doc_id for h in out.hits][0] == "f0.py:1-2"  # 0.2 x model + 0.8 x fused keeps fused first
    assert effective_alpha(rel, RerankerSettings(alpha=0.9)) == (0.9, "setting")
    out = rerank("q", hits_from(fused), rel, RerankerSettings(alpha=0.9, topn=0), None)
    assert [h.doc_id for h in out.hits][0] == "f2.py:1-2"
    assert effective_alpha(loaded(TableScorer(table)), RerankerSettings()) == (0.7, "default")
    bad = LoadedReranker(scorer=TableScorer(table), model_id="r", manifest={"blend": {"alpha": 3}})
    assert effective_alpha(bad, RerankerSettings()) == (0.7, "default")


def test_the_retrieval_side_moves_from_fused_to_dense_with_the_dense_weight():
    from reranker.stage import retrieval_scores

    fused, dense = [0.05, 0.04, 0.03], [0.2, 0.8, 0.5]
    assert np.allclose(retrieval_scores(fused, dense, 0.0), [1.0, 0.5, 0.0])
    assert np.allclose(retrieval_scores(fused, dense, 1.0), [0.0, 1.0, 0.5])
    assert np.allclose(retrieval_scores(fused, dense, 0.5), [0.5, 0.75, 0.25])
    # a hit outside the dense candidates counts as the lowest dense score; no dense score at all: fused alone
    assert np.allclose(retrieval_scores(fused, [None, 0.8, 0.5], 1.0), [0.0, 1.0, 0.0])
    assert np.allclose(retrieval_scores(fused, [None, None, None], 1.0), [1.0, 0.5, 0.0])
    assert np.allclose(blend_scores([1.0, 3.0, 2.0], fused, 0.5, dense, 1.0), 0.5 * np.array([0, 1, 0.5]) +
                       0.5 * np.array([0.0, 1.0, 0.5]))


def test_a_release_is_blended_with_its_dense_weight_unless_the_user_set_one():
    from reranker.manager import effective_dense_weight

    fused, dense = [0.9, 0.8, 0.1], [0.1, 0.2, 0.9]  # fused retrieval prefers t0, the bi-encoder t2
    table = {"t0": 0.0, "t1": 0.0, "t2": 0.0}  # a model with no opinion: the retrieval side decides
    hits = [Hit(Chunk.make(f"f{i}.py", 1, 2, "python", None, f"t{i}"), fused_score=f, score=f, dense_score=d)
            for i, (f, d) in enumerate(zip(fused, dense))]
    rel = LoadedReranker(scorer=TableScorer(table), model_id="r", manifest={"blend": {"alpha": 0.5,
                                                                                      "dense_weight": 1.0}})
    assert effective_dense_weight(rel, RerankerSettings()) == (1.0, "release")
    assert rerank("q", hits, rel, RerankerSettings(topn=0), None).hits[0].doc_id == "f2.py:1-2"
    assert effective_dense_weight(rel, RerankerSettings(dense_weight=0.0)) == (0.0, "setting")
    assert rerank("q", hits, rel, RerankerSettings(topn=0, dense_weight=0.0), None).hits[0].doc_id == "f0.py:1-2"
    assert effective_dense_weight(loaded(TableScorer(table)), RerankerSettings()) == (0.5, "default")
    bad = LoadedReranker(scorer=TableScorer(table), model_id="r", manifest={"blend": {"dense_weight": True}})
    assert effective_dense_weight(bad, RerankerSettings()) == (0.5, "default")


def test_a_query_far_longer_than_any_training_question_keeps_the_fused_order(tiny_dir):
    from reranker.path import RankingPath
    from retrieval.settings import RetrievalSettings

    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32")
    rel = LoadedReranker(scorer=scorer, model_id="r", manifest={"data": {"query_tokens_max": 20}})
    st = RerankerSettings(query_max_tokens=16)  # limit = 2 x max(20, 16) = 40 tokens
    hits = hits_from([0.3, 0.2, 0.1])
    short = rerank("where is the token parsed", hits, rel, st, None)
    assert short.used and short.fallback_reason is None
    long_q = "the client retries the request when the pool is exhausted " * 8
    out = rerank(long_q, hits, rel, st, None)
    assert not out.used and out.kept_fused and [h.doc_id for h in out.hits] == [h.doc_id for h in hits]
    assert not short.kept_fused
    assert "over 40" in out.fallback_reason and "at most 20 tokens" in out.fallback_reason
    assert "AGRO_RERANKER_LONG_QUERY_FACTOR=0" in out.fallback_reason
    # switched off, or a model without the record (named by path, an older release): every query is reranked
    assert rerank(long_q, hits, rel, RerankerSettings(query_max_tokens=16, long_query_factor=0), None).used
    assert rerank(long_q, hits, loaded(scorer), st, None).used
    # the ranking path (what evaluations score) serves such a query in the fused order, marked as by design
    path_out = RankingPath(RetrievalSettings(), st, lambda: None, rel).rerank(long_q, hits)
    assert path_out.kept_fused and [h.doc_id for h in path_out.hits] == [h.doc_id for h in hits]


class KeywordScorer(TableScorer):
    """Scores a text 5 when its keyword (the table's value for it) is in the query, else 0; keeps each query it
    was asked, and has the MiniLM tokenizer, so the stage can cut a long query into windows."""

    def __init__(self, table, query_max_tokens=16):
        super().__init__(table)
        from transformers import AutoTokenizer

        from retrieval.models import minilm_path

        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
        self.query_max_tokens = query_max_tokens
        self.queries: list[str] = []

    def score(self, query, texts, batch=16, cancel=None):
        self.calls += 1
        self.queries.append(query)
        return np.array([5.0 if self.table[t.split("\n", 1)[1]] in query else 0.0 for t in texts], dtype=np.float32)


def _long_query(*tail: str) -> str:
    filler = "the client retries the request when the pool is exhausted and then it logs a warning. "
    return filler * 2 + " ".join(f"{filler} {w}." for w in tail)


def test_a_long_query_in_windows_mode_is_read_window_by_window_and_the_window_scores_are_pooled():
    hits = hits_from([0.3, 0.2, 0.1])
    scorer = KeywordScorer({"t0": "nothing-matches", "t1": "nothing-matches", "t2": "frobnicate"})
    rel = LoadedReranker(scorer=scorer, model_id="r", manifest={"data": {"query_tokens_max": 10}})
    q = _long_query("frobnicate")  # the only word that singles out t2 sits far past the first window
    kept = rerank(q, hits, rel, RerankerSettings(query_max_tokens=16), None)
    assert kept.kept_fused and not kept.used and kept.windows == 0
    assert "AGRO_RERANKER_LONG_QUERY_MODE=windows" in kept.fallback_reason
    st = RerankerSettings(query_max_tokens=16, long_query_mode="windows", long_query_windows=50, alpha=1.0,
                          long_query_pool="max")
    out = rerank(q, hits, rel, st, None)
    assert out.used and out.fallback_reason is None and out.windows == len(scorer.queries) > 3
    assert out.hits[0].doc_id == "f2.py:1-2" and out.hits[0].rerank_score == 5.0  # its best window decides
    mean = rerank(q, hits, rel, st.model_copy(update={"long_query_pool": "mean"}), ScoreCache(100))
    assert mean.hits[0].doc_id == "f2.py:1-2" and mean.hits[0].rerank_score == pytest.approx(5.0 / out.windows)
    n_tokens = [len(scorer.tokenizer(w, add_special_tokens=False)["input_ids"]) for w in scorer.queries]
    assert max(n_tokens) <= 16
    assert sum(n_tokens) >= len(scorer.tokenizer(q, add_special_tokens=False)["input_ids"]) - len(n_tokens)


def test_windows_past_the_cap_keep_the_first_and_those_whose_words_single_out_candidates():
    from reranker.stage import query_windows

    scorer = KeywordScorer({}, query_max_tokens=16)
    rel = LoadedReranker(scorer=scorer, model_id="r")
    q = _long_query("zebulon", "quixotic", "marmalade")
    # "the" is in every candidate, so it singles out none; the filler's other words are in none of them
    texts = ["def zebulon(): the", "quixotic = 1 # the", "def other(): return the"]
    wins = query_windows(q, rel, RerankerSettings(query_max_tokens=16, long_query_windows=3), texts)
    assert len(wins) == 3 and wins[0].startswith("the client retries")
    assert any("zebulon" in w for w in wins) and any("quixotic" in w for w in wins)
    assert not any("marmalade" in w for w in wins)  # a word in no candidate singles out none of them
    every = query_windows(q, rel, RerankerSettings(query_max_tokens=16, long_query_windows=99), texts)
    assert any("marmalade" in w for w in every)
    picked = [every.index(w, 1) if i else 0 for i, w in enumerate(wins)]
    assert picked == sorted(picked)  # kept in query order


def test_windows_mode_with_a_scorer_without_a_tokenizer_keeps_the_fused_order():
    hits = hits_from([0.3, 0.2, 0.1])
    rel = LoadedReranker(scorer=TableScorer({"t0": 0.0, "t1": 0.0, "t2": 9.0}), model_id="r",
                         manifest={"data": {"query_tokens_max": 10}})
    st = RerankerSettings(query_max_tokens=16, long_query_mode="windows")
    # no tokenizer: the query's length is unknown, so it is reranked as it is
    assert rerank(_long_query("x"), hits, rel, st, None).used
    from reranker.stage import query_windows

    assert query_windows(_long_query("x"), rel, st, ["a"]) == []
