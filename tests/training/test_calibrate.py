"""The calibrated blend weight: which questions it is chosen on, and how a tie is broken."""

from __future__ import annotations

from training.calibrate import calibration_split, pick_alpha
from training.miners import Triplet, query_key, split_by_query


def triplets(n):
    return [Triplet(f"question number {i}", f"# p{i}.py\ncode {i}", f"p{i}.py:1-2", [f"# o{i}.py\nother"],
                    [f"o{i}.py:1-2"], "click_feedback", "c") for i in range(n)]


def keys(ts):
    return {query_key(t.corpus, t.query) for t in ts}


def test_calibration_questions_are_neither_trained_on_nor_held_out():
    split = split_by_query(triplets(200), 0.2, seed=13)
    fit, cal = calibration_split(split, 0.2, seed=13, min_queries=10)
    assert cal and keys(cal).isdisjoint(keys(fit.train)) and keys(cal).isdisjoint(keys(split.heldout))
    assert keys(cal) | keys(fit.train) == keys(split.train)
    assert fit.heldout == split.heldout
    assert fit.info["calibration"]["queries"] == len(keys(cal))
    again, cal2 = calibration_split(split, 0.2, seed=13, min_queries=10)  # seeded: the same slice every run
    assert keys(cal2) == keys(cal)


def test_too_few_questions_keep_every_training_triplet_and_say_why():
    split = split_by_query(triplets(20), 0.2, seed=13)
    fit, cal = calibration_split(split, 0.2, seed=13, min_queries=10)
    assert cal == [] and fit.train == split.train
    assert "need at least 10" in fit.info["calibration"]["reason"]


def test_the_best_alpha_wins_and_a_tie_goes_to_the_configured_one():
    assert pick_alpha({0.1: 0.40, 0.3: 0.45, 0.7: 0.41}, 0.7) == 0.3
    assert pick_alpha({0.1: 0.5, 0.5: 0.5, 0.9: 0.5}, 0.7) == 0.5
    assert pick_alpha({0.2: 0.5, 0.6: 0.5}, 0.4) == 0.2  # equally close: the smaller weight


def test_a_candidate_or_release_is_evaluated_with_its_own_blend(tmp_path):
    import json

    from training.evaluate import _model_manifest

    run = tmp_path / "runs" / "r1"
    (run / "model").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "r1", "blend": {"alpha": 0.2}}))
    assert _model_manifest(run / "model")["blend"] == {"alpha": 0.2}
    rel = tmp_path / "releases" / "rel-1"
    rel.mkdir(parents=True)
    (rel / "manifest.json").write_text(json.dumps({"id": "rel-1", "blend": {"alpha": 0.4}}))
    assert _model_manifest(rel)["blend"] == {"alpha": 0.4}
    other = tmp_path / "somewhere"
    other.mkdir()
    assert _model_manifest(other) is None
