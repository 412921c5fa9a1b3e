"""The one ranking path: fused retrieval, then the rerank stage, then the blend, on a real index, the real MiniLM
embedder and a tiny real cross-encoder."""

from __future__ import annotations

import pytest

from reranker.manager import LoadedReranker, RerankerManager
from reranker.model import CrossEncoderScorer
from reranker.path import RankingPath, RetrievalBlend
from reranker.settings import RerankerSettings
from reranker.stage import rerank, retrieval_scores
from retrieval.search import search
from retrieval.settings import IndexSettings, RetrievalSettings

QUERY = "where is the OAuth token validated"


@pytest.fixture
def gen(tmp_path, sample_repo, embedder):
    from retrieval.backend import EmbeddedIndexBackend

    be = EmbeddedIndexBackend(tmp_path / "home")
    be.build(sample_repo, "sample", IndexSettings(), RetrievalSettings(), embedder)
    return be.load_current("sample")


@pytest.fixture
def model(tiny_dir) -> LoadedReranker:
    return LoadedReranker(scorer=CrossEncoderScorer.load(tiny_dir, backend="fp32"), model_id="tiny")


def test_rank_is_fused_retrieval_of_the_head_then_the_rerank_stage(gen, embedder, model):
    st = RerankerSettings(topn=4)
    path = RankingPath(RetrievalSettings(), st, lambda: embedder, model)
    got = path.rank(gen, QUERY, 3)
    fused = search(gen, embedder, QUERY, 4, RetrievalSettings(), "fused").hits
    want = rerank(QUERY, fused, model, st).hits[:3]
    assert got.reranking_used and got.reranker_model == "tiny" and got.fallback_reason is None
    assert [h.doc_id for h in got.hits] == [h.doc_id for h in want]
    assert [h.score for h in got.hits] == pytest.approx([h.score for h in want])
    assert {"fusion", "rerank", "total"} <= set(got.timings)


def test_rank_with_rerank_off_returns_the_fused_order_and_says_why(gen, embedder, model):
    fused = search(gen, embedder, QUERY, 5, RetrievalSettings(), "fused").hits
    off = RankingPath(RetrievalSettings(), RerankerSettings(), lambda: embedder, model).rank(gen, QUERY, 5, rerank=False)
    assert [h.doc_id for h in off.hits] == [h.doc_id for h in fused]
    assert not off.reranking_used and off.fallback_reason == "disabled for this call (rerank=false)"
    assert "rerank" not in off.timings
    disabled = RankingPath(RetrievalSettings(), RerankerSettings(enabled=False), lambda: embedder, model)
    assert disabled.rank(gen, QUERY, 5).fallback_reason == "reranker disabled (AGRO_RERANKER_ENABLED=0)"


def test_a_manager_without_a_model_keeps_the_fused_order_with_its_reason(tmp_path, gen, embedder):
    manager = RerankerManager(RerankerSettings(), tmp_path / "no-models")
    try:
        got = RankingPath(RetrievalSettings(), RerankerSettings(), lambda: embedder, manager).rank(gen, QUERY, 3)
    finally:
        manager.close()
    assert not got.reranking_used and got.fallback_reason and "rerank" not in got.timings
    assert len(got.hits) == 3


def test_excluded_paths_never_reach_the_ranking(gen, embedder, model):
    path = RankingPath(RetrievalSettings(), RerankerSettings(), lambda: embedder, model)
    first = path.rank(gen, QUERY, 5).hits[0].chunk.path
    got = path.rank(gen, QUERY, 5, exclude_paths={first})
    assert got.hits and all(h.chunk.path != first for h in got.hits)


def test_a_retrieval_blend_orders_the_head_by_its_dense_share_without_a_model(gen, embedder):
    st = RerankerSettings(topn=6)
    base = RankingPath(RetrievalSettings(), st, lambda: embedder)
    fused = base.retrieve(gen, QUERY, 6).hits
    for w in (0.0, 0.5, 1.0):
        got = base.with_reranker(RetrievalBlend(w)).rank(gen, QUERY, 6)
        s = retrieval_scores([h.fused_score for h in fused], [h.dense_score for h in fused], w)
        want = [fused[i].doc_id for i in sorted(range(len(fused)), key=lambda i: -s[i])]
        assert got.reranking_used and [h.doc_id for h in got.hits] == want
