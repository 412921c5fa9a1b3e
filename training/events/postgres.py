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
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from retrieval.pgdb import Database, SchemaVersionError
from retrieval.types import Hit
from training.events import records
from training.events.records import (
    JOB_STATES,
    TERMINAL_STATES,
    ChunkText,
    FeedbackRecord,
    JobRecord,
    QueryEvent,
    StoreError,
    StoreVersionError,
    dedupe_key,
    evaluation_from_row,
    event_from_row,
    feedback_from_row,
    job_from_row,
    new_run_id,
    pid_alive,
    query_event_from_hits,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PgEventStore", "PgStoreVersionError"]

logger = logging.getLogger(__name__)

COMPONENT = "events"


class PgStoreVersionError(StoreVersionError, SchemaVersionError):
    """The events schema in PostgreSQL was written by a newer agro-mcp (both a store and a database error)."""


# --------------------------------------------------------------------------------------------------- schema
# Append only: never edit a migration that has shipped, add a new one. ``Database.migrate`` runs them under an
# advisory lock, all missing ones in one transaction with the version bump.
# ``seq`` columns replace SQLite's rowid: insertion order for scans and tie-breaks.
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: initial schema (mirrors training.events.sqlite._MIGRATIONS[0])
        """CREATE TABLE agro_event_corpora (
            id text PRIMARY KEY,
            root text,
            created double precision NOT NULL)""",
        """CREATE TABLE agro_query_events (
            event_id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            ts double precision NOT NULL,
            corpus text NOT NULL,
            query text NOT NULL,
            k integer NOT NULL,
            reranker_model text,
            reranking_used boolean NOT NULL DEFAULT false,
            fallback_reason text,
            latency_ms double precision,
            index_generation text,
            source text NOT NULL DEFAULT 'search')""",
        "CREATE INDEX agro_query_events_seq ON agro_query_events (seq)",
        "CREATE INDEX agro_query_events_ts ON agro_query_events (ts)",
        "CREATE INDEX agro_query_events_corpus_seq ON agro_query_events (corpus, seq)",
        """CREATE TABLE agro_query_results (
            event_id text NOT NULL REFERENCES agro_query_events (event_id) ON DELETE CASCADE,
            rank integer NOT NULL,
            doc_id text NOT NULL,
            chunk_hash text,
            path text NOT NULL,
            start_line integer,
            end_line integer,
            fused_score double precision,
            rerank_score double precision,
            score double precision,
            bm25_rank integer,
            dense_rank integer,
            PRIMARY KEY (event_id, rank))""",
        """CREATE TABLE agro_chunk_texts (
            hash text PRIMARY KEY,
            text text NOT NULL,
            path text,
            language text,
            symbol text)""",
        """CREATE TABLE agro_feedback (
            event_id text NOT NULL REFERENCES agro_query_events (event_id) ON DELETE CASCADE,
            feedback_id text NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            ts double precision NOT NULL,
            signal text NOT NULL,
            doc_id text,
            rating integer,
            path text,
            start_line integer,
            end_line integer,
            note text,
            dedupe_key text NOT NULL,
            PRIMARY KEY (event_id, feedback_id),
            UNIQUE (event_id, dedupe_key))""",
        "CREATE INDEX agro_feedback_seq ON agro_feedback (seq)",
        "CREATE INDEX agro_feedback_ts ON agro_feedback (ts)",
        """CREATE TABLE agro_evaluations (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts double precision NOT NULL,
            name text NOT NULL,
            model text,
            payload text NOT NULL)""",
        "CREATE INDEX agro_evaluations_name_id ON agro_evaluations (name, id)",
        """CREATE TABLE agro_promotions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts double precision NOT NULL,
            decision text NOT NULL,
            candidate text,
            release text,
            payload text NOT NULL)""",
        """CREATE TABLE agro_jobs (
            run_id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            kind text NOT NULL,
            state text NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
            progress double precision NOT NULL DEFAULT 0,
            message text,
            params text NOT NULL DEFAULT '{}',
            created double precision NOT NULL,
            updated double precision NOT NULL,
            pid integer,
            host text,
            result text,
            error text,
            cancel_requested boolean NOT NULL DEFAULT false)""",
        "CREATE INDEX agro_jobs_created ON agro_jobs (created, seq)",
        "CREATE INDEX agro_jobs_running ON agro_jobs (host) WHERE state = 'running'",
        """CREATE TABLE agro_job_logs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text NOT NULL REFERENCES agro_jobs (run_id) ON DELETE CASCADE,
            ts double precision NOT NULL,
            line text NOT NULL)""",
        "CREATE INDEX agro_job_logs_run ON agro_job_logs (run_id, id)",
        """CREATE TABLE agro_locks (
            name text PRIMARY KEY,
            owner text NOT NULL,
            pid integer,
            host text,
            acquired double precision NOT NULL,
            heartbeat double precision NOT NULL)""",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)

