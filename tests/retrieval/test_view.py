"""In-memory views of an index with some chunk texts replaced (what the promotion gate scores bootstrap questions on)."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.backend import EmbeddedIndexBackend
from retrieval.search import search
from retrieval.settings import IndexSettings, RetrievalSettings
from retrieval.view import replaced_view
from training.learning.miners import extract_doc_pair

QUESTION = "Exponential backoff with jitter for retrying failed requests."


def _views(backend, root, embedder):
    backend.build(root, "sample", IndexSettings(), RetrievalSettings(), embedder)
    gen = backend.load_current("sample")
    chunk = next(c for c in gen.chunks if c.symbol == "backoff_delays")
    _, code = extract_doc_pair(chunk.text, chunk.language)
    return gen, chunk, replaced_view(gen, {chunk.doc_id: code, "nowhere.py:1-2": "ignored"}, embedder,
                                     RetrievalSettings())


def _check(gen, chunk, view, embedder):
    rs = RetrievalSettings()
    assert view.n_chunks == len(gen.chunks) and [c.doc_id for c in view.chunks] == [c.doc_id for c in gen.chunks]
    changed = [i for i, (a, b) in enumerate(zip(gen.chunks, view.chunks)) if a.text != b.text]
    assert [gen.chunks[i].doc_id for i in changed] == [chunk.doc_id]
    assert '"""' not in view.chunks[changed[0]].text and view.chunks[changed[0]].symbol == "backoff_delays"
    # the answer no longer quotes the question: BM25 loses the docstring's words, other rows keep their vectors
    lex_live = search(gen, embedder, "jitter", 5, rs, "bm25").hits
    assert lex_live and lex_live[0].chunk.doc_id == chunk.doc_id
    assert not [h for h in search(view, embedder, "jitter", 5, rs, "bm25").hits if h.chunk.doc_id == chunk.doc_id]
    live_vecs = gen.vectors if hasattr(gen, "vectors") else gen.backend.all_vectors("sample")
    keep = [i for i in range(view.n_chunks) if i not in changed]
    np.testing.assert_allclose(view.vectors[keep], live_vecs[keep], atol=1e-6)
    assert not np.allclose(view.vectors[changed[0]], live_vecs[changed[0]])
    assert search(view, embedder, QUESTION, 3, rs, "fused").hits  # searchable like any generation


def test_a_view_replaces_only_the_named_chunks_and_writes_nothing(sample_repo, tmp_path, embedder):
    home = tmp_path / "home"
    backend = EmbeddedIndexBackend(home)
    before = sorted(p.relative_to(home) for p in home.rglob("*")) if home.exists() else []
    gen, chunk, view = _views(backend, sample_repo, embedder)
    after_build = sorted(p.relative_to(home) for p in home.rglob("*"))
    _check(gen, chunk, view, embedder)
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == after_build and after_build != before


@pytest.mark.slow
def test_a_view_of_a_postgres_corpus_reads_its_chunks_and_vectors_once(pg_url, sample_repo, embedder):
    from retrieval.pg_index import PgIndexBackend
    from retrieval.pgdb import open_database

    gen, chunk, view = _views(PgIndexBackend(open_database(pg_url)), sample_repo, embedder)
    _check(gen, chunk, view, embedder)
