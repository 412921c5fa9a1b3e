"""The SQLite event store's schema: its migrations, in order (``agro.db``'s ``schema_version`` counts them)."""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

# --------------------------------------------------------------------------------------------------- schema
# Append only: never edit a migration that has shipped, add a new one. Each runs in one transaction.
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: initial schema
        """CREATE TABLE corpora (
            id TEXT PRIMARY KEY,
            root TEXT,
            created REAL NOT NULL)""",
        """CREATE TABLE query_events (
            event_id TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            corpus TEXT NOT NULL,
            query TEXT NOT NULL,
            k INTEGER NOT NULL,
            reranker_model TEXT,
            reranking_used INTEGER NOT NULL DEFAULT 0,
            fallback_reason TEXT,
            latency_ms REAL,
            index_generation TEXT,
            source TEXT NOT NULL DEFAULT 'search')""",
        "CREATE INDEX query_events_ts ON query_events(ts)",
        "CREATE INDEX query_events_corpus_ts ON query_events(corpus, ts)",
        """CREATE TABLE query_results (
            event_id TEXT NOT NULL REFERENCES query_events(event_id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            doc_id TEXT NOT NULL,
            chunk_hash TEXT,
            path TEXT NOT NULL,
            start_line INTEGER,
            end_line INTEGER,
            fused_score REAL,
            rerank_score REAL,
            score REAL,
            bm25_rank INTEGER,
            dense_rank INTEGER,
            PRIMARY KEY (event_id, rank)) WITHOUT ROWID""",
        """CREATE TABLE chunk_texts (
            hash TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            path TEXT,
            language TEXT,
            symbol TEXT)""",
        """CREATE TABLE feedback (
            feedback_id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL REFERENCES query_events(event_id) ON DELETE CASCADE,
            ts REAL NOT NULL,
            signal TEXT NOT NULL,
            doc_id TEXT,
            rating INTEGER,
            path TEXT,
            start_line INTEGER,
            end_line INTEGER,
            note TEXT,
            dedupe_key TEXT NOT NULL UNIQUE)""",
        "CREATE INDEX feedback_event ON feedback(event_id)",
        "CREATE INDEX feedback_ts ON feedback(ts)",
        """CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            name TEXT NOT NULL,
            model TEXT,
            payload TEXT NOT NULL)""",
        "CREATE INDEX evaluations_name_ts ON evaluations(name, ts)",
        """CREATE TABLE promotions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            decision TEXT NOT NULL,
            candidate TEXT,
            release TEXT,
            payload TEXT NOT NULL)""",
        """CREATE TABLE jobs (
            run_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
            progress REAL NOT NULL DEFAULT 0,
            message TEXT,
            params TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL,
            updated REAL NOT NULL,
            pid INTEGER,
            host TEXT,
            result TEXT,
            error TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX jobs_created ON jobs(created)",
        """CREATE TABLE job_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES jobs(run_id) ON DELETE CASCADE,
            ts REAL NOT NULL,
            line TEXT NOT NULL)""",
        "CREATE INDEX job_logs_run ON job_logs(run_id, id)",
        """CREATE TABLE locks (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            pid INTEGER,
            host TEXT,
            acquired REAL NOT NULL,
            heartbeat REAL NOT NULL)""",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)
