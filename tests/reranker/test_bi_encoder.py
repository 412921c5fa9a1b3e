"""A bi-encoder served as a reranker: chosen by its folder, scores are cosines, candidate vectors are cached."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from reranker.model import (
    BiEncoderScorer,
    CrossEncoderScorer,
    RerankerLoadError,
    ScoringCancelled,
    is_bi_encoder_dir,
    load_scorer,
)
from retrieval.models import minilm_path
from tests.reranker.conftest import build_tiny_cross_encoder

TEXTS = ["# http/retry.py :: retry\ndef retry(fn, attempts=3):\n    ...",
         "# util/strings.py :: slugify\ndef slugify(title):\n    return title.lower()",
         "# db/pool.py :: Pool.acquire\ndef acquire(self):\n    return self._free.pop()"]


@pytest.fixture(scope="module")
def bi():
    return load_scorer(minilm_path(), backend="fp32", maxlen=128)


def test_a_sentence_transformers_folder_is_served_as_a_bi_encoder_and_a_classifier_as_a_cross_encoder(tmp_path, bi):
    assert isinstance(bi, BiEncoderScorer) and bi.describe()["kind"] == "bi-encoder"
    tiny = build_tiny_cross_encoder(tmp_path / "tiny")
    (tmp_path / "tiny" / "agro_untrained.json").unlink(missing_ok=True)
    assert not is_bi_encoder_dir(tiny) and isinstance(load_scorer(tiny, backend="fp32", maxlen=64),
                                                      CrossEncoderScorer)
    assert not is_bi_encoder_dir(tmp_path / "missing") and not is_bi_encoder_dir(tmp_path)
    with pytest.raises(RerankerLoadError, match="bi-encoder folder"):
        BiEncoderScorer.load(tiny)


def test_scores_are_the_cosines_of_the_embedders_vectors(bi, embedder):
    got = bi.score("retry a flaky call", TEXTS)
    want = embedder.encode_documents(TEXTS) @ embedder.encode_query("retry a flaky call")
    assert got.shape == (3,) and got.dtype == np.float32
    assert np.allclose(got, want, atol=2e-2) and int(np.argmax(got)) == 0
    assert bi.score("anything", []).shape == (0,)


def test_candidate_vectors_are_embedded_once_however_many_searches_rank_them(bi, monkeypatch):
    bi.score("warm", TEXTS)
    calls = []
    real = bi.embedder.encode_documents
    monkeypatch.setattr(bi.embedder, "encode_documents", lambda texts, progress=None: calls.append(len(texts))
                        or real(texts))
    first = bi.score("slugify a title", TEXTS)
    again = bi.score("slugify a title", TEXTS + ["def new(): pass"])
    assert calls == [1]  # only the new text was embedded
    assert np.allclose(first, again[:3]) and int(np.argmax(first)) == 1


def test_a_cancelled_scoring_stops_with_scoring_cancelled(bi):
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScoringCancelled):
        bi.score("q", [f"def f{i}(): return {i}" for i in range(40)], batch=4, cancel=stop)


def test_warming_embeds_texts_ahead_so_a_search_ranking_them_embeds_nothing(monkeypatch):
    bi = load_scorer(minilm_path(), backend="fp32", maxlen=128)
    seen = []
    assert bi.warm(iter(TEXTS + TEXTS[:1]), batch=2, progress=seen.append) == 3  # the repeat is embedded once
    assert seen == [2, 3] and bi.describe()["cached_vectors"] == 3
    monkeypatch.setattr(bi.embedder, "encode_documents", lambda *a, **k: pytest.fail("a warmed text was re-embedded"))
    assert int(np.argmax(bi.score("slugify a title", TEXTS))) == 1
    assert bi.warm(TEXTS) == 0  # nothing new


def test_warming_takes_no_more_than_the_cache_holds_and_stops_when_cancelled():
    bi = load_scorer(minilm_path(), backend="fp32", maxlen=128)
    bi._cache_size = 2
    assert bi.warm(iter(TEXTS), batch=8) == 2 and bi.describe()["cached_vectors"] == 2
    stop = threading.Event()
    stop.set()
    fresh = load_scorer(minilm_path(), backend="fp32", maxlen=128)
    assert fresh.warm(iter(TEXTS), cancel=stop) == 0 and fresh.describe()["cached_vectors"] == 0
