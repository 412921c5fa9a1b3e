"""The PostgreSQL index backend against a real server: parity with the embedded ranking, refresh, filters,
atomic publish, one writer per corpus, retry after a lost connection."""

from __future__ import annotations

import textwrap
import time

import numpy as np
import psycopg
import pytest

from retrieval.backend import EmbeddedIndexBackend
from retrieval.index import IndexLockedError, NoIndexError
from retrieval.pg_index import PgIndexBackend, pg_regex
from retrieval.pgdb import SchemaVersionError, open_database
from retrieval.search import glob_to_regex, search
from retrieval.settings import IndexSettings, RetrievalSettings
from tests.conftest import write_repo

QUERIES = [
    "where is the OAuth token validated",
    "exponential backoff with jitter",
    "connection pool exhausted",
    "start the HTTP server",
    "rate limiting token bucket",
    "verify_signature",
]


@pytest.fixture
def pg(pg_url):
    return PgIndexBackend(open_database(pg_url))


def _build(backend, root, embedder, corpus="sample", **kw):
    return backend.build(root, corpus, IndexSettings(), RetrievalSettings(), embedder, **kw)


def test_pg_ranking_matches_embedded_for_every_mode(pg, sample_repo, tmp_path, embedder):
    emb = EmbeddedIndexBackend(tmp_path / "home")
    _build(emb, sample_repo, embedder)
    _build(pg, sample_repo, embedder)
    ge, gp = emb.load_current("sample"), pg.load_current("sample")
    assert gp.n_chunks == ge.n_chunks and gp.files.keys() == ge.files.keys()
    rs = RetrievalSettings()
    for q in QUERIES:
        for mode in ("bm25", "dense", "fused"):
            a = search(ge, embedder, q, 5, rs, mode)
            b = search(gp, embedder, q, 5, rs, mode)
            assert [h.chunk.doc_id for h in b.hits] == [h.chunk.doc_id for h in a.hits], (q, mode)
            assert np.allclose([h.score for h in b.hits], [h.score for h in a.hits], rtol=1e-4, atol=1e-5), (q, mode)


def test_pg_fuses_a_query_longer_than_the_embedding_window_with_the_same_dense_weight_as_embedded(
        pg, sample_repo, tmp_path, embedder):
    emb = EmbeddedIndexBackend(tmp_path / "home")
    _build(emb, sample_repo, embedder)
    _build(pg, sample_repo, embedder)
    rs = RetrievalSettings(dense_fusion="coverage")
    q = " ".join(["the OAuth token is validated before the pool hands out a connection"] * 30)  # ~400 tokens
    a = search(emb.load_current("sample"), embedder, q, 8, rs, "fused")
    b = search(pg.load_current("sample"), embedder, q, 8, rs, "fused")
    assert 0 < a.dense_weight < 0.5 and b.dense_weight == pytest.approx(a.dense_weight)
    assert [h.chunk.doc_id for h in b.hits] == [h.chunk.doc_id for h in a.hits]
    assert np.allclose([h.score for h in b.hits], [h.score for h in a.hits], rtol=1e-4, atol=1e-5)


def test_pg_bm25_scores_equal_embedded_for_long_queries_keeping_rarest_terms(pg, sample_repo, tmp_path, embedder):
    emb = EmbeddedIndexBackend(tmp_path / "home")
    _build(emb, sample_repo, embedder)
    _build(pg, sample_repo, embedder)
    rs = RetrievalSettings(max_query_terms=4)
    q = "the token is expired so validate_token raises TokenError, and the pool of connections is exhausted too"
    a = search(emb.load_current("sample"), embedder, q, 10, rs, "bm25")
    b = search(pg.load_current("sample"), embedder, q, 10, rs, "bm25")
    assert [h.chunk.doc_id for h in b.hits] == [h.chunk.doc_id for h in a.hits]
    assert np.allclose([h.bm25_score for h in b.hits], [h.bm25_score for h in a.hits], rtol=1e-4)
    assert len(b.query_terms) == 4


