import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from retrieval.lexical import BM25Index

DOCS = [
    "validate oauth token signature expiry".split(),
    "connection pool acquire release database".split(),
    "start http server listen port routes".split(),
    "token bucket rate limiting per user".split(),
    "exponential backoff retry jitter requests".split(),
    "oauth client secret refresh token".split(),
    "database migration schema version".split(),
]


@pytest.mark.parametrize(
    "query",
    [["oauth", "token"], ["database"], ["token", "token", "refresh"], ["nothing", "matches"], ["server", "port", "user"]],
)
def test_okapi_scores_match_rank_bm25(query):
    ours = BM25Index.from_token_lists(DOCS, k1=1.5, b=0.75, idf="okapi")
    ref = BM25Okapi(DOCS, k1=1.5, b=0.75)
    np.testing.assert_allclose(ours.scores(query), ref.get_scores(query), rtol=1e-5, atol=1e-6)


def test_okapi_matches_rank_bm25_when_a_term_is_in_most_documents():
    docs = [["common", "a1"], ["common", "b2"], ["common", "c3"], ["rare", "common"]]
    ours = BM25Index.from_token_lists(docs, k1=1.2, b=0.75, idf="okapi")
    ref = BM25Okapi(docs, k1=1.2, b=0.75)
    np.testing.assert_allclose(ours.scores(["common", "rare"]), ref.get_scores(["common", "rare"]), rtol=1e-5)


def test_lucene_idf_is_never_negative_and_ranks_rare_terms_higher():
    docs = [["common", "x"], ["common", "y"], ["common", "rare"]]
    idx = BM25Index.from_token_lists(docs)
    assert (idx.idf[idx.term_ids(["common"])] > 0).all()
    assert idx.idf_of("rare") > idx.idf_of("common")
    assert int(np.argmax(idx.scores(["rare"]))) == 2


def test_restack_gives_the_same_scores_as_building_from_scratch():
    old = BM25Index.from_token_lists(DOCS[:5])
    new_docs = [["brand", "new", "oauth"], DOCS[5], DOCS[6]]
    # keep old rows 0, 2, 4 and add the three new documents
    order = np.array([0, 2, 4, 5, 6, 7])
    restacked = BM25Index.restack(old, new_docs, order)
    scratch = BM25Index.from_token_lists([DOCS[0], DOCS[2], DOCS[4]] + new_docs)
    for q in (["oauth", "token"], ["brand"], ["retry", "server"]):
        np.testing.assert_allclose(restacked.scores(q), scratch.scores(q), rtol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    idx = BM25Index.from_token_lists(DOCS, k1=0.9, b=0.4)
    idx.save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    assert loaded.params() == idx.params()
    np.testing.assert_allclose(loaded.scores(["oauth", "pool"]), idx.scores(["oauth", "pool"]))


def test_empty_query_and_unknown_terms_score_zero():
    idx = BM25Index.from_token_lists(DOCS)
    assert not idx.scores([]).any()
    assert not idx.scores(["zzz"]).any()
