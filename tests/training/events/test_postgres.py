"""What only the PostgreSQL event store has to prove: schema versions, durability and idempotency under several
real processes (one killed with SIGKILL mid-stream), and the training-job advisory lock across processes.

Real PostgreSQL (the session's pgserver, a fresh database per test), real subprocesses; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from retrieval.pgdb import Database, DatabaseUnavailableError, SchemaVersionError
from retrieval.types import Chunk, Hit
from training.events import postgres as pg_store
from training.releases.jobs import TRAINING_LOCK, JobBusyError, PgAdvisoryLock, job_lock, run_job, start_job
from training.events.postgres import PgEventStore, PgStoreVersionError
from training.events.records import StoreError, StoreVersionError
from training.events.store import open_event_store

REPO = Path(__file__).resolve().parents[3]
CHUNK = Chunk.make("a.py", 1, 2, "python", None, "x = 1\n")


def _pg_store(url: str):
    return open_event_store(Path("unused"), "postgres", url, pool_size=4)


def _log(store) -> str:
    return store.log_query(
        "demo", "q", 10, [Hit(CHUNK, 0.1, 0.2)], reranker_model=None, reranking_used=False,
        fallback_reason=None, latency_ms=1.0, index_generation=None,
    )


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


class _Lines:
    """Complete lines a child wrote to stdout, read without blocking past a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.lines: list[str] = []
        self.eof = False

    def pump(self, timeout: float) -> None:
        if self.eof:
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            return
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        self.lines.extend(d.decode() for d in done)

    def wait_for(self, count: int, deadline: float) -> None:
        while len(self.lines) < count and not self.eof and time.monotonic() < deadline:
            self.pump(0.05)

    def drain(self) -> None:
        """After the child is gone: everything it wrote (a torn last line, without its newline, is dropped)."""
        while not self.eof:
            self.pump(5)