def test_pg_refresh_replaces_changed_and_deleted_files_and_keeps_document_frequencies_exact(pg, sample_repo, embedder):
    first = _build(pg, sample_repo, embedder)
    (sample_repo / "utils" / "retry.py").write_text("def circuit_breaker_trip(threshold):\n    return threshold > 3\n")
    (sample_repo / "db" / "pool.py").unlink()
    (sample_repo / "new.py").write_text("def quaternion_slerp(a, b, t):\n    return a\n")
    second = _build(pg, sample_repo, embedder)
    assert (second.added, second.changed, second.deleted) == (1, 1, 1)
    assert second.generation != first.generation
    gen = pg.load_current("sample")
    assert gen.manifest["parent"] == first.generation
    paths = {c.path for c in gen.chunks}
    assert "db/pool.py" not in paths and "new.py" in paths
    hits = search(gen, embedder, "quaternion_slerp", 3, RetrievalSettings(), "bm25").hits
    assert hits[0].chunk.path == "new.py"
    assert not search(gen, embedder, "ConnectionPool exhausted", 5, RetrievalSettings(), "bm25").hits
    with psycopg.connect(pg.db.url) as conn:
        bad = conn.execute(
            """SELECT count(*) FROM (SELECT term, count(*) AS n FROM agro_postings WHERE corpus = 'sample' GROUP BY term) p
               FULL JOIN (SELECT term, df FROM agro_terms WHERE corpus = 'sample') t USING (term)
               WHERE p.n IS DISTINCT FROM t.df"""
        ).fetchone()[0]
        n_docs, total = conn.execute("SELECT n_docs, total_len FROM agro_corpora WHERE corpus = 'sample'").fetchone()
        real = conn.execute("SELECT count(*), sum(doc_len) FROM agro_chunks WHERE corpus = 'sample'").fetchone()
    assert bad == 0
    assert (n_docs, total) == tuple(real)
    third = _build(pg, sample_repo, embedder)
    assert third.published is False and third.generation == second.generation


def test_pg_refresh_reuses_embeddings_of_unchanged_chunk_text(pg, sample_repo, embedder):
    _build(pg, sample_repo, embedder)
    text = (sample_repo / "auth" / "oauth.py").read_text()
    (sample_repo / "auth" / "copy_of_oauth.py").write_text(text)
    s = _build(pg, sample_repo, embedder)
    assert s.added == 1 and s.embedded == 0


