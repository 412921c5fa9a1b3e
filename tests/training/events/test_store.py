"""The event store: schema migrations, query events, feedback, evaluations, promotions, jobs and locks.

Tests that take ``store`` / ``open_store`` run on both backends (SQLite and PostgreSQL, see conftest.py); the
SQLite file's own guarantees (WAL, pragmas, its migrations) are tested on SQLite only.
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from retrieval.types import Chunk, Hit
from training.events import records
from training.events import sqlite as store_mod
from training.events.records import StoreError, StoreVersionError
from training.events.sqlite import SqliteEventStore
from training.events.store import EventStore


def _hits(*chunks: Chunk) -> list[Hit]:
    return [
        Hit(c, fused_score=1.0 / (60 + i), score=1.0 - i / 10, bm25_rank=i, dense_rank=i + 1, rerank_score=0.5)
        for i, c in enumerate(chunks, start=1)
    ]


def _log(store: EventStore, hits: list[Hit], query: str = "where is auth", corpus: str = "demo") -> str:
    return store.log_query(
        corpus,
        query,
        10,
        hits,
        reranker_model="rel-1",
        reranking_used=True,
        fallback_reason=None,
        latency_ms=12.5,
        index_generation="gen-1",
    )


A = Chunk.make("src/auth.py", 1, 10, "python", "login", "def login():\n    pass\n")
B = Chunk.make("src/db.py", 5, 9, "python", None, "conn = connect()\n")


def test_new_store_is_at_latest_version_and_reopening_changes_nothing(open_store, store_backend, tmp_path) -> None:
    from training.events import postgres as pg_store

    latest = store_mod.SCHEMA_VERSION if store_backend == "embedded" else pg_store.SCHEMA_VERSION
    with open_store() as s:
        assert s.schema_version() == latest
        _log(s, _hits(A))
    with open_store() as s:
        assert s.schema_version() == latest
        assert s.counts()["query_events"] == 1
        assert s.integrity_check() == "ok"
        if store_backend == "postgres":
            rows = s.database.read(lambda c: c.execute("SELECT component, version FROM agro_schema").fetchall())
            assert rows == [("events", latest)]
    if store_backend == "embedded":
        conn = sqlite3.connect(tmp_path / "home" / "agro.db")  # the folder was created
        try:
            assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
        finally:
            conn.close()


def test_store_uses_wal_full_sync_and_a_busy_timeout(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "agro.db") as store:
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_search_event_does_not_wait_for_the_disk_but_feedback_does(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "agro.db") as store:
        conn = store._conn()
        trace: list[str] = []
        conn.set_trace_callback(trace.append)
        eid = _log(store, _hits(A))
        searched = list(trace)
        trace.clear()
        assert store.add_feedback(eid, "thumbs_up").created
        conn.set_trace_callback(None)
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # back to FULL after the search event
    insert = next(i for i, sql in enumerate(searched) if sql.startswith("INSERT INTO query_events"))
    assert searched[0] == "PRAGMA synchronous=NORMAL" and searched[-1] == "PRAGMA synchronous=FULL"
    assert searched.index("COMMIT") > insert
    assert not any(sql.startswith("PRAGMA synchronous") for sql in trace)  # feedback commits at FULL
    with SqliteEventStore(tmp_path / "agro.db") as again:  # committed: another connection reads it
        assert again.counts()["query_events"] == 1 and again.counts()["feedback"] == 1


def test_store_refuses_a_database_from_a_newer_agro_mcp(tmp_path: Path) -> None:
    db = tmp_path / "agro.db"
    SqliteEventStore(db).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (store_mod.SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreVersionError, match="Upgrade agro-mcp"):
        SqliteEventStore(db)


def test_a_failing_migration_leaves_the_database_at_its_previous_version(tmp_path: Path, monkeypatch) -> None:
    db = tmp_path / "agro.db"
    SqliteEventStore(db).close()
    broken = [*store_mod._MIGRATIONS, ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL")]
    monkeypatch.setattr(store_mod, "_MIGRATIONS", broken)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(broken))
    with pytest.raises(sqlite3.OperationalError):
        SqliteEventStore(db)
    monkeypatch.undo()
    with SqliteEventStore(db) as s:
        assert s.schema_version() == store_mod.SCHEMA_VERSION
        tables = {r[0] for r in s._conn().execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "extra" not in tables


def test_log_query_round_trips_results_and_stores_each_chunk_text_once(store: EventStore) -> None:
    first = _log(store, _hits(A, B))
    second = _log(store, _hits(B, A), query="db connection")
    event = store.get_event(first)
    assert event is not None
    assert (event.corpus, event.query, event.k, event.reranker_model) == ("demo", "where is auth", 10, "rel-1")
    assert event.reranking_used and event.latency_ms == 12.5 and event.index_generation == "gen-1"
    assert event.source == "search"
    assert [r.doc_id for r in event.results] == [A.doc_id, B.doc_id]
    top = event.results[0]
    assert (top.rank, top.path, top.start_line, top.end_line, top.chunk_hash) == (1, "src/auth.py", 1, 10, A.hash)
    assert (top.bm25_rank, top.dense_rank, top.rerank_score, top.score) == (1, 2, 0.5, 0.9)
    assert store.chunk_text(A.hash) == A.text
    assert store.chunk_texts([A.hash, B.hash, "missing"]) == {A.hash: A.text, B.hash: B.text}
    assert store.chunk_symbols([A.hash, B.hash, "missing"]) == {A.hash: "login", B.hash: None}
    assert store.counts()["chunk_texts"] == 2
    assert [e.event_id for e in store.iter_events()] == [first, second]
    assert store.get_event("nope") is None


def test_iter_events_pages_and_filters_by_corpus_and_time(store: EventStore, monkeypatch) -> None:
    monkeypatch.setattr(records, "PAGE", 2)
    ids = [_log(store, _hits(A), corpus="a" if i % 2 else "b") for i in range(5)]
    assert [e.event_id for e in store.iter_events()] == ids
    assert [e.event_id for e in store.iter_events(corpus="a")] == ids[1::2]
    cutoff = store.get_event(ids[3]).ts
    assert [e.event_id for e in store.iter_events(since=cutoff)] == ids[3:]


def test_feedback_exact_repeat_returns_the_stored_record(store: EventStore) -> None:
    eid = _log(store, _hits(A))
    first = store.add_feedback(eid, "click", doc_id=A.doc_id, path=A.path, start_line=1, end_line=10)
    again = store.add_feedback(eid, "click", doc_id=A.doc_id, path=A.path, start_line=1, end_line=10)
    other = store.add_feedback(eid, "click", doc_id=A.doc_id, path=A.path, start_line=1, end_line=10, note="x")
    assert first.created and not again.created and other.created
    assert again.feedback_id == first.feedback_id
    assert [f.feedback_id for f in store.feedback_for_event(eid)] == [first.feedback_id, other.feedback_id]
    assert [f.feedback_id for f in store.iter_feedback(signals=["click"])] == [first.feedback_id, other.feedback_id]
    assert list(store.iter_feedback(corpus="elsewhere")) == []


def test_feedback_for_an_unknown_event_is_refused_by_the_store(store: EventStore) -> None:
    with pytest.raises(StoreError, match="Unknown event_id"):
        store.add_feedback("missing", "thumbs_up")
    assert store.counts()["feedback"] == 0


def test_evaluations_and_promotions_round_trip_newest_first(store: EventStore) -> None:
    first = store.add_evaluation("golden", "rel-1", {"mrr@10": 0.5})
    second = store.add_evaluation("bench", None, {"mrr@10": 0.7, "rows": [1, 2]})
    assert [e["id"] for e in store.list_evaluations()] == [second, first]
    assert store.latest_evaluation()["payload"] == {"mrr@10": 0.7, "rows": [1, 2]}
    assert store.latest_evaluation("golden")["model"] == "rel-1"
    assert store.latest_evaluation("none") is None
    pid = store.add_promotion("refused", "run-1", None, {"reason": "gain 0.01 < 0.02"})
    [promo] = store.list_promotions()
    assert (promo["id"], promo["decision"], promo["candidate"], promo["release"]) == (pid, "refused", "run-1", None)
    assert promo["payload"] == {"reason": "gain 0.01 < 0.02"}


def test_jobs_round_trip_with_logs_and_a_finished_state_is_final(store: EventStore) -> None:
    run_id = store.create_job("train", {"epochs": 1})
    job = store.get_job(run_id)
    assert (job.kind, job.state, job.progress, job.params) == ("train", "queued", 0, {"epochs": 1})
    job = store.update_job(run_id, state="running", progress=0.5, message="epoch 1")
    assert (job.state, job.progress, job.message, job.pid) == ("running", 0.5, "epoch 1", __import__("os").getpid())
    for i in range(5):
        store.append_job_log(run_id, f"line {i}")
    assert store.job_logs(run_id, tail=2) == ["line 3", "line 4"]
    job = store.update_job(run_id, state="succeeded", progress=1.0, result={"run_dir": "models/runs/x"})
    assert job.finished and job.result == {"run_dir": "models/runs/x"}
    with pytest.raises(StoreError, match="already succeeded"):
        store.update_job(run_id, state="running")
    with pytest.raises(StoreError, match="Unknown run_id"):
        store.update_job("nope", progress=0.1)
    with pytest.raises(StoreError, match="job state expects"):
        store.update_job(run_id, state="paused")
    queued = store.create_job("mine", {})
    assert store.request_cancel(queued).state == "cancelled"
    assert [j.run_id for j in store.list_jobs()] == [queued, run_id]
    assert [j.run_id for j in store.list_jobs(kind="train")] == [run_id]


def test_running_job_of_a_dead_process_is_reaped_as_failed(store: EventStore) -> None:
    run_id = store.create_job("train", {})
    store.update_job(run_id, state="running", pid=2**22 + 12345)  # beyond pid_max defaults: not alive
    assert store.reap_dead_jobs() == [run_id]
    job = store.get_job(run_id)
    assert (job.state, job.error) == ("failed", "process died")


def test_lock_excludes_a_second_owner_until_released_or_stale(store: EventStore) -> None:
    assert store.acquire_lock("train", "run-a")
    assert store.acquire_lock("train", "run-a")  # re-entrant for its owner
    assert not store.acquire_lock("train", "run-b")
    assert store.heartbeat_lock("train", "run-a")
    assert store.release_lock("train", "run-a")
    assert store.acquire_lock("train", "run-b")
    # The holder's process is gone: the lock is stale and taken over.
    assert store.acquire_lock("train", "run-c", is_alive=lambda pid: False)
    assert store.lock_holder("train")["owner"] == "run-c"
    # A holder that stopped heartbeating is stale too.
    assert store.acquire_lock("train", "run-d", stale_after=-1)
    assert not store.heartbeat_lock("train", "run-c")


def test_store_serves_worker_threads_and_a_closed_store_refuses_calls(store, store_backend) -> None:
    eid = _log(store, _hits(A))
    seen: set[int] = set()

    def write(i: int) -> str:
        seen.add(threading.get_ident())
        return store.add_feedback(eid, "thumbs_up", note=f"n{i}").feedback_id

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(write, range(40)))
    assert len(set(ids)) == 40
    assert store.counts()["feedback"] == 40
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.counts()
    if store_backend == "postgres":
        assert not store.database.pool.closed  # the pool is shared with the index: close() leaves it open
