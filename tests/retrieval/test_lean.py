"""Lean query embedding computes the model's own function (real MiniLM weights), and steps aside where it cannot."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from retrieval.embed import Embedder
from retrieval.lean import LeanEncoder, _why_unsupported, lean_encoder_for, token_ids, with_special_tokens

QUERIES = [
    "where is the OAuth token validated",
    "retry(fn, attempts=3) -> backoff_delays",
    "Content-Type header parsing with charset PARAMS",
    "word " * 400,  # longer than the model's window: truncated like the model truncates it
]


def _model_vector(embedder: Embedder, ids: list[int]) -> np.ndarray:
    """The sentence-transformers pipeline on exactly these token ids (special tokens included)."""
    features = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                "token_type_ids": torch.zeros(1, len(ids), dtype=torch.long)}
    with torch.inference_mode():
        vec = embedder._model(features)["sentence_embedding"][0].float().numpy()
    return vec / np.linalg.norm(vec)


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def model_path_embedder(request, embedder):
    """The same model with queries through its own pipeline, in the lean one's dtype."""
    if request.param == "bf16" and embedder.dtype != "bf16":
        pytest.skip("no native bf16 on this CPU")
    return Embedder(embedder.ref, request.param, embedder.max_tokens, lean_queries=False)


def test_the_default_embedder_embeds_queries_the_lean_way_under_the_same_model_id(embedder):
    assert embedder.query_path == "lean"
    assert Embedder(embedder.ref, embedder.dtype, embedder.max_tokens, lean_queries=False).model_id == embedder.model_id


@pytest.mark.parametrize("text", QUERIES)
def test_a_lean_query_vector_is_the_models_own_vector(model_path_embedder, text):
    lean = Embedder(model_path_embedder.ref, model_path_embedder.dtype, model_path_embedder.max_tokens)
    assert lean.query_path == "lean"
    cos = float(np.dot(lean.encode_query(text, cache=False), model_path_embedder.encode_query(text, cache=False)))
    assert cos > (0.9995 if lean.dtype == "bf16" else 0.99999)


def test_a_long_query_is_the_mean_of_its_token_windows(embedder):
    embedder.set_query_windows(2)
    try:
        text = "alpha beta " * 200  # 400 tokens: two windows of 254
        ids = embedder.tokenizer(text, add_special_tokens=False)["input_ids"]
        w = embedder.max_tokens - 2
        parts = [_model_vector(embedder, with_special_tokens(embedder.tokenizer, ids[i : i + w])) for i in (0, w)]
        want = np.mean(parts, axis=0)
        got = embedder.encode_query(text, cache=False)
        assert float(np.dot(got, want / np.linalg.norm(want))) > 0.999
    finally:
        embedder.set_query_windows(1)


def test_token_ids_carry_the_special_tokens_and_the_models_truncation(embedder):
    ids = token_ids(embedder.tokenizer, "word " * 1000, embedder.max_tokens)
    assert len(ids) == embedder.max_tokens
    assert ids[0] == embedder.tokenizer.cls_token_id and ids[-1] == embedder.tokenizer.sep_token_id


def test_a_sequence_longer_than_the_position_table_is_refused(embedder):
    enc = embedder._lean
    with pytest.raises(ValueError, match="tokens"):
        enc.embed_ids([101] * (enc.max_positions + 1))


def test_a_probe_that_disagrees_keeps_the_models_pipeline(embedder, caplog):
    plain = Embedder(embedder.ref, embedder.dtype, embedder.max_tokens, pack_linears=False, lean_queries=False)
    rng = np.random.default_rng(0)

    def wrong(texts):
        rows = rng.normal(size=(len(texts), plain.dim)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    with caplog.at_level(logging.WARNING, logger="retrieval.lean"):
        assert lean_encoder_for(plain._model, plain.tokenizer, plain.max_tokens, wrong) is None
    assert "disagrees" in caplog.text
    assert isinstance(lean_encoder_for(plain._model, plain.tokenizer, plain.max_tokens, plain._forward), LeanEncoder)


def test_pipelines_it_was_not_written_for_are_named_and_left_alone(embedder):
    plain = Embedder(embedder.ref, "fp32", embedder.max_tokens, lean_queries=False)
    model = plain._model
    assert _why_unsupported(model) is None
    model[1].pooling_mode = "max"
    assert "pooling 'max'" in _why_unsupported(model)
    assert lean_encoder_for(model, plain.tokenizer, plain.max_tokens, plain._forward) is None
    model[1].pooling_mode = "mean"
    model[0].auto_model.config.hidden_act = "relu"
    assert "activation 'relu'" in _why_unsupported(model)
    model[0].auto_model.config.hidden_act = "gelu"


def test_a_window_longer_than_the_models_positions_keeps_its_own_pipeline(embedder):
    plain = Embedder(embedder.ref, "fp32", embedder.max_tokens, lean_queries=False)
    assert lean_encoder_for(plain._model, plain.tokenizer, 10_000, plain._forward) is None


def test_int8_models_keep_their_own_pipeline(embedder):
    assert Embedder(embedder.ref, "int8", embedder.max_tokens).query_path == "model"


def test_padding_to_a_length_bucket_leaves_the_vector_as_it_is_unpadded(embedder):
    from retrieval.lean import padded_length

    enc = embedder._lean
    ids = token_ids(embedder.tokenizer, "the session token is refreshed before the retry loop gives up " * 6, 128)
    for n in (3, 9, 17, 30, 33, 63, 100):
        seq = ids[: n - 1] + ids[-1:]  # n tokens, the separator last
        assert padded_length(n, enc.max_positions) >= n
        padded, exact = enc.embed_ids(seq), enc.embed_ids(seq, pad=False)
        assert float(padded @ exact) > 0.9999, n
    assert [padded_length(n, 512) for n in (1, 8, 9, 33, 129, 600)] == [8, 8, 16, 40, 160, 600]
    assert padded_length(100, 100) == 100  # never past the model's positions
