from __future__ import annotations

import shutil

import numpy as np
import pytest

from reranker.model import (
    UNTRAINED_MARKER,
    CrossEncoderScorer,
    RerankerLoadError,
    cpu_has_native_bf16,
    cpu_has_vnni,
    create_from_backbone,
    resolve_backend_name,
)

from .conftest import build_tiny_cross_encoder

AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
CASCADE_CPU = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
PLAIN_AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"


def test_native_bf16_detected_from_cpuinfo_flags():
    assert cpu_has_native_bf16(AMX_CPU)
    assert cpu_has_native_bf16("flags : avx512_bf16")
    assert not cpu_has_native_bf16(CASCADE_CPU)
    assert not cpu_has_native_bf16("")


def test_vnni_detected_from_cpuinfo_flags():
    assert cpu_has_vnni(CASCADE_CPU) and cpu_has_vnni("flags : avx2 avx_vnni")
    assert not cpu_has_vnni(PLAIN_AVX2_CPU) and not cpu_has_vnni("")


def test_auto_backend_is_bf16_with_native_bf16_else_int8_with_vnni_else_fp32():
    assert resolve_backend_name("auto", AMX_CPU) == "bf16"
    assert resolve_backend_name("auto", CASCADE_CPU) == "int8"
    assert resolve_backend_name("auto", PLAIN_AVX2_CPU) == "fp32"
    assert resolve_backend_name("int8", AMX_CPU) == "int8"
    with pytest.raises(ValueError, match="but got 'onnx9'"):
        resolve_backend_name("onnx9")


def test_score_returns_one_float32_logit_per_text(tiny_dir):
    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32")
    out = scorer.score("parse json", ["def parse(x): return json.loads(x)", "class A: pass", "x = 1"], batch=2)
    assert out.dtype == np.float32 and out.shape == (3,)
    assert np.all(np.isfinite(out))
    assert scorer.score("q", []).shape == (0,)
    assert (scorer.backend, scorer.dtype, scorer.device) == ("fp32", "float32", "cpu")
    assert scorer.loaded_at > 0 and scorer.model_id == str(tiny_dir.resolve())


def test_length_batching_gives_the_same_scores_as_one_at_a_time(tiny_dir):
    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32", maxlen=128)
    texts = ["def f():\n" + "    y = 2\n" * n for n in (30, 1, 12, 0, 5, 60, 2)]
    together = scorer.score("where is y set", texts, batch=3)
    alone = np.array([scorer.score("where is y set", [t], batch=1)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_truncation_keeps_the_signature_and_respects_maxlen(tiny_dir):
    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32", maxlen=64, query_max_tokens=8)
    body = "def validate_token(token, audience):\n" + '    """Check the JWT."""\n' + "    value = compute(x)\n" * 2000
    query = " ".join(f"word{i}" for i in range(40))
    (enc,) = scorer.encode(query, [body])
    ids = enc["input_ids"]
    assert len(ids) == 64
    text = scorer.tokenizer.decode(ids)
    assert "def validate _ token ( token, audience )" in text
    sep = scorer.tokenizer.sep_token_id
    assert ids.index(sep) - 1 == 8  # [CLS] + 8 query tokens
    # A text the character pre-cut made too short is re-tokenised whole, so the window is filled.
    spaced = "def spaced():\n" + ("x" + " " * 40 + "\n") * 100
    (enc2,) = scorer.encode("q", [spaced])
    assert len(enc2["input_ids"]) == 64


def test_empty_text_blank_query_and_undecodable_text_do_not_crash(tiny_dir):
    scorer = CrossEncoderScorer.load(tiny_dir, backend="fp32", maxlen=32)
    out = scorer.score("   \n\t", ["", "   ", "bad bytes \udcff\udcfe here", "emoji 🦀 \u202e\x00 zero", "é" * 5000])
    assert out.shape == (5,) and np.all(np.isfinite(out))
    assert np.all(np.isfinite(scorer.score("", ["x"])))


@pytest.mark.parametrize("backend", ["bf16", "int8", "bf16-autocast"])
def test_every_backend_scores_close_to_fp32(tiny_dir, backend):
    texts = [f"def fn_{i}(a, b):\n    return a * {i} + b" for i in range(12)]
    ref = CrossEncoderScorer.load(tiny_dir, backend="fp32").score("multiply a", texts)
    got = CrossEncoderScorer.load(tiny_dir, backend=backend).score("multiply a", texts)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=5e-3)


def test_untrained_marker_is_refused(tmp_path, tiny_dir):
    d = tmp_path / "untrained"
    shutil.copytree(tiny_dir, d)
    (d / UNTRAINED_MARKER).write_text("{}")
    with pytest.raises(RerankerLoadError, match="untrained head"):
        CrossEncoderScorer.load(d)


def test_multi_label_model_is_refused(tmp_path):
    d = build_tiny_cross_encoder(tmp_path / "three", num_labels=3)
    with pytest.raises(RerankerLoadError, match="expects a cross-encoder with 1 output label, but got 3"):
        CrossEncoderScorer.load(d)


def test_pickle_only_directory_is_refused(tmp_path, tiny_dir):
    import torch
    from safetensors.torch import load_file

    d = tmp_path / "binonly"
    shutil.copytree(tiny_dir, d)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(RerankerLoadError, match="expects safetensors weights.*pytorch_model.bin"):
        CrossEncoderScorer.load(d)


def test_nonexistent_path_is_a_clear_error(tmp_path):
    with pytest.raises(RerankerLoadError, match="does not exist"):
        CrossEncoderScorer.load(tmp_path / "nope")
    with pytest.raises(RerankerLoadError, match="does not exist"):
        CrossEncoderScorer.load("./no/such/model")


def test_a_non_classifier_directory_is_refused():
    from retrieval.models import minilm_path

    with pytest.raises(RerankerLoadError, match="expects a sequence classifier|expects a cross-encoder"):
        CrossEncoderScorer.load(minilm_path())


@pytest.mark.slow
def test_minilm_cross_encoder_from_backbone_is_refused_until_trained_then_scores(tmp_path):
    d = create_from_backbone(tmp_path / "ce")
    assert (d / UNTRAINED_MARKER).exists() and (d / "model.safetensors").exists()
    with pytest.raises(RerankerLoadError, match="untrained head"):
        CrossEncoderScorer.load(d)
    (d / UNTRAINED_MARKER).unlink()  # what training does when it saves a trained model
    texts = [f"def handler_{i}(request):\n    '''Handle {w} requests.'''\n    return {i}" for i, w in
             enumerate(["login", "logout", "upload", "delete", "search", "refresh", "export", "import"] * 3)]
    fp32 = CrossEncoderScorer.load(d, backend="fp32", maxlen=128)
    ref = fp32.score("upload a file", texts, batch=8)
    assert ref.shape == (24,) and np.all(np.isfinite(ref))
    assert fp32.n_params() > 20_000_000
    bf16 = CrossEncoderScorer.load(d, backend="bf16", maxlen=128).score("upload a file", texts, batch=8)
    assert np.corrcoef(ref, bf16)[0, 1] > 0.9


def test_int8_quantises_the_encoder_but_keeps_the_head_and_pooler_in_fp32(tiny_dir):
    import torch

    scorer = CrossEncoderScorer.load(tiny_dir, backend="int8")
    model = scorer.model
    assert type(model.classifier) is torch.nn.Linear and type(model.bert.pooler.dense) is torch.nn.Linear
    query = model.bert.encoder.layer[0].attention.self.query
    assert type(query) is not torch.nn.Linear and "quantized" in type(query).__module__
