import random

import numpy as np
import pytest

from retrieval.search import dense_top_k, glob_to_regex, rrf, top_k_indices


def naive_rrf(rankings, k=60):
    docs = {d for r in rankings for d in r}
    scores = {}
    for d in docs:
        s = 0.0
        for r in rankings:
            if d in r:
                s += 1.0 / (k + r.index(d) + 1)
        scores[d] = s
    return scores


def test_rrf_matches_a_naive_reference_on_random_rankings():
    rng = random.Random(7)
    for _ in range(50):
        a = rng.sample(range(40), 20)
        b = rng.sample(range(40), 15)
        fused = rrf([a, b], k=60)
        ref = naive_rrf([a, b], k=60)
        assert {d for d, _ in fused} == set(ref)
        for d, s in fused:
            assert s == pytest.approx(ref[d])
        scores = [s for _, s in fused]
        assert scores == sorted(scores, reverse=True)


def test_rrf_hand_computed_example():
    fused = dict(rrf([[1, 2, 3], [3, 1]], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)


def test_weighted_rrf_scales_each_lists_votes_by_its_weight():
    fused = dict(rrf([[1, 2, 3], [3, 1]], k=60, weights=[1.0, 0.25]))
    assert fused[1] == pytest.approx(1 / 61 + 0.25 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 0.25 / 61)
    assert [d for d, _ in rrf([[1, 2], [2, 1]], k=60, weights=[1.0, 0.5])] == [1, 2]  # the heavier list wins a tie
    assert rrf([[1, 2], [2, 1]], k=60, weights=[1.0, 1.0]) == rrf([[1, 2], [2, 1]], k=60)


class _Coverage:
    def __init__(self, c):
        self.c = c

    def query_coverage(self, query):
        return self.c


def test_dense_fusion_weight_is_the_querys_embedded_share_for_long_queries_and_one_otherwise():
    from retrieval.search import dense_fusion_weight
    from retrieval.settings import RetrievalSettings

    rs = RetrievalSettings(dense_fusion="coverage")
    assert dense_fusion_weight(_Coverage(1.0), "short", rs) == 1.0
    assert dense_fusion_weight(_Coverage(0.25), "long", rs) == pytest.approx(0.25)
    assert dense_fusion_weight(_Coverage(0.25), "long", RetrievalSettings(dense_fusion="coverage", dense_fusion_exponent=0.5)) == \
        pytest.approx(0.5)
    assert dense_fusion_weight(_Coverage(0.25), "long", RetrievalSettings(dense_fusion="equal")) == 1.0
    assert dense_fusion_weight(object(), "q", rs) == 1.0  # an embedder that cannot tell keeps plain RRF


def test_query_coverage_counts_the_tokens_inside_the_embedded_windows(embedder):
    window = embedder.max_tokens - 2
    assert embedder.query_coverage("retry a flaky call") == 1.0
    long = "word " * (window * 4)
    n = len(embedder.tokenizer(long, add_special_tokens=False)["input_ids"])
    assert embedder.query_coverage(long) == pytest.approx(window * embedder.query_windows / n)
    assert embedder.query_coverage("") == 1.0


def test_a_long_query_gives_the_dense_side_less_say_in_the_fusion(tmp_path, sample_repo, embedder):
    from retrieval.backend import EmbeddedIndexBackend
    from retrieval.search import search
    from retrieval.settings import IndexSettings, RetrievalSettings

    be = EmbeddedIndexBackend(tmp_path / "home")
    be.build(sample_repo, "sample", IndexSettings(), RetrievalSettings(), embedder)
    gen = be.load_current("sample")
    long = " ".join(["where is the OAuth token validated"] * 60)
    short = search(gen, embedder, "where is the OAuth token validated", 5, RetrievalSettings(), "fused")
    got = search(gen, embedder, long, 20, RetrievalSettings(dense_fusion="coverage"), "fused")
    plain = search(gen, embedder, long, 20, RetrievalSettings(dense_fusion="equal"), "fused")
    assert short.dense_weight == 1.0 and plain.dense_weight == 1.0
    w = embedder.query_coverage(long)
    assert got.dense_weight == pytest.approx(w) and 0 < w < 0.5
    for h in got.hits:
        want = (1 / (60 + h.bm25_rank) if h.bm25_rank else 0) + (w / (60 + h.dense_rank) if h.dense_rank else 0)
        assert h.fused_score == pytest.approx(want)


def test_top_k_indices_orders_by_score_then_index_and_respects_mask():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.0])
    assert top_k_indices(scores, 3).tolist() == [1, 3, 2]
    mask = np.array([True, False, True, False, True])
    assert top_k_indices(scores, 2, mask).tolist() == [2, 0]
    assert top_k_indices(scores, 0).tolist() == []


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        ("*.py", "a/b/c.py", True),
        ("*.py", "a/b/c.js", False),
        ("src/**/*.py", "src/x/y/z.py", True),
        ("src/**/*.py", "src/z.py", True),
        ("src/*.py", "src/x/z.py", False),
        ("auth", "auth/oauth.py", True),
        ("auth/", "auth/oauth.py", True),
        ("auth", "myauth/oauth.py", False),
        ("./web/*.js", "web/server.js", True),
        ("test_?.py", "t/test_a.py", True),
    ],
)
def test_glob_to_regex(pattern, path, expected):
    assert bool(glob_to_regex(pattern).match(path)) is expected


def _generation(vectors):
    from pathlib import Path

    from retrieval.index import IndexGeneration

    n = len(vectors)
    return IndexGeneration(corpus="c", generation_id="g", path=Path("."), manifest={}, chunks=[None] * n,
                           vectors=vectors, lexical=None, languages=np.array([None] * n), paths=np.array([None] * n))


@pytest.mark.parametrize("n", [10, 100])
def test_the_float16_screen_returns_the_exact_float32_top_k_and_scores(n):
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((5000, 384)).astype(np.float32)
    vecs[4000:] = vecs[:1000] + 1e-3 * rng.standard_normal((1000, 384)).astype(np.float32)  # near-ties
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    gen = _generation(vecs)
    mask = rng.random(5000) < 0.3
    for q in rng.standard_normal((20, 384)).astype(np.float32):
        q /= np.linalg.norm(q)
        exact = vecs @ q
        for m in (None, mask):
            order, scores = dense_top_k(gen, q, n, m)
            assert order.tolist() == top_k_indices(exact, n, m).tolist()
            assert all(scores[int(d)] == pytest.approx(float(exact[d]), abs=1e-6) for d in order)
        other = int(np.argmin(exact))  # a chunk the screen dropped: its score is computed exactly on request
        assert scores[other] == pytest.approx(float(exact[other]), abs=1e-6)


@pytest.mark.parametrize("pattern", ["a[b-a]c", "", "   "])
def test_an_invalid_path_glob_is_refused_with_an_example_of_a_valid_one(pattern):
    from retrieval.globs import InvalidGlobError

    with pytest.raises(InvalidGlobError, match="path_glob expects a glob such as 'src/"):
        glob_to_regex(pattern)


def test_path_glob_follows_gitignore_rules_in_memory_and_in_postgres_form():
    import re

    from retrieval.globs import path_glob_pg

    cases = [("docs/", "a/docs/x.md", True), ("a/*/c.py", "a/c.py", False), ("!x.py", "!x.py", True),
             ("#notes", "#notes", True), ("/auth", "sub/auth/x.py", False)]
    for pattern, path, expected in cases:
        assert bool(glob_to_regex(pattern).match(path)) is expected, pattern
        assert bool(re.match(path_glob_pg(pattern), path)) is expected, pattern
