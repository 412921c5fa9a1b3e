"""Trainer on a tiny locally built cross-encoder (2 layers, hidden 64, MiniLM vocabulary)."""

from __future__ import annotations

import pytest

from reranker.model import UNTRAINED_MARKER, BiEncoderScorer, CrossEncoderScorer, is_bi_encoder_dir, load_scorer
from tests.reranker.conftest import build_tiny_cross_encoder, make_release, point_current
from training.learning.miners import Triplet, split_by_query
from training.settings import TrainingSettings
from training.learning.bases import resolve_base
from training.learning.trainer import TrainingCancelled, TrainingError, budget_rows, load_run, run_dir, train_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny") / "model")


def triplets(n=24):
    return [Triplet(f"how do I parse item {i}", f"def parse_{i}(x):\n    return x[{i}]",
                    f"p{i}.py:1-2", [f"class Other{i}:\n    pass", "x = 1"], [f"o{i}.py:1-2", "z.py:1-1"],
                    "click_feedback", "c") for i in range(n)]


def settings(tiny, **kw):
    kw.setdefault("min_steps", 0)
    kw.setdefault("model_kind", "cross-encoder")
    return TrainingSettings(base_model=str(tiny), batch_size=8, max_length=64, min_triplets=5, **kw)


def test_train_run_writes_only_its_run_folder_with_a_servable_model(tmp_path, tiny):
    models = tmp_path / "models"
    split = split_by_query(triplets(), 0.25, seed=13)
    run = train_run(models, "run-1", split, settings(tiny, epochs=2))
    d = models / "runs" / "run-1"
    assert run["state"] == "succeeded" and load_run(models, "run-1")["state"] == "succeeded"
    assert [e["epoch"] for e in run["epochs"]] == [1.0, 2.0] and run["epochs"][0]["train_loss"] is not None
    assert run["base_model"]["kind"] == "configured" and run["config"]["max_length"] == 64
    assert run["data"]["train_hash"] == split.info["train_data_hash"]
    # the longest training question, in the model's tokens (serving keeps the fused order far past it)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    trained = [t for t in split.train]
    assert run["data"]["query_tokens_max"] == max(len(tok(t.query, add_special_tokens=False)["input_ids"])
                                                  for t in trained) > 0
    assert run["heldout_query_hashes"] == split.info["heldout_query_hashes"]
    assert (d / "data" / "heldout.jsonl").is_file() and not (d / "model" / UNTRAINED_MARKER).exists()
    assert sorted(p.name for p in models.iterdir()) == ["runs"]
    scorer = CrossEncoderScorer.load(d / "model", backend="fp32", maxlen=64)
    assert scorer.score("how do I parse item 1", ["def parse_1(x): return x[1]"]).shape == (1,)


def test_too_few_triplets_says_how_many_and_how_to_get_more(tmp_path, tiny):
    split = split_by_query(triplets(3), 0.1, seed=1)
    with pytest.raises(TrainingError, match=r"Too few training triplets: \d .*agro bootstrap"):
        train_run(tmp_path / "models", "run-x", split, settings(tiny))


def test_cancel_marks_the_run_cancelled(tmp_path, tiny):
    models = tmp_path / "models"
    with pytest.raises(TrainingCancelled):
        train_run(models, "run-c", split_by_query(triplets(), 0.2, 1), settings(tiny), cancelled=lambda: True)
    assert load_run(models, "run-c")["state"] == "cancelled"
    assert not (models / "runs" / "run-c" / "model").exists()


def test_base_is_the_current_release_when_there_is_one(tmp_path, tiny):
    models = tmp_path / "models"
    (models / "releases").mkdir(parents=True)
    make_release(models, "r1", tiny)
    point_current(models, "r1")
    base = resolve_base(models, "ignored", tmp_path)
    assert (base.kind, base.release_id) == ("release", "r1")
    # a bi-encoder run does not start from a cross-encoder release: it starts from the embedding model
    bi = resolve_base(models, None, tmp_path, kind="bi-encoder")
    assert bi.kind == "embedder" and is_bi_encoder_dir(bi.ref)


def test_base_falls_back_to_a_fresh_head_backbone(tmp_path):
    base = resolve_base(tmp_path / "models", None, tmp_path / "work")
    assert base.kind == "backbone" and (tmp_path / "work" / "base" / UNTRAINED_MARKER).exists()


def test_run_ids_cannot_escape_models_runs(tmp_path):
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(TrainingError):
            run_dir(tmp_path, bad)


def test_small_data_gets_more_epochs_up_to_the_ceiling_and_large_data_keeps_its_epochs():
    from training.learning.trainer import planned_epochs

    st = TrainingSettings(epochs=1, min_steps=200, max_epochs=30)
    assert planned_epochs(19, st) == 11  # 19 steps an epoch: 11 epochs reach 209 >= 200 steps
    assert planned_epochs(3, st) == 30  # capped
    assert planned_epochs(500, st) == 1
    assert planned_epochs(19, TrainingSettings(epochs=3, min_steps=0)) == 3
    assert planned_epochs(1, TrainingSettings(epochs=40, min_steps=200, max_epochs=30)) == 40  # never fewer than asked