def test_a_full_build_makes_the_hnsw_graph_with_the_configured_parameters_and_a_refresh_keeps_it(
        pg, sample_repo, embedder):
    rs = RetrievalSettings(hnsw_m=8, hnsw_ef_construction=40)
    pg.build(sample_repo, "sample", IndexSettings(), rs, embedder)

    def hnsw_defs(conn):
        return [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'agro_chunks_%%' AND indexdef LIKE '%%hnsw%%'")]

    defs = pg.db.read(hnsw_defs)
    assert len(defs) == 1 and "m='8'" in defs[0] and "ef_construction='40'" in defs[0]
    assert pg.load_current("sample").manifest["hnsw"] == {"m": 8, "ef_construction": 40}
    (sample_repo / "auth" / "new_module.py").write_text("def fresh():\n    return 1\n")
    pg.build(sample_repo, "sample", IndexSettings(), RetrievalSettings(), embedder)  # incremental: same graph
    assert pg.db.read(hnsw_defs) == defs
    assert pg.load_current("sample").manifest["hnsw"] == {"m": 8, "ef_construction": 40}


def test_pg_filters_fill_k_even_when_the_filter_is_selective(pg, tmp_path, embedder):
    files = {f"pkg/mod{i:03d}.py": f'def handler_{i}(request):\n    """Handle request {i}."""\n    return {i}\n' for i in range(300)}
    files.update({f"web/page{i}.js": f"function render{i}(x) {{ return x + {i}; }}\n" for i in range(12)})
    root = write_repo(tmp_path / "big", files)
    _build(pg, root, embedder, corpus="big")
    gen = pg.load_current("big")
    rs = RetrievalSettings()
    for kwargs in ({"language": "javascript"}, {"path_glob": "web/**"}, {"path_glob": "*.js"}):
        res = search(gen, embedder, "handle the request", 10, rs, "dense", **kwargs)
        assert len(res.hits) == 10, kwargs
        assert all(h.chunk.path.startswith("web/") for h in res.hits)
        fused = search(gen, embedder, "render page", 10, rs, "fused", **kwargs)
        assert len(fused.hits) == 10 and all(h.chunk.language == "javascript" for h in fused.hits)


def test_pg_regex_matches_like_the_embedded_glob(pg_url):
    paths = ["a/b/c.py", "c.py", "src/x/y.js", "docs/README.md", "retrieval/index.py"]
    globs = ["*.py", "src/**/*.js", "docs/", "retrieval", "a/*/c.py", "**/c.py", "?.py", "[cd]*.py"]
    with psycopg.connect(pg_url) as conn:
        for g in globs:
            for p in paths:
                got = conn.execute("SELECT %s ~ %s", (p, pg_regex(g))).fetchone()[0]
                assert got == bool(glob_to_regex(g).match(p)), (g, p)


def test_second_writer_of_a_corpus_is_refused_while_the_first_holds_the_lock(pg, sample_repo, embedder):
    with psycopg.connect(pg.db.url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('agro-index:sample'))")
        other_pid = other.info.backend_pid
        with pytest.raises(IndexLockedError, match="being indexed by another process"):
            _build(pg, sample_repo, embedder)
    # The server ends the other session's backend (and its locks) just after the client hangs up: wait for that.
    with psycopg.connect(pg.db.url, autocommit=True) as watcher:
        for _ in range(1000):
            if not watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (other_pid,)).fetchone():
                break
            time.sleep(0.01)
    assert _build(pg, sample_repo, embedder).published  # the lock died with the other session


def test_failed_publish_leaves_the_previous_generation_whole(pg, sample_repo, embedder, monkeypatch):
    first = _build(pg, sample_repo, embedder)
    before = pg.load_current("sample")
    (sample_repo / "auth" / "oauth.py").write_text("def replaced():\n    pass\n")
    import retrieval.pg_index as mod

    real = mod.document_tokens
    calls = {"n": 0}

    def boom(chunk):
        calls["n"] += 1
        if calls["n"] > 3:  # after the new chunks were tokenised: inside the publish transaction
            raise RuntimeError("injected failure mid-publish")
        return real(chunk)

    monkeypatch.setattr(mod, "document_tokens", boom)
    with pytest.raises(RuntimeError, match="injected"):
        _build(pg, sample_repo, embedder)
    monkeypatch.setattr(mod, "document_tokens", real)
    after = pg.load_current("sample")
    assert after.generation_id == first.generation
    assert [c.doc_id for c in after.chunks] == [c.doc_id for c in before.chunks]


