"""Shipped chunk vectors: written atomically with their checksum and model, refused when they do not check out."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from reranker.model import BiEncoderScorer, load_scorer
from reranker.vectors import (
    VECTORS_FILE,
    VectorsError,
    embed_texts,
    manifest_entry,
    persist_delta,
    preload,
    read_vectors,
    weights_sha256,
    write_vectors,
)
from retrieval.models import minilm_path

TEXTS = ["# http/retry.py :: retry\ndef retry(fn, attempts=3):\n    ...",
         "# util/strings.py :: slugify\ndef slugify(title):\n    return title.lower()",
         "# db/pool.py :: Pool.acquire\ndef acquire(self):\n    return self._free.pop()"]


def clone(src, dest):
    """A copy of a release folder whose weights are hard links (fast); the vectors files are real copies."""
    shutil.copytree(src, dest, copy_function=os.link, ignore=shutil.ignore_patterns("agro_vectors*"))
    for f in src.glob("agro_vectors*"):
        shutil.copy2(f, dest / f.name)
    return dest


@pytest.fixture(scope="module")
def loaded():
    return load_scorer(minilm_path(), backend="fp32", maxlen=128)


def fresh(loaded, maxlen=128):
    """A scorer of the same model with an empty vector cache (sharing the loaded embedder: no second load)."""
    return BiEncoderScorer(loaded.embedder, model_id="bi1", release_id="bi1", backend="fp32", maxlen=maxlen)


@pytest.fixture(scope="module")
def release(tmp_path_factory, loaded):
    """A bi-encoder release folder (MiniLM's weights) with the vectors of TEXTS shipped in it."""
    d = tmp_path_factory.mktemp("rel") / "bi1"
    shutil.copytree(minilm_path(), d)
    scorer = fresh(loaded)
    keys, vecs = embed_texts(scorer, TEXTS + TEXTS[:1], cap=100)
    meta = write_vectors(d / VECTORS_FILE, keys, vecs, weights=weights_sha256(d), maxlen=128, backend="fp32",
                         model_id="run-1")
    return d, {"id": "bi1", "vectors": manifest_entry(meta)}


def test_embedding_for_a_release_reuses_the_vectors_the_scorer_already_holds_and_dedupes(loaded):
    scorer = fresh(loaded)
    scorer.score("retry", TEXTS[:2])  # what the gate's evaluation ranked
    assert scorer.embedded == 2
    keys, vecs = embed_texts(scorer, TEXTS + TEXTS, cap=100)
    assert scorer.embedded == 3 and len(keys) == 3 and vecs.shape == (3, 384)
    assert len(embed_texts(scorer, TEXTS, cap=2)[0]) == 2


def test_a_loaded_release_ranks_from_its_shipped_vectors_without_embedding_a_chunk(release, loaded):
    d, manifest = release
    scorer = fresh(loaded)
    state = preload(scorer, d, manifest)
    assert state["shipped"] == 3 and state["refused"] == [] and scorer.shipped["shipped"] == 3
    got = scorer.score("slugify a title", TEXTS)
    assert scorer.embedded == 0
    want = fresh(loaded).score("slugify a title", TEXTS)
    assert np.allclose(got, want, atol=2e-3) and list(np.argsort(got)) == list(np.argsort(want))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "other_model", "other_window"])
def test_a_damaged_or_mismatched_vectors_file_is_refused_and_the_release_embeds_on_demand(
        release, loaded, tmp_path, caplog, damage):
    src, manifest = release
    d = tmp_path / "bi1"
    clone(src, d)
    f = d / VECTORS_FILE
    raw = f.read_bytes()
    maxlen = 128
    if damage == "truncated":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # a flipped bit inside the vectors: the zip still reads, the checksum does not match
        k, v, meta = read_vectors(f, {})
        v[1, 7] += 0.25
        np.savez(f, keys=np.frombuffer(b"".join(bytes.fromhex(x) for x in k), dtype=np.uint8).reshape(3, 16),
                 vectors=v.astype(meta["dtype"]),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    elif damage == "other_model":
        manifest = dict(manifest)
        k, v, _ = read_vectors(f, {})
        write_vectors(f, k, v, weights="0" * 64, maxlen=128, backend="fp32", model_id="elsewhere")
        manifest["vectors"] = manifest_entry(read_vectors(f, {})[2])
    else:
        maxlen = 64
    scorer = fresh(loaded, maxlen)
    with caplog.at_level(logging.WARNING, logger="reranker.vectors"):
        state = preload(scorer, d, manifest)
    assert state["shipped"] == 0 and state["refused"]
    assert any("shipped vectors refused" in r.getMessage() for r in caplog.records)
    got = scorer.score("retry a flaky call", TEXTS)
    assert scorer.embedded == 3  # embedded on demand: never a score from a wrong vector
    assert np.allclose(got, fresh(loaded).score("retry a flaky call", TEXTS))


def test_refreshed_vectors_are_kept_outside_the_release_and_loaded_with_the_shipped_ones(release, loaded, tmp_path):
    src, manifest = release
    d = tmp_path / "bi1"
    clone(src, d)
    scorer = fresh(loaded)
    before = sorted(p.name for p in d.iterdir())  # the release folder is never written to
    shipped = preload(scorer, d, manifest)["keys"]
    new = "# util/strings.py :: kebab\ndef kebab(title):\n    return title.replace(' ', '-')"
    assert scorer.warm([*TEXTS, new]) == 1
    delta = tmp_path / "models" / "vectors" / "bi1.delta.npz"
    assert persist_delta(scorer, d, delta, [*TEXTS, new], shipped) == 1
    k, _, meta = read_vectors(delta, {"weights_sha256": weights_sha256(d)})
    assert k == [scorer.key(new)] and meta["count"] == 1
    again = fresh(loaded)
    assert preload(again, d, manifest, delta)["delta"] == 1 and sorted(p.name for p in d.iterdir()) == before
    assert again.warm([*TEXTS, new]) == 0 and again.embedded == 0


def test_a_cross_encoder_has_no_vectors_to_load(tmp_path):
    from tests.reranker.conftest import build_tiny_cross_encoder

    d = build_tiny_cross_encoder(tmp_path / "ce")
    (d / "agro_untrained.json").unlink(missing_ok=True)
    assert preload(load_scorer(d, backend="fp32", maxlen=64), d, {"id": "ce"}) is None


def test_reading_a_missing_or_non_vectors_file_raises_vectors_error(tmp_path):
    with pytest.raises(VectorsError, match="missing"):
        read_vectors(tmp_path / VECTORS_FILE, {})
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(VectorsError, match="unreadable"):
        read_vectors(tmp_path / "x.npz", {})