def test_a_base_that_already_ranks_trains_exactly_its_epochs():
    from training.learning.trainer import planned_epochs

    st = TrainingSettings(epochs=2, min_steps=200, max_epochs=30)
    assert planned_epochs(3, st, "release") == 2 and planned_epochs(3, st, "pretrained") == 2
    assert planned_epochs(3, st, "backbone") == 30 and planned_epochs(3, st, "configured") == 30


def test_a_run_records_the_epochs_it_ran(tmp_path, tiny):
    models = tmp_path / "models"
    run = train_run(models, "run-m", split_by_query(triplets(), 0.25, seed=13), settings(tiny, epochs=1, min_steps=20))
    assert run["config"]["epochs_run"] == len(run["epochs"]) == 3  # 7 steps an epoch, 20 wanted


# ------------------------------------------------------------------------------------------ bi-encoder runs
def _bi_triplets(n=24):
    """Questions whose answers MiniLM does not already rank first: names that do not echo the question."""
    return [Triplet(f"how is invoice batch {i} reconciled", f"def zq_{i}(rows):\n    return fold(rows, {i})",
                    f"z{i}.py:1-2", [f"def reconcile_invoice_batch_{i}_report(x):\n    print(x)"], [f"r{i}.py:1-2"],
                    "click_feedback", "c") for i in range(n)]


def test_a_bi_encoder_run_fine_tunes_the_embedding_model_and_learns_its_pairs(tmp_path):
    models = tmp_path / "models"
    split = split_by_query(_bi_triplets(), 0.25, seed=13)
    ts = TrainingSettings(model_kind="bi-encoder", batch_size=8, max_length=64, min_triplets=5, bi_encoder_epochs=4,
                          bi_encoder_learning_rate=1e-4)
    run = train_run(models, "run-bi", split, ts)
    assert run["state"] == "succeeded" and run["model_kind"] == "bi-encoder"
    assert run["base_model"]["kind"] == "embedder" and run["config"]["loss"] == "mnrl"
    assert len(run["epochs"]) == 4 and run["data"]["trained_pairs"] == 2 * len(split.train)
    model = models / "runs" / "run-bi" / "model"
    assert is_bi_encoder_dir(model) and sorted(p.name for p in models.iterdir()) == ["runs"]
    tuned = load_scorer(model, backend="fp32", maxlen=64)
    base = load_scorer(run["base_model"]["ref"], backend="fp32", maxlen=64)
    assert isinstance(tuned, BiEncoderScorer) and isinstance(base, BiEncoderScorer)

    def margin(scorer):  # positive minus hard negative, averaged over the training questions
        return sum(float(s[0] - s[1]) for s in (scorer.score(t.query, [t.positive_text, t.negative_texts[0]])
                                                for t in split.train)) / len(split.train)

    assert margin(base) < 0 < margin(tuned)


def test_a_bi_encoder_run_refuses_a_cross_encoder_base_and_says_what_to_set(tmp_path, tiny):
    ts = TrainingSettings(model_kind="bi-encoder", base_model=str(tiny), batch_size=8, max_length=64, min_triplets=5)
    with pytest.raises(TrainingError, match="AGRO_TRAINING_MODEL_KIND=cross-encoder"):
        train_run(tmp_path / "models", "run-x", split_by_query(_bi_triplets(), 0.25, seed=13), ts)


def _t(query: str, source: str) -> Triplet:
    return Triplet(query, f"def {query}(): pass", f"d-{query}", ["x = 1"], ["d-neg"], source, "c")


def test_a_run_past_its_step_cap_trains_on_peoples_questions_then_the_newest_commits_then_a_synthetic_sample():
    rows = ([_t(f"doc{i}", "corpus_bootstrap") for i in range(6)] + [_t(f"commit{i}", "git_history") for i in range(6)]
            + [_t("why is this slow", "thumbs_down")])  # history rows come mined newest first
    kept = budget_rows(rows, 5, "recent", seed=1)
    assert [t.query for t in kept] == ["commit0", "commit1", "commit2", "commit3", "why is this slow"]
    more = budget_rows(rows, 9, "recent", seed=1)
    assert sum(t.source == "git_history" for t in more) == 6 and sum(t.source == "corpus_bootstrap" for t in more) == 2
    assert budget_rows(rows, 9, "recent", seed=1) == more  # seeded
    sample = budget_rows(rows, 5, "random", seed=1)
    assert len(sample) == 5 and all(t in rows for t in sample) and sample != kept
    assert budget_rows(rows, 20, "recent", seed=1) == rows
