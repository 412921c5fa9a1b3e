import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from retrieval.index import (
    INDEX_FORMAT,
    IndexLockedError,
    IndexVersionError,
    NoIndexError,
    build_index,
    corpus_dir,
    current_generation_id,
    list_corpora,
    load_current,
    stale_files,
)
from retrieval.search import search
from retrieval.settings import IndexSettings, RetrievalSettings
from tests.conftest import write_repo

IS = IndexSettings()
RS = RetrievalSettings()


def _build(repo, home, embedder, corpus="sample", **kw):
    return build_index(repo, corpus, home, IS, RS, embedder, **kw)


def test_index_then_fused_search_finds_the_function(sample_repo, tmp_path, embedder):
    home = tmp_path / "home"
    summary = _build(sample_repo, home, embedder)
    assert summary.published and summary.files == 5 and summary.chunks > 5
    gen = load_current(home, "sample")
    res = search(gen, embedder, "where is the oauth token expiry checked", 5, RS)
    assert res.hits[0].chunk.symbol == "validate_token"
    assert res.hits[0].chunk.path == "auth/oauth.py"
    hit = res.hits[0]
    assert hit.bm25_rank is not None and hit.dense_rank is not None
    assert set(res.timings) >= {"lexical", "dense", "fusion"}


def test_bm25_and_dense_modes_and_filters(sample_repo, tmp_path, embedder):
    home = tmp_path / "home"
    _build(sample_repo, home, embedder)
    gen = load_current(home, "sample")
    bm = search(gen, embedder, "connection pool acquire", 3, RS, mode="bm25")
    assert bm.hits[0].chunk.symbol.startswith("ConnectionPool")
    dn = search(gen, embedder, "retry with exponential backoff", 3, RS, mode="dense")
    assert dn.hits[0].chunk.symbol == "backoff_delays"
    js = search(gen, embedder, "start the server", 5, RS, language="javascript")
    assert js.hits and all(h.chunk.language == "javascript" for h in js.hits)
    only_db = search(gen, embedder, "token", 10, RS, path_glob="db/**")
    assert all(h.chunk.path.startswith("db/") for h in only_db.hits)


def test_reindex_touches_only_changed_added_and_deleted_files(sample_repo, tmp_path, embedder):
    home = tmp_path / "home"
    first = _build(sample_repo, home, embedder)
    again = _build(sample_repo, home, embedder)
    assert not again.published and again.generation == first.generation and again.embedded == 0

    (sample_repo / "utils/retry.py").write_text("def retry_forever():\n    while True:\n        pass\n")
    (sample_repo / "docs/README.md").unlink()
    (sample_repo / "new.py").write_text("def brand_new_helper():\n    return 42\n")
    gen_before = load_current(home, "sample")
    assert stale_files(gen_before, IS) == {"added": 1, "changed": 1, "deleted": 1, "total": 3}

    third = _build(sample_repo, home, embedder)
    assert third.published and third.generation != first.generation
    assert (third.added, third.changed, third.deleted, third.unchanged) == (1, 1, 1, 3)
    assert third.embedded == 2  # one chunk per changed/added file; the rest reuse their vectors
    gen = load_current(home, "sample")
    assert {c.path for c in gen.chunks} == {"auth/oauth.py", "db/pool.py", "web/server.js", "utils/retry.py", "new.py"}
    assert stale_files(gen, IS)["total"] == 0
    # incremental result equals a full rebuild
    full = build_index(sample_repo, "full", home, IS, RS, embedder)
    gfull = load_current(home, "full")
    assert [c.doc_id for c in gen.chunks] == [c.doc_id for c in gfull.chunks]
    q = "brand new helper"
    assert [h.doc_id for h in search(gen, embedder, q, 5, RS).hits] == [h.doc_id for h in search(gfull, embedder, q, 5, RS).hits]
    assert full.chunks == len(gen.chunks)


def test_unknown_corpus_and_bad_roots_say_what_to_do(tmp_path, embedder):
    home = tmp_path / "home"
    with pytest.raises(NoIndexError, match="agro index"):
        load_current(home, "nothing")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        _build(tmp_path / "missing", home, embedder)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        _build(f, home, embedder)
    with pytest.raises(ValueError, match="corpus id"):
        _build(tmp_path, home, embedder, corpus="../evil")


