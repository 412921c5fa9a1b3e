"""Layer-cut students: the cut itself, fresh students from the backbone, and distillation in the training pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reranker.model import (
    UNTRAINED_MARKER,
    CrossEncoderScorer,
    RerankerLoadError,
    create_from_backbone,
    cut_layers,
    model_layers,
)

from .conftest import build_tiny_cross_encoder


def _load_hf(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()


def test_cut_keeps_the_first_layers_so_the_student_computes_the_teachers_first_layer_exactly(tiny_dir):
    import torch

    teacher, student = _load_hf(tiny_dir), _load_hf(tiny_dir)
    assert model_layers(teacher) == 2
    assert cut_layers(student, 1) == 1
    assert model_layers(student) == 1 and student.config.num_hidden_layers == 1
    ids = torch.tensor([[101, 2054, 2003, 1037, 102, 13366, 1042, 102]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        hidden = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        expected = teacher.classifier(teacher.bert.pooler(hidden))
        got = student(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected)


def test_cut_leaves_a_model_with_fewer_layers_alone_and_refuses_zero(tiny_dir):
    model = _load_hf(tiny_dir)
    assert cut_layers(model, 5) == 2 and model.config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="at least 1 layer"):
        cut_layers(model, 0)


def test_a_saved_cut_model_loads_as_a_shallower_scorer(tmp_path, tiny_dir):
    model = _load_hf(tiny_dir)
    cut_layers(model, 1)
    out = build_tiny_cross_encoder(tmp_path / "m")  # tokenizer + files, then overwrite the weights with the cut
    model.save_pretrained(out)
    scorer = CrossEncoderScorer.load(out, backend="fp32", maxlen=64)
    assert scorer.layers == 1 and scorer.describe()["layers"] == 1
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert scorer.score("parse json", ["def parse(x): return json.loads(x)"]).shape == (1,)


@pytest.mark.slow
def test_fresh_student_from_the_backbone_is_cut_and_never_served_untrained(tmp_path):
    d = create_from_backbone(tmp_path / "ce", num_layers=2)
    assert json.loads((d / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((d / UNTRAINED_MARKER).read_text())["num_layers"] == 2
    with pytest.raises(RerankerLoadError, match="untrained head"):
        CrossEncoderScorer.load(d)


def test_teacher_labels_blend_the_teachers_sigmoid_with_the_mined_label(tiny_dir):
    from training.learning.trainer import teacher_labels

    queries = ["parse json", "parse json", "open a file"]
    texts = ["def parse(x): return json.loads(x)", "class A: pass", "def open_file(p): return open(p)"]
    hard = [1.0, 0.0, 1.0]
    logits = CrossEncoderScorer.load(tiny_dir, backend="fp32", maxlen=64).score(queries[0], texts[:2]).tolist()
    logits += CrossEncoderScorer.load(tiny_dir, backend="fp32", maxlen=64).score(queries[2], texts[2:]).tolist()
    soft = 1 / (1 + np.exp(-np.array(logits)))
    only_teacher = teacher_labels(str(tiny_dir), queries, texts, hard, 1.0, 64)
    np.testing.assert_allclose(only_teacher, soft, atol=1e-5)
    half = teacher_labels(str(tiny_dir), queries, texts, hard, 0.5, 64)
    np.testing.assert_allclose(half, 0.5 * soft + 0.5 * np.array(hard), atol=1e-5)


def _triplets(n=24):
    from training.learning.miners import Triplet

    return [Triplet(f"how do I parse item {i}", f"def parse_{i}(x):\n    return x[{i}]",
                    f"p{i}.py:1-2", [f"class Other{i}:\n    pass", "x = 1"], [f"o{i}.py:1-2", "z.py:1-1"],
                    "click_feedback", "c") for i in range(n)]


def test_student_run_cuts_the_base_distils_from_it_and_saves_a_servable_shallower_model(tmp_path, tiny_dir):
    from training.learning.miners import split_by_query
    from training.settings import TrainingSettings
    from training.learning.trainer import train_run

    models = tmp_path / "models"
    st = TrainingSettings(model_kind="cross-encoder", base_model=str(tiny_dir), batch_size=8, max_length=64, min_triplets=5, min_steps=0,
                          student_layers=1, distill_weight=0.7)
    run = train_run(models, "student-1", split_by_query(_triplets(), 0.25, seed=13), st)
    assert run["state"] == "succeeded" and run["config"]["student_layers"] == 1
    student = run["student"]
    assert (student["base_layers"], student["student_layers"], student["distilled"]) == (2, 1, True)
    assert student["teacher"] == str(tiny_dir) and student["weight"] == 0.7
    d = models / "runs" / "student-1" / "model"
    assert not (d / UNTRAINED_MARKER).exists()
    scorer = CrossEncoderScorer.load(d, backend="fp32", maxlen=64)  # what the promotion gate and the server load
    assert scorer.layers == 1
    assert np.all(np.isfinite(scorer.score("how do I parse item 1", ["def parse_1(x): return x[1]", "x = 1"])))


def test_student_without_a_deeper_teacher_trains_on_the_mined_labels(tmp_path, tiny_dir):
    from training.learning.miners import split_by_query
    from training.settings import TrainingSettings
    from training.learning.trainer import train_run

    st = TrainingSettings(model_kind="cross-encoder", base_model=str(tiny_dir), batch_size=8, max_length=64,
                          min_triplets=5, min_steps=0, student_layers=2)
    run = train_run(tmp_path / "models", "s2", split_by_query(_triplets(), 0.25, seed=13), st)
    assert run["student"]["teacher"] is None and run["student"]["distilled"] is False
    assert run["student"]["student_layers"] == 2
