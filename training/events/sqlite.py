"""The event store: query events, feedback, chunk texts, evaluations, promotions and jobs in one SQLite file.

Several server processes (one per MCP client session) and their worker threads share ``AGRO_HOME/agro.db``.
What keeps that safe, measured in DESIGN.md section 3: WAL, ``synchronous=FULL``, a busy timeout and
``BEGIN IMMEDIATE`` for every write, so a write either commits durably before its call returns or not at all.
(A search's own event does not wait for the disk: see :meth:`SqliteEventStore._write`.)
Each thread gets its own connection; :meth:`SqliteEventStore.close` closes them all.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.events import records
from training.events.base import StoreBase
from training.events.sqlite_jobs import SqliteJobs
from training.events.sqlite_schema import MIGRATIONS as _MIGRATIONS
from training.events.sqlite_schema import SCHEMA_VERSION
from training.events.records import (
    ChunkText,
    FeedbackRecord,
    QueryEvent,
    StoreError,
    StoreVersionError,
    dedupe_key,
    evaluation_from_row,
    event_from_row,
    feedback_from_row,
    promotion_from_row,
    scan_filters,
)

__all__ = ["SCHEMA_VERSION", "SqliteEventStore"]

logger = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 30_000


@dataclass(slots=True)
class _Conns:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_thread: dict[int, tuple[threading.Thread, sqlite3.Connection]] = field(default_factory=dict)


def _set_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the lock. Two processes opening a new
    database at once can get "database is locked" here at once: SQLite does not call the busy handler for this
    lock upgrade (seen as a failed ``agro serve`` start when two MCP clients started together)."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class SqliteEventStore(SqliteJobs, StoreBase):
    """Durable store for the learning loop. Safe to share across threads and processes.

    Args:
        db_path: The SQLite file (created with its parent folder if missing).

    Raises:
        StoreVersionError: if the file was migrated by a newer agro-mcp.
    """

    backend = "embedded"

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._conns = _Conns()
        self._pid = os.getpid()
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            mode = _set_wal(conn)
            if mode.lower() != "wal":
                raise StoreError(f"{self.db_path}: SQLite refused WAL mode (got {mode!r}); use a local disk")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        conn.row_factory = sqlite3.Row
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("EventStore is closed")
        if os.getpid() != self._pid:
            # Forked child: never reuse the parent's SQLite handles.
            self._conns = _Conns()
            self._pid = os.getpid()
        me = threading.current_thread()
        with self._conns.lock:
            entry = self._conns.by_thread.get(me.ident or 0)
            if entry is not None and entry[0] is me:
                return entry[1]
            # Close the connections of threads that have ended (worker pools come and go).
            for ident, (thread, conn) in list(self._conns.by_thread.items()):
                if not thread.is_alive():
                    conn.close()
                    del self._conns.by_thread[ident]
            conn = self._connect()
            self._conns.by_thread[me.ident or 0] = (me, conn)
            return conn

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed when the block exits, rolled back on error.

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL`` for this transaction): safe
        if our process dies, lost only if the machine does before the next durable commit or checkpoint, which
        syncs the whole log, this commit included. Used for a search's own event, so acknowledged feedback (always
        durable, and written after its event) never points at a lost one.
        """
        conn = self._conn()
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        """Close this thread's connection and those of ended threads; later calls in any thread raise StoreError.

        A connection still owned by another live thread (a background job mid-write) is not closed under it:
        closing a SQLite handle another thread is using crashed the process (SIGSEGV, seen in CI). It finishes
        its statement and is released with its thread.
        """
        self._closed = True
        me = threading.current_thread()
        with self._conns.lock:
            for ident, (thread, conn) in list(self._conns.by_thread.items()):
                if thread is me or not thread.is_alive():
                    conn.close()
                    del self._conns.by_thread[ident]

    # ---------------------------------------------------------------------------------------- migrations
    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                current = 0
            else:
                current = int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{self.db_path} has schema version {current}, but this agro-mcp supports up to "
                    f"{SCHEMA_VERSION}. Upgrade agro-mcp (pip install -U agro-mcp) or point AGRO_HOME elsewhere."
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (version,))
                logger.info("agro.db migrated to schema version %d", version)

    def schema_version(self) -> int:
        return int(self._conn().execute("SELECT version FROM schema_version").fetchone()[0])

    # ---------------------------------------------------------------------------------------- corpora
    def register_corpus(self, corpus: str, root: Path | str | None) -> None:
        """Record a corpus and its root folder (the root is updated if it changed)."""
        root_s = str(root) if root is not None else None
        with self._write() as conn:
            conn.execute(
                "INSERT INTO corpora (id, root, created) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET root = COALESCE(excluded.root, corpora.root)",
                (corpus, root_s, time.time()),
            )

    def corpus_root(self, corpus: str) -> Path | None:
        row = self._conn().execute("SELECT root FROM corpora WHERE id = ?", (corpus,)).fetchone()
        return Path(row[0]) if row is not None and row[0] is not None else None

    def list_corpora(self) -> list[tuple[str, Path | None]]:
        rows = self._conn().execute("SELECT id, root FROM corpora ORDER BY id").fetchall()
        return [(r[0], Path(r[1]) if r[1] is not None else None) for r in rows]

    # ---------------------------------------------------------------------------------------- query events
    def insert_event(
        self,
        event: QueryEvent,
        texts: Iterable[ChunkText] = (),
        feedback: Iterable[FeedbackRecord] = (),
        durable: bool = True,
    ) -> bool:
        """Store a ready-made event (imports), its chunk texts and feedback in one transaction.

        Returns False, storing nothing, if its event_id already exists. Feedback is not validated here.
        ``durable=False`` (a search's own event, without feedback) does not wait for the disk; see :meth:`_write`.
        """
        feedback = list(feedback)
        with self._write(durable=durable or bool(feedback)) as conn:
            if conn.execute("SELECT 1 FROM query_events WHERE event_id = ?", (event.event_id,)).fetchone():
                return False
            conn.execute(
                "INSERT OR IGNORE INTO corpora (id, root, created) VALUES (?, NULL, ?)", (event.corpus, time.time())
            )
            conn.execute(
                "INSERT INTO query_events (event_id, ts, corpus, query, k, reranker_model, reranking_used, "
                "fallback_reason, latency_ms, index_generation, source) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    event.event_id,
                    event.ts,
                    event.corpus,
                    event.query,
                    event.k,
                    event.reranker_model,
                    int(event.reranking_used),
                    event.fallback_reason,
                    event.latency_ms,
                    event.index_generation,
                    event.source,
                ),
            )
            conn.executemany(
                "INSERT INTO query_results (event_id, rank, doc_id, chunk_hash, path, start_line, end_line, "
                "fused_score, rerank_score, score, bm25_rank, dense_rank) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        event.event_id,
                        r.rank,
                        r.doc_id,
                        r.chunk_hash,
                        r.path,
                        r.start_line,
                        r.end_line,
                        r.fused_score,
                        r.rerank_score,
                        r.score,
                        r.bm25_rank,
                        r.dense_rank,
                    )
                    for r in event.results
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO chunk_texts (hash, text, path, language, symbol) VALUES (?,?,?,?,?)",
                [(t.hash, t.text, t.path, t.language, t.symbol) for t in texts],
            )
            for fb in feedback:
                self._insert_feedback(conn, fb)
        return True


    def get_event(self, event_id: str) -> QueryEvent | None:
        conn = self._conn()
        row = conn.execute("SELECT * FROM query_events WHERE event_id = ?", (event_id,)).fetchone()
        if row is None:
            return None
        results = conn.execute("SELECT * FROM query_results WHERE event_id = ? ORDER BY rank", (event_id,)).fetchall()
        return event_from_row(row, results)

    def iter_events(self, corpus: str | None = None, since: float | None = None) -> Iterator[QueryEvent]:
        """Events in insertion order, read in pages so a long scan never holds the database."""
        terms, args = scan_filters("?", corpus, since)
        where = ["rowid > ?", *terms]
        sql = f"SELECT rowid, * FROM query_events WHERE {' AND '.join(where)} ORDER BY rowid LIMIT {records.PAGE}"
        last = 0
        while True:
            conn = self._conn()
            rows = conn.execute(sql, (last, *args)).fetchall()
            if not rows:
                return
            ids = [r["event_id"] for r in rows]
            marks = ",".join("?" * len(ids))
            by_event: dict[str, list[sqlite3.Row]] = {i: [] for i in ids}
            for r in conn.execute(
                f"SELECT * FROM query_results WHERE event_id IN ({marks}) ORDER BY event_id, rank", ids
            ):
                by_event[r["event_id"]].append(r)
            last = rows[-1]["rowid"]
            for row in rows:
                yield event_from_row(row, by_event[row["event_id"]])

    # ---------------------------------------------------------------------------------------- chunk texts
    def chunk_text(self, hash: str) -> str | None:
        row = self._conn().execute("SELECT text FROM chunk_texts WHERE hash = ?", (hash,)).fetchone()
        return row[0] if row is not None else None

    def _chunk_column(self, hashes: Iterable[str], column: str) -> dict[str, Any]:
        assert column in ("text", "symbol")
        wanted = list(dict.fromkeys(hashes))
        out: dict[str, Any] = {}
        conn = self._conn()
        for i in range(0, len(wanted), records.PAGE):
            part = wanted[i : i + records.PAGE]
            marks = ",".join("?" * len(part))
            out.update(conn.execute(f"SELECT hash, {column} FROM chunk_texts WHERE hash IN ({marks})", part).fetchall())
        return out

    # ---------------------------------------------------------------------------------------- feedback
    def _store_feedback(self, record: FeedbackRecord) -> FeedbackRecord:
        with self._write() as conn:
            return self._insert_feedback(conn, record)

    def _insert_feedback(self, conn: sqlite3.Connection, record: FeedbackRecord) -> FeedbackRecord:
        r = record
        key = dedupe_key(r.event_id, r.signal, r.doc_id, r.rating, r.path, r.start_line, r.end_line, r.note)
        try:
            cur = conn.execute(
                "INSERT OR IGNORE INTO feedback (feedback_id, event_id, ts, signal, doc_id, rating, path, "
                "start_line, end_line, note, dedupe_key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (r.feedback_id, r.event_id, r.ts, r.signal, r.doc_id, r.rating, r.path, r.start_line, r.end_line,
                 r.note, key),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"Unknown event_id {r.event_id!r}: feedback must name a stored query event") from exc
        if cur.rowcount == 1:
            return record
        row = conn.execute("SELECT * FROM feedback WHERE dedupe_key = ?", (key,)).fetchone()
        return feedback_from_row(row, created=False)


    def feedback_for_event(self, event_id: str) -> list[FeedbackRecord]:
        rows = self._conn().execute(
            "SELECT * FROM feedback WHERE event_id = ? ORDER BY ts, rowid", (event_id,)
        ).fetchall()
        return [feedback_from_row(r) for r in rows]

    def iter_feedback(
        self,
        corpus: str | None = None,
        since: float | None = None,
        signals: Iterable[str] | None = None,
    ) -> Iterator[FeedbackRecord]:
        """Feedback in insertion order, optionally filtered by the event's corpus, time and signal."""
        terms, args = scan_filters("?", corpus, since, prefix="f.", corpus_col="e.corpus")
        where = ["f.rowid > ?", *terms]
        if signals is not None:
            wanted = list(signals)
            where.append(f"f.signal IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        sql = (
            "SELECT f.rowid AS rid, f.* FROM feedback f JOIN query_events e ON e.event_id = f.event_id "
            f"WHERE {' AND '.join(where)} ORDER BY f.rowid LIMIT {records.PAGE}"
        )
        last = 0
        while True:
            rows = self._conn().execute(sql, (last, *args)).fetchall()
            if not rows:
                return
            last = rows[-1]["rid"]
            for row in rows:
                yield feedback_from_row(row)

    def compact_events(self, older_than: float, vacuum: bool = False) -> dict[str, int]:
        """Delete query events logged before ``older_than`` (a timestamp) that have no feedback, with their results
        and the chunk texts no remaining event refers to. Events with feedback are training data: always kept.

        Args:
            vacuum: also return the freed pages to the file system (``VACUUM``; rewrites the file, so for
                ``agro db compact`` rather than a running server).

        Returns:
            How many events and chunk texts were removed.
        """
        events = 0
        while True:
            with self._write() as conn:
                ids = [(r[0],) for r in conn.execute(
                    "SELECT event_id FROM query_events e WHERE ts < ? AND NOT EXISTS "
                    "(SELECT 1 FROM feedback f WHERE f.event_id = e.event_id) LIMIT ?", (older_than, records.COMPACT_BATCH))]
                conn.executemany("DELETE FROM query_results WHERE event_id = ?", ids)
                conn.executemany("DELETE FROM query_events WHERE event_id = ?", ids)
            events += len(ids)
            if len(ids) < records.COMPACT_BATCH:
                break
        with self._write() as conn:
            texts = conn.execute(
                "DELETE FROM chunk_texts WHERE hash NOT IN "
                "(SELECT chunk_hash FROM query_results WHERE chunk_hash IS NOT NULL)"
            ).rowcount
        if vacuum:
            conn = self._conn()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"events": events, "chunk_texts": texts}

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for `status` and tests)."""
        conn = self._conn()
        tables = (
            "corpora",
            "query_events",
            "query_results",
            "chunk_texts",
            "feedback",
            "evaluations",
            "promotions",
            "jobs",
        )
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: 'ok' when the file is sound."""
        rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    # ---------------------------------------------------------------------------------------- evaluations
    def add_evaluation(self, name: str, model: str | None, payload: dict[str, Any]) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO evaluations (ts, name, model, payload) VALUES (?,?,?,?)",
                (time.time(), name, model, json.dumps(payload, ensure_ascii=False)),
            )
        return int(cur.lastrowid)


    def list_evaluations(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        """Newest first: dicts with id, ts, name, model, payload."""
        if name is None:
            rows = self._conn().execute("SELECT * FROM evaluations ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._conn().execute(
                "SELECT * FROM evaluations WHERE name = ? ORDER BY id DESC LIMIT ?", (name, limit)
            ).fetchall()
        return [evaluation_from_row(r) for r in rows]

    # ---------------------------------------------------------------------------------------- promotions
    def add_promotion(
        self, decision: str, candidate: str | None, release: str | None, payload: dict[str, Any]
    ) -> int:
        """Record a promotion decision (promoted, refused, rollback…) with its figures."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO promotions (ts, decision, candidate, release, payload) VALUES (?,?,?,?,?)",
                (time.time(), decision, candidate, release, json.dumps(payload, ensure_ascii=False)),
            )
        return int(cur.lastrowid)

    def list_promotions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: dicts with id, ts, decision, candidate, release, payload."""
        rows = self._conn().execute("SELECT * FROM promotions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [promotion_from_row(r) for r in rows]
