import random

import numpy as np
import pytest

from retrieval.search import glob_to_regex, rrf, top_k_indices


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