def test_search_retries_once_after_the_connection_was_killed(pg, sample_repo, embedder):
    _build(pg, sample_repo, embedder)
    gen = pg.load_current("sample")
    search(gen, embedder, "token", 3, RetrievalSettings(), "fused")
    with psycopg.connect(pg.db.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    res = search(gen, embedder, "validate token", 3, RetrievalSettings(), "fused")
    assert res.hits and res.hits[0].chunk.path == "auth/oauth.py"


def test_unknown_corpus_says_how_to_index_it(pg):
    with pytest.raises(NoIndexError, match="agro index"):
        pg.load_current("nope")


def test_schema_newer_than_the_code_is_refused_with_the_fix(pg_url):
    db = open_database(pg_url)
    PgIndexBackend(db)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE agro_schema SET version = 99 WHERE component = 'index'")
    db._migrated.clear()
    with pytest.raises(SchemaVersionError, match="Upgrade agro-mcp"):
        PgIndexBackend(db)


def test_unreachable_database_fails_at_open_with_the_setting_to_check(tmp_path):
    from retrieval.pgdb import DatabaseUnavailableError

    url = f"postgresql://agro:secret@/agro?host={tmp_path}&port=1&connect_timeout=2"
    with pytest.raises(DatabaseUnavailableError, match="AGRO_DATABASE_URL") as ei:
        open_database(url)
    assert "secret" not in str(ei.value)


def test_nul_bytes_and_non_ascii_text_are_stored(pg, tmp_path, embedder):
    root = write_repo(tmp_path / "odd", {"odd.py": textwrap.dedent('''
        def grüße():
            return "naïve \u2603"
        ''')})
    (root / "nul.txt").write_bytes(b"binary\x00looking line\nsecond line\n")
    s = _build(pg, root, embedder, corpus="odd")
    assert s.chunks >= 1
    hits = search(pg.load_current("odd"), embedder, "grüße", 3, RetrievalSettings(), "bm25").hits
    assert hits and hits[0].chunk.path == "odd.py"


def test_search_says_the_database_is_gone_after_one_retry(pg_url, sample_repo, embedder):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from retrieval.pgdb import Database, DatabaseUnavailableError

    name = conninfo_to_dict(pg_url)["dbname"]
    admin_url = make_conninfo(pg_url, dbname="postgres")
    db = Database(pg_url, pool_size=2, connect_timeout=2)
    try:
        backend = PgIndexBackend(db)
        _build(backend, sample_repo, embedder)
        gen = backend.load_current("sample")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        with pytest.raises(DatabaseUnavailableError, match="twice"):
            search(gen, embedder, "validate token", 3, RetrievalSettings(), "fused")
    finally:
        db.close()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_full_rebuild_swaps_partitions_atomically_and_a_failed_one_changes_nothing(pg, sample_repo, embedder, monkeypatch):
    import retrieval.pg_index as mod

    first = _build(pg, sample_repo, embedder)
    (sample_repo / "extra.py").write_text("def zebra_crossing():\n    return 'stripes'\n")
    real = mod._copy_postings

    def boom(*a, **k):
        raise RuntimeError("injected failure during the bulk load")

    monkeypatch.setattr(mod, "_copy_postings", boom)
    with pytest.raises(RuntimeError, match="injected"):
        _build(pg, sample_repo, embedder, full=True)
    monkeypatch.setattr(mod, "_copy_postings", real)
    gen = pg.load_current("sample")
    assert gen.generation_id == first.generation
    assert search(gen, embedder, "validate token", 3, RetrievalSettings(), "fused").hits
    with psycopg.connect(pg.db.url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'agro_chunks%'")]
    assert len(tables) == 2  # the parent and one partition: nothing left over from the failed load

    rebuilt = _build(pg, sample_repo, embedder, full=True)
    gen = pg.load_current("sample")
    assert gen.generation_id == rebuilt.generation and rebuilt.chunks == first.chunks + 1
    hits = search(gen, embedder, "zebra_crossing", 3, RetrievalSettings(), "fused").hits
    assert hits[0].chunk.path == "extra.py"
    with psycopg.connect(pg.db.url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'agro_chunks%'")]
    assert len(tables) == 2


def test_pg_build_goes_through_the_same_reach_and_secret_checks(pg, tmp_path, embedder):
    from retrieval.errors import ReachError, RootChangeError
    from tests.retrieval.test_secrets import SECRETS, _repo

    repo = _repo(tmp_path / "repo")
    summary = _build(pg, repo, embedder)
    gen = pg.load_current("sample")
    assert sorted(gen.files) == ["app/billing.py"]
    assert summary.skipped == {"secret_content": 6, "credentials": 2, "secret": 3}
    assert not any(s in c.text for c in gen.chunks for s in SECRETS)
    with pytest.raises(RootChangeError):
        _build(pg, write_repo(tmp_path / "other"), embedder)
    with pytest.raises(ReachError, match="AGRO_INDEX_ROOTS"):
        _build(pg, write_repo(tmp_path / "third"), embedder, corpus="third", face="mcp")