# counts() keys (the SQLite table names) -> tables here
_COUNT_TABLES = {
    "corpora": "agro_event_corpora",
    "query_events": "agro_query_events",
    "query_results": "agro_query_results",
    "chunk_texts": "agro_chunk_texts",
    "feedback": "agro_feedback",
    "evaluations": "agro_evaluations",
    "promotions": "agro_promotions",
    "jobs": "agro_jobs",
}

_EVENT_COLS = (
    "event_id, ts, corpus, query, k, reranker_model, reranking_used, fallback_reason, latency_ms, "
    "index_generation, source"
)
_RESULT_COLS = (
    "event_id, rank, doc_id, chunk_hash, path, start_line, end_line, fused_score, rerank_score, score, "
    "bm25_rank, dense_rank"
)
_RESULT_FIELDS = ("rank", "doc_id", "chunk_hash", "path", "start_line", "end_line", "fused_score", "rerank_score",
                  "score", "bm25_rank", "dense_rank")
_RESULT_TYPES = ("int4", "text", "text", "text", "int4", "int4", "float8", "float8", "float8", "int4", "int4")
# %(e_0)s .. %(e_10)s are the event's columns in _EVENT_COLS order (e_0 = event_id, e_2 = corpus). The results and
# chunk texts travel as two JSON documents: psycopg builds a dumper per array parameter, and the 16 arrays this took
# before cost ~1.7 ms of client CPU per search, more than the statement itself.
_INSERT_EVENT_SQL = f"""
    WITH e AS (
        INSERT INTO agro_query_events ({_EVENT_COLS}) VALUES ({", ".join(f"%(e_{i})s" for i in range(11))})
        ON CONFLICT (event_id) DO NOTHING RETURNING seq),
    c AS (
        INSERT INTO agro_event_corpora (id, root, created) SELECT %(e_2)s, NULL, %(created)s
        WHERE EXISTS (SELECT 1 FROM e) ON CONFLICT DO NOTHING),
    r AS (
        INSERT INTO agro_query_results ({_RESULT_COLS})
        SELECT %(e_0)s, u.* FROM json_to_recordset(%(results)s::json)
            AS u({", ".join(f"{c} {t}" for c, t in zip(_RESULT_FIELDS, _RESULT_TYPES))})
        WHERE EXISTS (SELECT 1 FROM e)),
    t AS (
        INSERT INTO agro_chunk_texts (hash, text, path, language, symbol)
        SELECT u.* FROM json_to_recordset(%(texts)s::json) AS u(hash text, text text, path text, language text, symbol text)
        WHERE EXISTS (SELECT 1 FROM e) ON CONFLICT DO NOTHING)
    SELECT seq FROM e"""
_FEEDBACK_COLS = "feedback_id, event_id, ts, signal, doc_id, rating, path, start_line, end_line, note"
_JOB_COLS = (
    "run_id, kind, state, progress, message, params, created, updated, pid, host, result, error, cancel_requested"
)


