"""The event store on PostgreSQL (``AGRO_BACKEND=postgres``): the same interface and records as
:class:`training.events.sqlite.SqliteEventStore`, shared by every server process on every machine that points at one database.

What keeps it safe:

* Every write is one transaction through :meth:`retrieval.pgdb.Database.write`: committed before the call returns,
  or reported as failed (never retried, so nothing is acknowledged twice or silently lost). If the server runs
  with ``synchronous_commit = off``, each write sets it back ``on`` for its own transaction, so an acknowledged
  write survives a server crash. The one exception is a search's own event (``log_query``): it commits
  asynchronously, which takes the WAL flush out of every search. It is still committed when the call returns, and
  the durable commit of feedback on it flushes it too (the log is flushed in order), so acknowledged feedback never
  points at a lost event; a PostgreSQL crash can lose only the last few hundred milliseconds of search events.
* Idempotency is in the schema, not in a read-then-write: feedback has ``UNIQUE (event_id, dedupe_key)`` and is
  inserted with ``ON CONFLICT DO NOTHING``; an imported event with ``ON CONFLICT (event_id) DO NOTHING``.
* The named locks of :meth:`acquire_lock` are serialised by a transaction-level advisory lock on the name.

Tables are prefixed ``agro_`` (``agro_event_corpora`` is not the index's ``agro_corpora``). Sharding (Citus): the
event tables can be distributed by ``event_id`` and colocated (every key and unique constraint of
``agro_query_events``, ``agro_query_results`` and ``agro_feedback`` includes it, so their foreign keys are
allowed); the small tables (corpora, evaluations, promotions, jobs, job logs, locks) fit as reference tables.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from retrieval.pgdb import Database, SchemaVersionError
from training.events import records
from training.events.base import StoreBase
from training.events.postgres_jobs import PgJobs
from training.events.postgres_sql import (
    _COUNT_TABLES,
    _EVENT_COLS,
    _FEEDBACK_COLS,
    _INSERT_EVENT_SQL,
    _RESULT_COLS,
    _RESULT_FIELDS,
    COMPONENT,
    MIGRATIONS,
    SCHEMA_VERSION,
    _dict_cursor,
    _json_value,
)
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

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PgEventStore", "PgStoreVersionError"]

logger = logging.getLogger(__name__)

class PgStoreVersionError(StoreVersionError, SchemaVersionError):
    """The events schema in PostgreSQL was written by a newer agro-mcp (both a store and a database error)."""


class PgEventStore(PgJobs, StoreBase):
    """Durable store for the learning loop on PostgreSQL. Safe to share across threads, processes and machines.

    Args:
        database: the shared pool (:func:`retrieval.pgdb.open_database`); :meth:`close` leaves it open.

    Raises:
        PgStoreVersionError: (a :class:`StoreVersionError` and a :class:`SchemaVersionError`) if the database
            was migrated by a newer agro-mcp.
    """

    backend = "postgres"

    def __init__(self, database: Database) -> None:
        self.db = database
        self._closed = False
        try:
            database.migrate(COMPONENT, MIGRATIONS)
        except SchemaVersionError as exc:
            raise PgStoreVersionError(str(exc)) from None
        self._force_sync_commit = self._read(self._server_drops_commits, "durability check")

    @property
    def database(self) -> Database:
        return self.db

    # ---------------------------------------------------------------------------------------- plumbing
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("EventStore is closed")

    @staticmethod
    def _server_drops_commits(conn: Any) -> bool:
        sync = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()[0]
        fsync = conn.execute("SELECT current_setting('fsync')").fetchone()[0]
        if fsync == "off":
            logger.warning("PostgreSQL runs with fsync=off: a server crash can lose acknowledged events")
        if sync == "off":
            logger.warning("PostgreSQL runs with synchronous_commit=off; the event store turns it on for its writes")
            return True
        return False

    def _read(self, fn: Callable[[Any], Any], what: str) -> Any:
        self._check_open()
        return self.db.read(fn, what)

    def _write(self, fn: Callable[[Any], Any], what: str, durable: bool = True) -> Any:
        """Run ``fn(conn)`` in one transaction, committed before this returns.

        ``durable=False`` commits asynchronously (``synchronous_commit = off`` for this transaction only): the row is
        committed and visible to every session at once, and a crash of *our* process cannot lose it; only a crash of
        the PostgreSQL server within ~``wal_writer_delay`` can. Used for search events, which nobody has been told
        are safe: the write-ahead log is flushed in order, so the durable commit of any feedback on an event also
        flushes that event, and acknowledged feedback never points at a lost event.
        """
        import psycopg

        self._check_open()
        force = self._force_sync_commit

        def tx(conn: Any) -> Any:
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            elif force:
                conn.execute("SET LOCAL synchronous_commit = on")
            try:
                return fn(conn)
            except psycopg.DataError as exc:
                if "NUL" in str(exc) or "\\u0000" in str(exc):  # psycopg's check, or PostgreSQL's JSON parser
                    raise StoreError(
                        f"{what}: a text field contains a NUL character (\\x00), which PostgreSQL cannot store; "
                        "remove it from the query, note or file"
                    ) from None
                raise

        return self.db.write(tx, what)

    def close(self) -> None:
        """Mark the store closed. The pool is shared (index backend, other stores) and stays open."""
        self._closed = True

    # ---------------------------------------------------------------------------------------- migrations
    def schema_version(self) -> int:
        self._check_open()
        return self.db.schema_version(COMPONENT)

    # ---------------------------------------------------------------------------------------- corpora
    def register_corpus(self, corpus: str, root: Path | str | None) -> None:
        """Record a corpus and its root folder (the root is updated if it changed)."""
        root_s = str(root) if root is not None else None
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_event_corpora (id, root, created) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET root = COALESCE(EXCLUDED.root, agro_event_corpora.root)",
                (corpus, root_s, time.time()),
            ),
            "register_corpus",
        )

    def corpus_root(self, corpus: str) -> Path | None:
        row = self._read(
            lambda conn: conn.execute("SELECT root FROM agro_event_corpora WHERE id = %s", (corpus,)).fetchone(),
            "corpus_root",
        )
        return Path(row[0]) if row is not None and row[0] is not None else None

    def list_corpora(self) -> list[tuple[str, Path | None]]:
        rows = self._read(
            lambda conn: conn.execute("SELECT id, root FROM agro_event_corpora ORDER BY id").fetchall(), "list_corpora"
        )
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
        ``durable=False`` (a search's own event, without feedback) commits asynchronously; see :meth:`_write`.
        """
        texts, feedback = list(texts), list(feedback)

        results = list(event.results)
        # Sorted so two writers sharing chunk texts take their row locks in the same order (no deadlock).
        text_rows = [row for _hash, row in sorted({t.hash: (t.hash, t.text, t.path, t.language, t.symbol)
                                                  for t in texts}.items())]
        params = {
            **{f"e_{i}": v for i, v in enumerate((
                event.event_id, event.ts, event.corpus, event.query, event.k, event.reranker_model,
                bool(event.reranking_used), event.fallback_reason, event.latency_ms, event.index_generation,
                event.source))},
            "created": time.time(),
            "results": json.dumps([{c: _json_value(getattr(r, c)) for c in _RESULT_FIELDS} for r in results]),
            "texts": json.dumps([dict(zip(("hash", "text", "path", "language", "symbol"), row)) for row in text_rows]),
        }
        def tx(conn: Any) -> bool:
            # One statement (one round trip) stores the event, its ranked results and the chunk texts; if the
            # event_id exists already, nothing is stored.
            inserted = conn.execute(_INSERT_EVENT_SQL, params).fetchone()
            if inserted is None:
                return False
            for fb in feedback:
                self._insert_feedback(conn, fb)
            return True

        return self._write(tx, "insert_event", durable=durable or bool(feedback))

    def get_event(self, event_id: str) -> QueryEvent | None:
        def q(conn: Any) -> QueryEvent | None:
            cur = _dict_cursor(conn)
            row = cur.execute(
                f"SELECT {_EVENT_COLS} FROM agro_query_events WHERE event_id = %s", (event_id,)
            ).fetchone()
            if row is None:
                return None
            results = cur.execute(
                f"SELECT {_RESULT_COLS} FROM agro_query_results WHERE event_id = %s ORDER BY rank", (event_id,)
            ).fetchall()
            return event_from_row(row, results)

        return self._read(q, "get_event")

    def iter_events(self, corpus: str | None = None, since: float | None = None) -> Iterator[QueryEvent]:
        """Events in insertion order, read in pages (one short transaction each) so a scan never holds a connection."""
        terms, args = scan_filters("%s", corpus, since)
        where = ["seq > %s", *terms]
        page = records.PAGE
        sql = (
            f"SELECT seq, {_EVENT_COLS} FROM agro_query_events WHERE {' AND '.join(where)} ORDER BY seq LIMIT {page}"
        )
        last = 0
        while True:

            def q(conn: Any, last: int = last) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
                cur = _dict_cursor(conn)
                rows = cur.execute(sql, (last, *args)).fetchall()
                by_event: dict[str, list[dict[str, Any]]] = {r["event_id"]: [] for r in rows}
                if rows:
                    for r in cur.execute(
                        f"SELECT {_RESULT_COLS} FROM agro_query_results WHERE event_id = ANY(%s) "
                        "ORDER BY event_id, rank",
                        (list(by_event),),
                    ):
                        by_event[r["event_id"]].append(r)
                return rows, by_event

            rows, by_event = self._read(q, "iter_events")
            if not rows:
                return
            last = rows[-1]["seq"]
            for row in rows:
                yield event_from_row(row, by_event[row["event_id"]])

    # ---------------------------------------------------------------------------------------- chunk texts
    def chunk_text(self, hash: str) -> str | None:
        row = self._read(
            lambda conn: conn.execute("SELECT text FROM agro_chunk_texts WHERE hash = %s", (hash,)).fetchone(),
            "chunk_text",
        )
        return row[0] if row is not None else None

    def _chunk_column(self, hashes: Iterable[str], column: str) -> dict[str, Any]:
        assert column in ("text", "symbol")
        wanted = list(dict.fromkeys(hashes))
        page = records.PAGE

        def q(conn: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for i in range(0, len(wanted), page):
                part = wanted[i : i + page]
                out.update(conn.execute(f"SELECT hash, {column} FROM agro_chunk_texts WHERE hash = ANY(%s)",
                                        (part,)).fetchall())
            return out

        return self._read(q, f"chunk_{column}s") if wanted else {}

    # ---------------------------------------------------------------------------------------- feedback
    def _store_feedback(self, record: FeedbackRecord) -> FeedbackRecord:
        return self._write(lambda conn: self._insert_feedback(conn, record), "add_feedback")

    def _insert_feedback(self, conn: Any, record: FeedbackRecord) -> FeedbackRecord:
        import psycopg

        r = record
        key = dedupe_key(r.event_id, r.signal, r.doc_id, r.rating, r.path, r.start_line, r.end_line, r.note)
        try:
            inserted = conn.execute(
                f"INSERT INTO agro_feedback ({_FEEDBACK_COLS}, dedupe_key) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING RETURNING seq",
                (r.feedback_id, r.event_id, r.ts, r.signal, r.doc_id, r.rating, r.path, r.start_line,
                 r.end_line, r.note, key),
            ).fetchone()
        except psycopg.errors.ForeignKeyViolation:
            # The transaction is aborted; raising rolls it back whole (as SQLite's does).
            raise StoreError(
                f"Unknown event_id {r.event_id!r}: feedback must name a stored query event"
            ) from None
        if inserted is not None:
            return record
        row = _dict_cursor(conn).execute(
            f"SELECT {_FEEDBACK_COLS} FROM agro_feedback WHERE event_id = %s AND dedupe_key = %s", (r.event_id, key)
        ).fetchone()
        if row is None:  # the feedback_id is taken by different feedback (imports only)
            raise StoreError(f"feedback_id {r.feedback_id!r} is already stored for other feedback on {r.event_id}")
        return feedback_from_row(row, created=False)

    def feedback_for_event(self, event_id: str) -> list[FeedbackRecord]:
        rows = self._read(
            lambda conn: _dict_cursor(conn).execute(
                f"SELECT {_FEEDBACK_COLS} FROM agro_feedback WHERE event_id = %s ORDER BY ts, seq", (event_id,)
            ).fetchall(),
            "feedback_for_event",
        )
        return [feedback_from_row(r) for r in rows]

    def iter_feedback(
        self,
        corpus: str | None = None,
        since: float | None = None,
        signals: Iterable[str] | None = None,
    ) -> Iterator[FeedbackRecord]:
        """Feedback in insertion order, optionally filtered by the event's corpus, time and signal."""
        terms, args = scan_filters("%s", corpus, since, prefix="f.", corpus_col="e.corpus")
        where = ["f.seq > %s", *terms]
        if signals is not None:
            where.append("f.signal = ANY(%s)")
            args.append(list(signals))
        cols = ", ".join(f"f.{c.strip()}" for c in _FEEDBACK_COLS.split(","))
        sql = (
            f"SELECT f.seq, {cols} FROM agro_feedback f JOIN agro_query_events e ON e.event_id = f.event_id "
            f"WHERE {' AND '.join(where)} ORDER BY f.seq LIMIT {records.PAGE}"
        )
        last = 0
        while True:
            rows = self._read(
                lambda conn, last=last: _dict_cursor(conn).execute(sql, (last, *args)).fetchall(), "iter_feedback"
            )
            if not rows:
                return
            last = rows[-1]["seq"]
            for row in rows:
                yield feedback_from_row(row)

    def compact_events(self, older_than: float, vacuum: bool = False) -> dict[str, int]:
        """Delete query events logged before ``older_than`` without feedback, their results and the chunk texts
        no remaining event refers to (see :meth:`training.events.store.EventStore.compact_events`). ``vacuum`` is left to
        PostgreSQL's autovacuum."""
        batch = records.COMPACT_BATCH

        def one_batch(conn: Any) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT event_id FROM agro_query_events e WHERE ts < %s AND NOT EXISTS "
                "(SELECT 1 FROM agro_feedback f WHERE f.event_id = e.event_id) LIMIT %s", (older_than, batch)).fetchall()]
            if ids:
                conn.execute("DELETE FROM agro_query_results WHERE event_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM agro_query_events WHERE event_id = ANY(%s)", (ids,))
            return len(ids)

        events = 0
        while True:
            n = self._write(one_batch, "compact_events")
            events += n
            if n < batch:
                break

        def texts(conn: Any) -> int:
            return conn.execute(
                "DELETE FROM agro_chunk_texts t WHERE NOT EXISTS "
                "(SELECT 1 FROM agro_query_results r WHERE r.chunk_hash = t.hash)"
            ).rowcount

        return {"events": events, "chunk_texts": self._write(texts, "compact_events")}

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for `status` and tests)."""

        def q(conn: Any) -> dict[str, int]:
            return {
                key: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for key, table in _COUNT_TABLES.items()
            }

        return self._read(q, "counts")

    def integrity_check(self) -> str:
        """'ok' when the database answers and the store's tables are readable; otherwise what is wrong."""

        def q(conn: Any) -> str:
            problems = [
                f"table {table} ({key}) is missing"
                for key, table in _COUNT_TABLES.items()
                if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None
            ]
            row = conn.execute("SELECT version FROM agro_schema WHERE component = %s", (COMPONENT,)).fetchone()
            if row is None or int(row[0]) != SCHEMA_VERSION:
                problems.append(f"events schema version is {row[0] if row else None}, expected {SCHEMA_VERSION}")
            return "\n".join(problems) or "ok"

        return self._read(q, "integrity_check")

    # ---------------------------------------------------------------------------------------- evaluations
    def add_evaluation(self, name: str, model: str | None, payload: dict[str, Any]) -> int:
        body = json.dumps(payload, ensure_ascii=False)
        row = self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_evaluations (ts, name, model, payload) VALUES (%s,%s,%s,%s) RETURNING id",
                (time.time(), name, model, body),
            ).fetchone(),
            "add_evaluation",
        )
        return int(row[0])

    def list_evaluations(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        """Newest first: dicts with id, ts, name, model, payload."""
        cols = "id, ts, name, model, payload"
        if name is None:
            sql, args = f"SELECT {cols} FROM agro_evaluations ORDER BY id DESC LIMIT %s", (limit,)
        else:
            sql, args = f"SELECT {cols} FROM agro_evaluations WHERE name = %s ORDER BY id DESC LIMIT %s", (name, limit)
        rows = self._read(lambda conn: _dict_cursor(conn).execute(sql, args).fetchall(), "list_evaluations")
        return [evaluation_from_row(r) for r in rows]

    # ---------------------------------------------------------------------------------------- promotions
    def add_promotion(
        self, decision: str, candidate: str | None, release: str | None, payload: dict[str, Any]
    ) -> int:
        """Record a promotion decision (promoted, refused, rollback…) with its figures."""
        body = json.dumps(payload, ensure_ascii=False)
        row = self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_promotions (ts, decision, candidate, release, payload) VALUES (%s,%s,%s,%s,%s) "
                "RETURNING id",
                (time.time(), decision, candidate, release, body),
            ).fetchone(),
            "add_promotion",
        )
        return int(row[0])

    def list_promotions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: dicts with id, ts, decision, candidate, release, payload."""
        rows = self._read(
            lambda conn: _dict_cursor(conn).execute(
                "SELECT id, ts, decision, candidate, release, payload FROM agro_promotions ORDER BY id DESC LIMIT %s",
                (limit,),
            ).fetchall(),
            "list_promotions",
        )
        return [promotion_from_row(r) for r in rows]