def test_second_writer_gets_a_clear_lock_error(sample_repo, tmp_path, embedder):
    home = tmp_path / "home"
    cdir = corpus_dir(home, "sample")
    cdir.mkdir(parents=True)
    fd = os.open(cdir / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242")
        with pytest.raises(IndexLockedError, match="4242"):
            _build(sample_repo, home, embedder)
    finally:
        os.close(fd)
    assert _build(sample_repo, home, embedder).published


def test_index_from_another_format_asks_for_a_rebuild(sample_repo, tmp_path, embedder):
    home = tmp_path / "home"
    _build(sample_repo, home, embedder)
    gen_dir = corpus_dir(home, "sample") / "current"
    manifest = json.loads((gen_dir / "manifest.json").read_text())
    manifest["format"] = 0
    (gen_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexVersionError, match="--full"):
        load_current(home, "sample")
    # a plain re-index rebuilds it from scratch
    assert _build(sample_repo, home, embedder).published
    assert load_current(home, "sample").manifest["format"] == INDEX_FORMAT


def test_secrets_are_never_indexed_and_are_counted(sample_repo, tmp_path, embedder):
    (sample_repo / ".env").write_text("API_KEY=supersecret\n")
    (sample_repo / "deploy").mkdir()
    (sample_repo / "deploy/server.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    home = tmp_path / "home"
    summary = _build(sample_repo, home, embedder)
    assert summary.skipped.get("secret") == 2
    gen = load_current(home, "sample")
    assert not any("supersecret" in c.text or c.path.endswith(".pem") for c in gen.chunks)


def test_searches_during_reindex_see_one_whole_generation(sample_repo, tmp_path, embedder):
    """Readers resolve `current` while a writer publishes new generations: every load is complete."""
    home = tmp_path / "home"
    _build(sample_repo, home, embedder)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[str] = set()

    def reader():
        while not stop.is_set():
            try:
                gen = load_current(home, "sample")
                files = set(gen.manifest["files"])
                assert {c.path for c in gen.chunks} <= files
                assert len(gen.chunks) == gen.vectors.shape[0] == gen.lexical.n_docs
                search(gen, embedder, "oauth token", 3, RS)
                seen.add(gen.generation_id)
            except BaseException as exc:  # collected and re-raised in the test thread
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(4):
            (sample_repo / f"gen{i}.py").write_text(f"def generation_{i}():\n    return {i}\n")
            assert _build(sample_repo, home, embedder).published
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(seen) >= 2


KILL_SCRIPT = r"""
import sys
from pathlib import Path
from retrieval.embed import load_embedder
from retrieval.index import build_index
from retrieval.settings import IndexSettings, RetrievalSettings
emb = load_embedder(RetrievalSettings())
print("ready", flush=True)
build_index(Path(sys.argv[1]), "sample", Path(sys.argv[2]), IndexSettings(), RetrievalSettings(), emb)
print("done", flush=True)
"""


@pytest.mark.slow
def test_kill_during_indexing_leaves_the_previous_generation_usable(tmp_path, embedder):
    repo = write_repo(tmp_path / "repo")
    for i in range(60):  # enough files that the embed/write phase takes a moment
        (repo / f"mod{i}.py").write_text("\n".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(8)))
    home = tmp_path / "home"
    _build(repo, home, embedder)
    before = current_generation_id(home, "sample")
    for i in range(60):
        (repo / f"mod{i}.py").write_text(f"def changed_{i}():\n    return {i}\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for delay in (0.05, 0.3, 0.8):
        with subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(repo), str(home)], stdout=subprocess.PIPE, env=env) as proc:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        gen = load_current(home, "sample")  # the published generation is always complete
        assert len(gen.chunks) == gen.vectors.shape[0] == gen.lexical.n_docs
        assert gen.generation_id == before or not any(c.path == "mod0.py" and "f0_0" in c.text for c in gen.chunks)
    summary = _build(repo, home, embedder)  # the next build recovers: lock released, temp folders removed
    assert not any(p.name.startswith(".tmp-") for p in (corpus_dir(home, "sample") / "gens").iterdir())
    assert "sample" in list_corpora(home)
    gen = load_current(home, "sample")
    assert any(c.symbol == "changed_0" for c in gen.chunks)
    assert summary.files == 65
