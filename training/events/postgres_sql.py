"""The PostgreSQL event store's schema (migrations of the ``events`` component) and the SQL its parts share."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["COMPONENT", "MIGRATIONS", "SCHEMA_VERSION"]

COMPONENT = "events"


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
