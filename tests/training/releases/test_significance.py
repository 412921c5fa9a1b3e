"""The gate's paired statistics against naive references, and the gate's decisions on small samples."""

from __future__ import annotations

import itertools

import pytest

from training.releases.promote import gate
from training.releases.significance import bootstrap_mean_ci, min_questions, paired_gain, sign_flip_p


def naive_sign_flip(values):
    obs = abs(sum(values) / len(values))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(values)):
        total += 1
        hits += abs(sum(s * v for s, v in zip(signs, values)) / len(values)) >= obs - 1e-12
    return hits / total


@pytest.mark.parametrize("values", [[0.5, 0.2, -0.1, 0.3], [1.0] * 6, [0.0, 0.0, 0.3, -0.3, 0.1], [0.2, -0.2]])
def test_sign_flip_p_matches_full_enumeration_on_small_samples(values):
    assert sign_flip_p(values) == pytest.approx(naive_sign_flip(values))


def test_sign_flip_p_above_the_exact_limit_is_seeded_and_close_to_enumeration():
    values = [0.3, 0.1, -0.05, 0.2, 0.0, 0.4, -0.1, 0.25, 0.15, 0.05, 0.3, -0.2, 0.1, 0.2, 0.05, 0.1, 0.3, -0.1]
    exact = naive_sign_flip(values)
    approx = sign_flip_p(values, exact_up_to=0, seed=3)
    assert approx == sign_flip_p(values, exact_up_to=0, seed=3)
    assert abs(approx - exact) < 0.01


def test_min_questions_is_where_one_sided_signs_first_reach_the_level():
    n = min_questions(0.95)
    assert n == 6
    assert sign_flip_p([0.1] * n) <= 0.05 < sign_flip_p([0.1] * (n - 1))


def test_bootstrap_interval_is_seeded_and_collapses_on_constant_differences():
    assert bootstrap_mean_ci([0.2, 0.1, 0.4], seed=1) == bootstrap_mean_ci([0.2, 0.1, 0.4], seed=1)
    assert bootstrap_mean_ci([0.05] * 8) == pytest.approx((0.05, 0.05))
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean_ci([])


def test_paired_gain_counts_wins_and_losses_and_rejects_unequal_lengths():
    g = paired_gain([1.0, 0.5, 0.2], [0.5, 0.5, 0.5])
    assert (g.n, g.wins, g.losses) == (3, 1, 1) and g.mean == pytest.approx((0.5 + 0.0 - 0.3) / 3)
    with pytest.raises(ValueError, match="equally long"):
        paired_gain([1.0], [1.0, 0.5])


def rows(mrr, hit1=None):
    return [{"MRR@10": m, "Hit@1": (hit1[i] if hit1 else float(m == 1.0))} for i, m in enumerate(mrr)]


def test_gate_promotes_a_consistent_gain_on_twelve_questions():
    cand = rows([1.0] * 9 + [0.5] * 3)
    fused = rows([0.5] * 9 + [0.5] * 3)
    d = gate({"candidate": cand, "retrieval": fused}, delta=0.02, min_queries=6)
    assert d.promote, d.reasons
    g = d.figures["mrr_gain_vs_retrieval"]
    assert g["ci"][0] > 0 and g["wins"] == 9 and g["losses"] == 0 and g["p_value"] < 0.01


def test_gate_refuses_a_gain_carried_by_one_question():
    cand = rows([1.0] + [0.5] * 11)
    fused = rows([0.0] + [0.5] * 11)
    d = gate({"candidate": cand, "retrieval": fused}, delta=0.02, min_queries=6)
    assert not d.promote
    assert any("not above chance" in r for r in d.reasons), d.reasons


def test_gate_refuses_five_questions_however_large_the_gain():
    d = gate({"candidate": rows([1.0] * 5), "retrieval": rows([0.1] * 5)}, delta=0.02, min_queries=1)
    assert not d.promote and "at least 6" in d.reasons[0]


def test_gate_requires_the_gain_against_every_alternative_and_names_the_best():
    cand = rows([1.0] * 10 + [0.5] * 10)
    fused = rows([0.5] * 20)
    current = rows([1.0] * 10 + [0.5] * 10)  # as good as the candidate
    d = gate({"candidate": cand, "retrieval": fused, "current": current}, delta=0.02, min_queries=6)
    assert not d.promote and d.figures["best_other"] == "current"
    assert any("vs current" in r and "not above chance" in r for r in d.reasons)