def _reap(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


# ---------------------------------------------------------------------------------------------- schema
def test_an_events_schema_newer_than_this_agro_mcp_is_refused_with_how_to_upgrade(pg_url: str) -> None:
    _pg_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE agro_schema SET version = %s WHERE component = 'events'", (pg_store.SCHEMA_VERSION + 1,))
    fresh = Database(pg_url, pool_size=1)  # a new process's view: nothing cached
    try:
        newer = rf"events schema .* is version {pg_store.SCHEMA_VERSION + 1}, newer than this agro-mcp"
        with pytest.raises(SchemaVersionError, match=newer) as info:
            PgEventStore(fresh)
        assert isinstance(info.value, StoreVersionError) and isinstance(info.value, PgStoreVersionError)
        assert "Upgrade agro-mcp" in str(info.value)
    finally:
        fresh.close()


def test_a_failing_events_migration_leaves_the_schema_at_its_previous_version(pg_url: str, monkeypatch) -> None:
    with _pg_store(pg_url) as s:
        eid = _log(s)
    broken = [*pg_store.MIGRATIONS, ("CREATE TABLE agro_extra (x integer)", "THIS IS NOT SQL")]
    monkeypatch.setattr(pg_store, "MIGRATIONS", broken)
    fresh = Database(pg_url, pool_size=1)
    try:
        with pytest.raises(psycopg.errors.SyntaxError):
            PgEventStore(fresh)
    finally:
        fresh.close()
    monkeypatch.undo()
    with _pg_store(pg_url) as s:
        assert s.schema_version() == pg_store.SCHEMA_VERSION
        assert s.get_event(eid) is not None
        assert s.database.read(lambda c: c.execute("SELECT to_regclass('agro_extra')").fetchone()[0]) is None


def test_event_tables_are_prefixed_and_leave_the_index_tables_names_free(pg_url: str) -> None:
    with _pg_store(pg_url) as s:
        tables = s.database.read(
            lambda c: {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        )
    assert tables >= {"agro_query_events", "agro_feedback", "agro_event_corpora", "agro_jobs", "agro_locks"}
    assert all(t.startswith("agro_") for t in tables)
    assert not tables & {"agro_corpora", "agro_chunks", "agro_postings", "agro_terms"}


# ---------------------------------------------------------------------------------------------- durability
def test_writes_are_synchronous_even_when_the_server_default_is_not(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    fresh = Database(pg_url, pool_size=1)
    try:
        store = PgEventStore(fresh)
        assert fresh.read(lambda c: c.execute("SHOW synchronous_commit").fetchone()[0]) == "off"
        assert store._write(lambda c: c.execute("SHOW synchronous_commit").fetchone()[0], "probe") == "on"
        eid = _log(store)
        assert store.add_feedback(eid, "thumbs_up").created
    finally:
        fresh.close()


def test_a_search_event_commits_asynchronously_and_feedback_on_it_durably(pg_url: str) -> None:
    store = _pg_store(pg_url)
    seen: dict[str, str] = {}
    write = store.db.write

    def spy(fn, what="write"):
        def tx(conn):
            out = fn(conn)
            seen[what] = conn.execute("SHOW synchronous_commit").fetchone()[0]
            return out
        return write(tx, what)

    store.db.write = spy
    try:
        eid = _log(store)
        assert store.add_feedback(eid, "thumbs_up").created
    finally:
        store.db.write = write
    assert seen["insert_event"] == "off"
    assert seen["add_feedback"] == "on"
    # committed and visible to every other session at once, although its WAL flush is deferred
    with psycopg.connect(pg_url) as other:
        assert other.execute("SELECT count(*) FROM agro_query_events WHERE event_id = %s", (eid,)).fetchone()[0] == 1


def test_a_write_whose_connection_is_lost_is_reported_and_not_stored(pg_url: str) -> None:
    store = _pg_store(pg_url)
    eid = _log(store)

    def insert_then_lose_the_connection(conn):
        store._insert_feedback(conn, _feedback(eid))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        time.sleep(0.2)

    with pytest.raises(DatabaseUnavailableError, match="not acknowledged; repeat the call"):
        store._write(insert_then_lose_the_connection, "add_feedback")
    assert store.counts()["feedback"] == 0
    assert store.add_feedback(eid, "thumbs_up", note="again").created  # the pool recovered


def _feedback(event_id: str):
    from training.events.records import FeedbackRecord

    return FeedbackRecord(feedback_id="f" * 32, event_id=event_id, ts=time.time(), signal="thumbs_up")


def test_text_with_a_nul_character_is_refused_clearly_and_nothing_is_stored(pg_url: str) -> None:
    with _pg_store(pg_url) as s:
        eid = _log(s)
        with pytest.raises(StoreError, match="NUL character"):
            s.add_feedback(eid, "thumbs_up", note="a\x00b")
        with pytest.raises(StoreError, match="NUL character"):
            s.log_query("demo", "q\x00", 10, [], reranker_model=None, reranking_used=False,
                        fallback_reason=None, latency_ms=1.0, index_generation=None)
        assert (s.counts()["feedback"], s.counts()["query_events"]) == (0, 1)
        with pytest.raises(StoreError, match="NUL character"):  # inside a hit's chunk text (sent as JSON)
            s.log_query("demo", "q", 10, [Hit(dataclasses.replace(CHUNK, text="a\x00b"), 0.1, 0.2)],
                        reranker_model=None, reranking_used=False, fallback_reason=None, latency_ms=1.0,
                        index_generation=None)
        assert s.counts()["query_events"] == 1


def test_a_logged_search_keeps_every_result_field_and_its_chunk_text(pg_url: str) -> None:
    hits = [Hit(CHUNK, 0.5, 0.25, bm25_rank=3, dense_rank=None, rerank_score=float("nan")),
            Hit(dataclasses.replace(CHUNK, path="b.py", start_line=4, end_line=9, hash="h2", text="second \u00e9"),
                0.4, 0.2, bm25_rank=None, dense_rank=1)]
    with _pg_store(pg_url) as s:
        eid = s.log_query("demo", "q", 10, hits, reranker_model=None, reranking_used=False, fallback_reason=None,
                          latency_ms=1.0, index_generation="g1")
        event = s.get_event(eid)
        got = [(r.rank, r.path, r.start_line, r.end_line, r.chunk_hash, r.fused_score, r.rerank_score, r.bm25_rank,
                r.dense_rank) for r in event.results]
        assert got == [(1, CHUNK.path, CHUNK.start_line, CHUNK.end_line, CHUNK.hash, 0.5, None, 3, None),
                       (2, "b.py", 4, 9, "h2", 0.4, None, None, 1)]
        assert s.chunk_texts(["h2"])["h2"] == "second \u00e9"  # non-ASCII text survives the JSON


# ---------------------------------------------------------------------------------------------- concurrency
# A writer: for i in range(n) submit its own feedback and, for i < shared, feedback every writer submits
# identically; after each call returns (committed), print "<feedback_id> <note> <created>" on one line.
WRITER = """
import sys
from pathlib import Path
from training.events.feedback import submit_feedback
from training.events.store import open_event_store

url, event_id, worker, n, shared = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
store = open_event_store(Path("."), "postgres", url, pool_size=2)
for i in range(n):
    for note in ([f"shared-{i}"] if i < shared else []) + [f"{worker}-{i}"]:
        rec = submit_feedback(store, event_id, "thumbs_up", note=note)
        print(rec.feedback_id, note, int(rec.created), flush=True)
store.close()
"""


def _acked(lines: list[str]) -> list[tuple[str, str, bool]]:
    out = []
    for line in lines:
        fid, note, created = line.split(" ")
        out.append((fid, note, created == "1"))
    return out


def _stored(url: str) -> dict[str, str]:
    """note -> feedback_id of every stored feedback; each note at most once."""
    with _pg_store(url) as s:
        assert s.integrity_check() == "ok"
        rows = [(f.note, f.feedback_id) for f in s.iter_feedback()]
        assert len(rows) == s.counts()["feedback"]
    stored = dict(rows)
    assert len(stored) == len(rows), "a feedback was stored twice"
    return stored


@pytest.mark.slow
def test_feedback_from_eight_processes_lands_exactly_once(pg_url: str) -> None:
    with _pg_store(pg_url) as s:
        event_id = _log(s)
    n, shared = 200, 100
    procs = [_spawn(WRITER, pg_url, event_id, f"w{i}", str(n), str(shared)) for i in range(8)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
            outs.append(_acked(out.decode().splitlines()))
    finally:
        _reap(procs)
    stored = _stored(pg_url)
    assert set(stored) == {f"w{w}-{i}" for w in range(8) for i in range(n)} | {f"shared-{i}" for i in range(shared)}
    for acks in outs:
        assert len(acks) == n + shared
        assert all(stored[note] == fid for fid, note, _ in acks)
    for i in range(shared):
        answers = [(fid, created) for acks in outs for fid, note, created in acks if note == f"shared-{i}"]
        assert len(answers) == 8
        assert sum(created for _, created in answers) == 1, f"shared-{i} was created more than once"
        assert {fid for fid, _ in answers} == {stored[f"shared-{i}"]}


@pytest.mark.slow
def test_a_writer_killed_mid_stream_loses_no_acknowledged_feedback(pg_url: str) -> None:
    with _pg_store(pg_url) as s:
        event_id = _log(s)
    rng = random.Random(7)
    for round_ in range(4):
        procs = [_spawn(WRITER, pg_url, event_id, f"r{round_}w{w}", "100000", "0") for w in range(2)]
        readers = [_Lines(p) for p in procs]
        try:
            for p, reader in zip(procs, readers):
                reader.wait_for(rng.randint(20, 300), time.monotonic() + 60)
                assert p.poll() is None, p.stderr.read().decode()
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)
                assert p.returncode == -signal.SIGKILL
            for reader in readers:
                reader.drain()
        finally:
            _reap(procs)
        stored = _stored(pg_url)
        for w, reader in enumerate(readers):
            acked = _acked(reader.lines)
            assert len(acked) >= 20, "the writer acknowledged too little before the kill"
            assert all(stored.get(note) == fid for fid, note, _ in acked), "an acknowledged write was lost"
            mine = {note for note in stored if note.startswith(f"r{round_}w{w}-")}
            # At most the call in flight (committed, not yet acknowledged) is extra.
            assert len(mine) - len(acked) in (0, 1)


# ---------------------------------------------------------------------------------------------- job lock
JOB_HOLDER = """
import sys, time
from pathlib import Path
from training.releases.jobs import run_job
from training.events.store import open_event_store

url, home = sys.argv[1], Path(sys.argv[2])
store = open_event_store(home, "postgres", url, pool_size=2)

def job(ctx):
    print("held", ctx.run_id, flush=True)
    time.sleep(120)

run_job(store, home, "train", job)
"""


def test_the_job_lock_of_a_postgres_store_is_an_advisory_lock_and_of_sqlite_a_file(pg_url: str, tmp_path) -> None:
    with _pg_store(pg_url) as pg:
        lock = job_lock(pg, tmp_path, TRAINING_LOCK, "run-a")
        assert isinstance(lock, PgAdvisoryLock) and lock.key == "agro-train"
        with lock:
            keys = pg.database.read(lambda c: c.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND ((classid::bigint << 32) | objid::bigint) = hashtext('agro-train')::bigint").fetchone()[0])
            assert keys == 1
            holder = lock.holder()
            assert (holder["run_id"], holder["pid"]) == ("run-a", os.getpid())
            with pytest.raises(JobBusyError, match="run run-a"):
                job_lock(pg, tmp_path / "elsewhere", TRAINING_LOCK, "run-b").acquire()
        assert not lock.held_by_someone()
        assert not (tmp_path / "locks").exists()  # no flock file for the postgres backend


@pytest.mark.slow
def test_a_second_training_job_is_refused_from_another_machine_until_the_holder_is_killed(
    pg_url: str, tmp_path: Path
) -> None:
    store = _pg_store(pg_url)
    proc = _spawn(JOB_HOLDER, pg_url, str(tmp_path / "machine-a"))
    try:
        reader = _Lines(proc)
        reader.wait_for(1, time.monotonic() + 60)
        assert reader.lines, proc.stderr.read().decode() if proc.poll() is not None else "no 'held' line"
        word, held_run = reader.lines[0].split(" ")
        assert word == "held"
        other_home = tmp_path / "machine-b"  # another data home: only the database can refuse
        expected = rf"Another training job is running \(run {held_run}, pid {proc.pid} on {socket.gethostname()}\)"
        with pytest.raises(JobBusyError, match=expected):
            start_job(store, other_home, "train", lambda ctx: None)
        refused = store.list_jobs(limit=1)[0]
        assert (refused.state, refused.message) == ("failed", "busy")
        assert job_lock(store, other_home, TRAINING_LOCK, "").holder()["run_id"] == held_run

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while True:  # the server drops the session's lock as soon as it sees the connection close
            try:
                run_id, result = run_job(store, other_home, "train", lambda ctx: 7)
                break
            except JobBusyError:
                assert time.monotonic() < deadline, "the killed holder's lock was never released"
                time.sleep(0.1)
        assert result == 7 and store.get_job(run_id).state == "succeeded"
        dead = store.get_job(held_run)
        assert (dead.state, dead.error) == ("failed", "process died")
        assert not job_lock(store, other_home, TRAINING_LOCK, "").held_by_someone()
    finally:
        _reap([proc])
        store.close()
