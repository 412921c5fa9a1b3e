"""The event store's interface, which the SQLite and PostgreSQL stores both implement, and the factory that opens one.

Nothing outside :mod:`training.events` needs to know which store is live: code takes an :class:`EventStore` and
gets its records (:mod:`training.events.records`) back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from retrieval.types import Hit
from training.events.records import ChunkText, FeedbackRecord, JobRecord, QueryEvent, StoreError, pid_alive

__all__ = ["EventStore", "open_event_store"]


class EventStore(Protocol):
    """Durable store for the learning loop: query events, feedback, chunk texts, evaluations, promotions, jobs and
    named locks. Safe to share across threads and processes; every write is committed before its call returns
    (except a search's own event, see ``log_query``)."""

    def close(self) -> None: ...

    def __enter__(self) -> EventStore: ...

    def __exit__(self, *exc: object) -> None: ...

    def schema_version(self) -> int: ...

    def register_corpus(self, corpus: str, root: Path | str | None) -> None:
        """Record a corpus and its root folder (the root is updated if it changed)."""

    def corpus_root(self, corpus: str) -> Path | None: ...

    def list_corpora(self) -> list[tuple[str, Path | None]]: ...

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

    def insert_event(
        self,
        event: QueryEvent,
        texts: Iterable[ChunkText] = (),
        feedback: Iterable[FeedbackRecord] = (),
        durable: bool = True,
    ) -> bool:
        """Store a ready-made event (imports), its chunk texts and feedback in one transaction."""

    def get_event(self, event_id: str) -> QueryEvent | None: ...

    def iter_events(self, corpus: str | None = None, since: float | None = None) -> Iterator[QueryEvent]:
        """Events in insertion order, read in pages so a long scan never holds the database."""

    def chunk_text(self, hash: str) -> str | None: ...

    def chunk_texts(self, hashes: Iterable[str]) -> dict[str, str]:
        """Texts for many hashes at once; missing hashes are absent from the result."""

    def chunk_symbols(self, hashes: Iterable[str]) -> dict[str, str | None]:
        """The symbol stored with each chunk text (``None`` for a chunk without one); missing hashes are absent."""

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
        """Store one feedback signal, committed before return. An exact repeat returns the existing record."""

    def feedback_for_event(self, event_id: str) -> list[FeedbackRecord]: ...

    def iter_feedback(
        self,
        corpus: str | None = None,
        since: float | None = None,
        signals: Iterable[str] | None = None,
    ) -> Iterator[FeedbackRecord]:
        """Feedback in insertion order, optionally filtered by the event's corpus, time and signal."""

    def compact_events(self, older_than: float, vacuum: bool = False) -> dict[str, int]:
        """Delete query events logged before ``older_than`` that have no feedback, their results and the chunk
        texts nothing refers to any more; return ``{"events": n, "chunk_texts": n}``. ``vacuum`` gives the space
        back to the file system where the backend can (SQLite)."""

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for `status` and tests)."""

    def integrity_check(self) -> str:
        """'ok' when the stored data is sound."""

    def add_evaluation(self, name: str, model: str | None, payload: dict[str, Any]) -> int: ...

    def list_evaluations(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        """Newest first: dicts with id, ts, name, model, payload."""

    def latest_evaluation(self, name: str | None = None) -> dict[str, Any] | None: ...

    def add_promotion(
        self, decision: str, candidate: str | None, release: str | None, payload: dict[str, Any]
    ) -> int:
        """Record a promotion decision (promoted, refused, rollback…) with its figures."""

    def list_promotions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: dicts with id, ts, decision, candidate, release, payload."""

    def create_job(self, kind: str, params: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Create a queued job and return its run_id (``YYYYmmdd-HHMMSS-<kind>-<hex>``)."""

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
        """Update the given fields of a job. A finished job's state cannot change."""

    def request_cancel(self, run_id: str) -> JobRecord | None:
        """Ask a job to stop; a queued job is cancelled at once, a running one when it next checks."""

    def get_job(self, run_id: str) -> JobRecord | None: ...

    def list_jobs(self, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Newest first."""

    def reap_dead_jobs(self) -> list[str]:
        """Mark running jobs whose process on this host has died as failed; return their run_ids."""

    def append_job_log(self, run_id: str, line: str) -> None: ...

    def job_logs(self, run_id: str, tail: int = 200) -> list[str]: ...

    def acquire_lock(
        self,
        name: str,
        owner: str,
        *,
        stale_after: float = 900.0,
        is_alive: Callable[[int], bool] = pid_alive,
    ) -> bool:
        """Take the named lock for ``owner`` (e.g. a run_id); True if now held by it."""

    def heartbeat_lock(self, name: str, owner: str) -> bool:
        """Refresh the lock's heartbeat; False if ``owner`` no longer holds it."""

    def release_lock(self, name: str, owner: str) -> bool: ...

    def lock_holder(self, name: str) -> dict[str, Any] | None: ...


def open_event_store(
    home: Path,
    backend: str = "embedded",
    database_url: str | None = None,
    pool_size: int = 8,
) -> EventStore:
    """The event store for a backend: a :class:`training.events.sqlite.SqliteEventStore` on ``home / "agro.db"`` or a
    :class:`training.events.postgres.PgEventStore` on the process-wide pool for ``database_url``.

    Raises :class:`StoreError` for an unknown backend, :class:`retrieval.pgdb.DatabaseError` when PostgreSQL is not
    configured or unreachable, and :class:`StoreVersionError` for a schema newer than this agro-mcp.
    """
    if backend == "embedded":
        from training.events.sqlite import SqliteEventStore

        return SqliteEventStore(Path(home) / "agro.db")
    if backend == "postgres":
        from retrieval.pgdb import open_database
        from training.events.postgres import PgEventStore

        return PgEventStore(open_database(database_url, pool_size))
    raise StoreError(f"AGRO_BACKEND expects 'embedded' or 'postgres', but got {backend!r}")