def _json_value(v: Any) -> Any:
    """A value for a JSON parameter: a non-finite float (JSON has none) is stored as NULL."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _dict_cursor(conn: Any) -> Any:
    from psycopg.rows import dict_row

    return conn.cursor(row_factory=dict_row)


class PgEventStore:
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

    def __enter__(self) -> PgEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    def log_query(
        self,
        corpus: str,
        query: str,
        k: int,
        hits: Sequence[Hit],
        *,
        reranker_model: str | None,
        reranking_used: bool,
        fallback_reason: str | None,
        latency_ms: float,
        index_generation: str | None,
        source: str = "search",
    ) -> str:
        """Store one search with its ranked hits and their texts in one transaction; return its event_id."""
        event, texts = query_event_from_hits(
            corpus, query, k, hits, reranker_model=reranker_model, reranking_used=reranking_used,
            fallback_reason=fallback_reason, latency_ms=latency_ms, index_generation=index_generation, source=source,
        )
        if not self.insert_event(event, texts, durable=False):  # pragma: no cover - uuid4 collision
            raise StoreError(f"event_id collision on {event.event_id}")
        return event.event_id

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
        where, args = ["seq > %s"], []
        if corpus is not None:
            where.append("corpus = %s")
            args.append(corpus)
        if since is not None:
            where.append("ts >= %s")
            args.append(since)
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

    def chunk_texts(self, hashes: Iterable[str]) -> dict[str, str]:
        """Texts for many hashes at once; missing hashes are absent from the result."""
        return self._chunk_column(hashes, "text")

    def chunk_symbols(self, hashes: Iterable[str]) -> dict[str, str | None]:
        """The symbol stored with each chunk text (``None`` for a chunk without one); missing hashes are absent."""
        return self._chunk_column(hashes, "symbol")

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
    def add_feedback(
        self,
        event_id: str,
        signal: str,
        *,
        doc_id: str | None = None,
        rating: int | None = None,
        path: str | None = None,
        start_line: int | None = None,
        end_line: int | None = None,
        note: str | None = None,
        ts: float | None = None,
    ) -> FeedbackRecord:
        """Store one feedback signal, committed before return. An exact repeat returns the existing record.

        This does no validation beyond the event existing: call :func:`training.events.feedback.submit_feedback`.
        """
        record = FeedbackRecord(
            feedback_id=uuid.uuid4().hex,
            event_id=event_id,
            ts=time.time() if ts is None else ts,
            signal=signal,
            doc_id=doc_id,
            rating=rating,
            path=path,
            start_line=start_line,
            end_line=end_line,
            note=note,
        )
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
        where, args = ["f.seq > %s"], []
        if corpus is not None:
            where.append("e.corpus = %s")
            args.append(corpus)
        if since is not None:
            where.append("f.ts >= %s")
            args.append(since)
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

    def latest_evaluation(self, name: str | None = None) -> dict[str, Any] | None:
        rows = self.list_evaluations(limit=1, name=name)
        return rows[0] if rows else None

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
        return [
            {
                "id": r["id"],
                "ts": r["ts"],
                "decision": r["decision"],
                "candidate": r["candidate"],
                "release": r["release"],
                "payload": json.loads(r["payload"]),
            }
            for r in rows
        ]

    # ---------------------------------------------------------------------------------------- jobs
    def create_job(self, kind: str, params: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Create a queued job and return its run_id (``YYYYmmdd-HHMMSS-<kind>-<hex>``)."""
        run_id = run_id or new_run_id(kind)
        now = time.time()
        body = json.dumps(params or {}, ensure_ascii=False)
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_jobs (run_id, kind, state, progress, params, created, updated, host) "
                "VALUES (%s, %s, 'queued', 0, %s, %s, %s, %s)",
                (run_id, kind, body, now, now, socket.gethostname()),
            ),
            "create_job",
        )
        return run_id

    def update_job(
        self,
        run_id: str,
        state: str | None = None,
        progress: float | None = None,
        message: str | None = None,
        result: Any = None,
        error: str | None = None,
        pid: int | None = None,
    ) -> JobRecord:
        """Update the given fields of a job. A finished job's state cannot change.

        Raises:
            StoreError: unknown run_id, unknown state, or a change to a finished job's state.
        """
        if state is not None and state not in JOB_STATES:
            raise StoreError(f"job state expects one of {', '.join(JOB_STATES)}, but got {state!r}")
        sets, args = ["updated = %s"], [time.time()]
        for col, value in (("state", state), ("progress", progress), ("message", message), ("error", error)):
            if value is not None:
                sets.append(f"{col} = %s")
                args.append(value)
        if result is not None:
            sets.append("result = %s")
            args.append(json.dumps(result, ensure_ascii=False))
        if pid is not None or state == "running":
            sets.append("pid = %s")
            args.append(pid if pid is not None else os.getpid())

        def tx(conn: Any) -> dict[str, Any]:
            # FOR UPDATE: the state check and the update see the same row, whatever other processes do.
            row = conn.execute("SELECT state FROM agro_jobs WHERE run_id = %s FOR UPDATE", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"Unknown run_id {run_id!r}: list jobs with `agro jobs` or reranker_admin status")
            if state is not None and row[0] in TERMINAL_STATES and state != row[0]:
                raise StoreError(f"job {run_id} already {row[0]}; cannot move it to {state}")
            return _dict_cursor(conn).execute(
                f"UPDATE agro_jobs SET {', '.join(sets)} WHERE run_id = %s RETURNING {_JOB_COLS}", (*args, run_id)
            ).fetchone()

        return job_from_row(self._write(tx, "update_job"))

    def request_cancel(self, run_id: str) -> JobRecord | None:
        """Ask a job to stop; a queued job is cancelled at once, a running one when it next checks."""
        self._write(
            lambda conn: conn.execute(
                "UPDATE agro_jobs SET cancel_requested = true, updated = %s, "
                "state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END WHERE run_id = %s",
                (time.time(), run_id),
            ),
            "request_cancel",
        )
        return self.get_job(run_id)

    def get_job(self, run_id: str) -> JobRecord | None:
        row = self._read(
            lambda conn: _dict_cursor(conn).execute(
                f"SELECT {_JOB_COLS} FROM agro_jobs WHERE run_id = %s", (run_id,)
            ).fetchone(),
            "get_job",
        )
        return job_from_row(row) if row is not None else None

    def list_jobs(self, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Newest first."""
        where, args = ["true"], []
        if kind is not None:
            where.append("kind = %s")
            args.append(kind)
        if state is not None:
            where.append("state = %s")
            args.append(state)
        sql = f"SELECT {_JOB_COLS} FROM agro_jobs WHERE {' AND '.join(where)} ORDER BY created DESC, seq DESC LIMIT %s"
        rows = self._read(lambda conn: _dict_cursor(conn).execute(sql, (*args, limit)).fetchall(), "list_jobs")
        return [job_from_row(r) for r in rows]

    def reap_dead_jobs(self) -> list[str]:
        """Mark running jobs whose process on this host has died as failed; return their run_ids."""
        host = socket.gethostname()
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT run_id, pid FROM agro_jobs WHERE state = 'running' AND host = %s ORDER BY seq", (host,)
            ).fetchall(),
            "reap_dead_jobs",
        )
        dead = [run_id for run_id, pid in rows if pid is not None and not pid_alive(pid)]
        for run_id in dead:
            self._write(
                lambda conn, run_id=run_id: conn.execute(
                    "UPDATE agro_jobs SET state = 'failed', error = 'process died', updated = %s "
                    "WHERE run_id = %s AND state = 'running'",
                    (time.time(), run_id),
                ),
                "reap_dead_jobs",
            )
        return dead

    def append_job_log(self, run_id: str, line: str) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_job_logs (run_id, ts, line) VALUES (%s,%s,%s)", (run_id, time.time(), line)
            ),
            "append_job_log",
        )

    def job_logs(self, run_id: str, tail: int = 200) -> list[str]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT line FROM agro_job_logs WHERE run_id = %s ORDER BY id DESC LIMIT %s", (run_id, tail)
            ).fetchall(),
            "job_logs",
        )
        return [r[0] for r in reversed(rows)]

    # ---------------------------------------------------------------------------------------- locks
    def acquire_lock(
        self,
        name: str,
        owner: str,
        *,
        stale_after: float = 900.0,
        is_alive: Callable[[int], bool] = pid_alive,
    ) -> bool:
        """Take the named lock for ``owner`` (e.g. a run_id); True if now held by it.

        A held lock is taken over when it is stale: its process on this host is gone, or its heartbeat is older
        than ``stale_after`` seconds (a process on another host, or a hung one). Holders should call
        :meth:`heartbeat_lock` more often than that.
        """
        now, host, pid = time.time(), socket.gethostname(), os.getpid()

        def tx(conn: Any) -> bool:
            # Serialise acquirers of this name (a missing row cannot be locked FOR UPDATE).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"agro-lock-row:{name}",))
            row = _dict_cursor(conn).execute(
                "SELECT owner, pid, host, heartbeat FROM agro_locks WHERE name = %s", (name,)
            ).fetchone()
            if row is not None and row["owner"] != owner:
                dead = row["host"] == host and row["pid"] is not None and not is_alive(row["pid"])
                if not dead and now - row["heartbeat"] <= stale_after:
                    return False
                logger.warning(
                    "taking over stale lock %r from %s (pid %s on %s)", name, row["owner"], row["pid"], row["host"]
                )
            conn.execute(
                "INSERT INTO agro_locks (name, owner, pid, host, acquired, heartbeat) VALUES (%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, pid = EXCLUDED.pid, host = EXCLUDED.host, "
                "acquired = EXCLUDED.acquired, heartbeat = EXCLUDED.heartbeat",
                (name, owner, pid, host, now, now),
            )
            return True

        return self._write(tx, "acquire_lock")

    def heartbeat_lock(self, name: str, owner: str) -> bool:
        """Refresh the lock's heartbeat; False if ``owner`` no longer holds it."""
        n = self._write(
            lambda conn: conn.execute(
                "UPDATE agro_locks SET heartbeat = %s WHERE name = %s AND owner = %s", (time.time(), name, owner)
            ).rowcount,
            "heartbeat_lock",
        )
        return n == 1

    def release_lock(self, name: str, owner: str) -> bool:
        n = self._write(
            lambda conn: conn.execute("DELETE FROM agro_locks WHERE name = %s AND owner = %s", (name, owner)).rowcount,
            "release_lock",
        )
        return n == 1

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        row = self._read(
            lambda conn: _dict_cursor(conn).execute(
                "SELECT name, owner, pid, host, acquired, heartbeat FROM agro_locks WHERE name = %s", (name,)
            ).fetchone(),
            "lock_holder",
        )
        return dict(row) if row is not None else None
