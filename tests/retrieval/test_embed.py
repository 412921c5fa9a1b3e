"""The bi-encoder's query side: long queries are embedded as their first ``query_windows`` windows."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.settings import RetrievalSettings

PARTS = [
    "The client retries a request when the connection pool is exhausted and the server closes the socket. " * 8,
    "Template rendering escapes every variable unless the autoescape extension is switched off for the block. " * 8,
    "Checksums of the uploaded archive are compared before the package index accepts the new release file. " * 8,
]


@pytest.fixture
def emb(embedder):
    before = embedder.query_windows
    yield embedder
    embedder.set_query_windows(before)


def _windows(emb, text):
    ids = emb.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    w = emb.max_tokens - 2
    return [emb.tokenizer.decode(ids[i:i + w]) for i in range(0, len(ids), w)]


def test_a_long_query_is_the_normalised_mean_of_its_first_windows(emb):
    text = " ".join(PARTS)
    pieces = _windows(emb, text)
    assert len(pieces) >= 3
    emb.set_query_windows(2)
    got = emb.encode_query(text)
    first_two = emb.encode_documents(pieces[:2])
    mean = first_two.mean(axis=0)
    assert np.allclose(got, mean / np.linalg.norm(mean), atol=2e-3)
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


def test_text_past_the_last_embedded_window_does_not_change_the_vector(emb):
    emb.set_query_windows(1)
    a = emb.encode_query(" ".join(PARTS), cache=False)
    b = emb.encode_query(" ".join(PARTS[:1] + ["something else entirely, about cooking pasta " * 8]), cache=False)
    assert np.allclose(a, b, atol=1e-6)
    emb.set_query_windows(3)
    c = emb.encode_query(" ".join(PARTS[:1] + ["something else entirely, about cooking pasta " * 8]), cache=False)
    assert not np.allclose(a, c, atol=1e-3)


def test_changing_the_window_count_drops_cached_query_vectors(emb):
    text = " ".join(PARTS)
    emb.set_query_windows(1)
    one = emb.encode_query(text)
    emb.set_query_windows(3)
    assert not np.allclose(one, emb.encode_query(text), atol=1e-3)


def test_the_window_count_comes_from_the_setting_and_must_be_positive(emb):
    with pytest.raises(ValueError, match="at least 1"):
        emb.set_query_windows(0)
    with pytest.raises(ValueError):
        RetrievalSettings(query_windows=0)
    assert RetrievalSettings().query_windows == emb.query_windows


def test_a_short_query_embeds_like_the_same_text_as_a_document(emb):
    for text in ("where is the OAuth token validated", "exponential backoff with jitter", "x"):
        q = emb.encode_query(text, cache=False)
        d = emb.encode_documents([text])[0]
        assert q.dtype == np.float32 and abs(float(np.linalg.norm(q)) - 1.0) < 1e-5
        assert float(q @ d) > 0.9999


def test_warming_every_padded_query_length_leaves_query_vectors_as_they_were(embedder):
    from retrieval.lean import LENGTH_BUCKETS

    query = "how are retries delayed between attempts"
    before = embedder.encode_query(query, cache=False)
    assert embedder.warm_query_lengths() == len([b for b in LENGTH_BUCKETS if b < embedder.max_tokens + 2])
    assert np.allclose(embedder.encode_query(query, cache=False), before, atol=1e-6)
