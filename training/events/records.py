"""What every event store holds and returns: its records, errors and shared helpers, and the row mappers.

Both stores (:mod:`training.events.sqlite`, :mod:`training.events.postgres`) read rows whose columns have the same
names, so one mapper per record serves both (a ``sqlite3.Row`` and a psycopg dict row are both read by key).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from retrieval.errors import AgroUserError
from retrieval.types import Hit

__all__ = [
    "ChunkText",
    "FeedbackRecord",
    "JOB_STATES",
    "JobRecord",
    "PAGE",
    "QueryEvent",
    "ResultRecord",
    "Row",
    "StoreError",
    "StoreVersionError",
    "TERMINAL_STATES",
    "dedupe_key",
    "evaluation_from_row",
    "event_from_row",
    "feedback_from_row",
    "check_job_transition",
    "job_from_row",
    "job_update_sets",
    "lock_is_held",
    "promotion_from_row",
    "scan_filters",
    "new_run_id",
    "pid_alive",
    "query_event_from_hits",
]

logger = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
PAGE = 500  # rows per read when a store scans a table (tests lower it)


class StoreError(AgroUserError, RuntimeError):
    """The store cannot do what was asked; the message says why and what to do."""


class StoreVersionError(StoreError):
    """The database was written by a newer agro-mcp than this one."""


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, a psycopg ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One ranked hit of a query event (rank is 1-based)."""

    rank: int
    doc_id: str
    path: str
    start_line: int | None
    end_line: int | None
    chunk_hash: str | None = None
    fused_score: float | None = None
    rerank_score: float | None = None
    score: float | None = None
    bm25_rank: int | None = None
    dense_rank: int | None = None


@dataclass(frozen=True, slots=True)
class ChunkText:
    """A chunk's text, stored once per content hash."""

    hash: str
    text: str
    path: str | None = None
    language: str | None = None
    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class QueryEvent:
    """One search (or answer) and what it returned."""

    event_id: str
    ts: float
    corpus: str
    query: str
    k: int
    reranker_model: str | None = None
    reranking_used: bool = False
    fallback_reason: str | None = None
    latency_ms: float | None = None
    index_generation: str | None = None
    source: str = "search"
    results: tuple[ResultRecord, ...] = ()

    def result_by_doc_id(self, doc_id: str) -> ResultRecord | None:
        return next((r for r in self.results if r.doc_id == doc_id), None)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A stored feedback signal. ``created`` is False when the call repeated an existing record exactly."""

    feedback_id: str
    event_id: str
    ts: float
    signal: str
    doc_id: str | None = None
    rating: int | None = None
    path: str | None = None
    start_line: int | None = None
    end_line: int | None = None
    note: str | None = None
    created: bool = True


@dataclass(frozen=True, slots=True)
class JobRecord:
    run_id: str
    kind: str
    state: str
    progress: float
    message: str | None
    params: dict[str, Any]
    created: float
    updated: float
    pid: int | None
    host: str | None
    result: Any
    error: str | None
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


def dedupe_key(
    event_id: str,
    signal: str,
    doc_id: str | None,
    rating: int | None,
    path: str | None,
    start_line: int | None,
    end_line: int | None,
    note: str | None,
) -> str:
    return json.dumps([event_id, signal, doc_id, rating, path, start_line, end_line, note], ensure_ascii=False)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A logged query is training data, not an archive: beyond this the reranker (512 tokens with the passage) never
# reads it, and a pasted 20,000-character issue is not kept forever.
MAX_LOGGED_QUERY_CHARS = 4000
# Events deleted per transaction when compacting, so writers never wait long.
COMPACT_BATCH = 5000


def new_run_id(kind: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{kind}-{uuid.uuid4().hex[:6]}"


def query_event_from_hits(
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
) -> tuple[QueryEvent, list[ChunkText]]:
    """A new query event (fresh id, now) with its ranked results, and the texts of its hits: what every store's
    ``log_query`` writes. The query is kept to its first :data:`MAX_LOGGED_QUERY_CHARS` characters."""
    event = QueryEvent(
        event_id=uuid.uuid4().hex,
        ts=time.time(),
        corpus=corpus,
        query=query[:MAX_LOGGED_QUERY_CHARS],
        k=k,
        reranker_model=reranker_model,
        reranking_used=reranking_used,
        fallback_reason=fallback_reason,
        latency_ms=latency_ms,
        index_generation=index_generation,
        source=source,
        results=tuple(
            ResultRecord(
                rank=i,
                doc_id=h.chunk.doc_id,
                path=h.chunk.path,
                start_line=h.chunk.start_line,
                end_line=h.chunk.end_line,
                chunk_hash=h.chunk.hash,
                fused_score=h.fused_score,
                rerank_score=h.rerank_score,
                score=h.score,
                bm25_rank=h.bm25_rank,
                dense_rank=h.dense_rank,
            )
            for i, h in enumerate(hits, start=1)
        ),
    )
    texts = [ChunkText(h.chunk.hash, h.chunk.text, h.chunk.path, h.chunk.language, h.chunk.symbol) for h in hits]
    return event, texts


# --------------------------------------------------------------------------------------------------- row mappers
def event_from_row(row: Row, results: Iterable[Row]) -> QueryEvent:
    """A stored query event and its result rows (in rank order) as a :class:`QueryEvent`."""
    return QueryEvent(
        event_id=row["event_id"],
        ts=row["ts"],
        corpus=row["corpus"],
        query=row["query"],
        k=row["k"],
        reranker_model=row["reranker_model"],
        reranking_used=bool(row["reranking_used"]),
        fallback_reason=row["fallback_reason"],
        latency_ms=row["latency_ms"],
        index_generation=row["index_generation"],
        source=row["source"],
        results=tuple(
            ResultRecord(
                rank=r["rank"],
                doc_id=r["doc_id"],
                path=r["path"],
                start_line=r["start_line"],
                end_line=r["end_line"],
                chunk_hash=r["chunk_hash"],
                fused_score=r["fused_score"],
                rerank_score=r["rerank_score"],
                score=r["score"],
                bm25_rank=r["bm25_rank"],
                dense_rank=r["dense_rank"],
            )
            for r in results
        ),
    )


def feedback_from_row(row: Row, created: bool = True) -> FeedbackRecord:
    """A stored feedback row as a :class:`FeedbackRecord` (``created`` False when it repeated a stored one)."""
    return FeedbackRecord(
        feedback_id=row["feedback_id"],
        event_id=row["event_id"],
        ts=row["ts"],
        signal=row["signal"],
        doc_id=row["doc_id"],
        rating=row["rating"],
        path=row["path"],
        start_line=row["start_line"],
        end_line=row["end_line"],
        note=row["note"],
        created=created,
    )


def evaluation_from_row(row: Row) -> dict[str, Any]:
    """A stored evaluation row as a dict: id, ts, name, model, payload (decoded)."""
    return {
        "id": row["id"],
        "ts": row["ts"],
        "name": row["name"],
        "model": row["model"],
        "payload": json.loads(row["payload"]),
    }


def job_from_row(row: Row) -> JobRecord:
    """A stored job row as a :class:`JobRecord` (params and result decoded from JSON)."""
    return JobRecord(
        run_id=row["run_id"],
        kind=row["kind"],
        state=row["state"],
        progress=row["progress"],
        message=row["message"],
        params=json.loads(row["params"]),
        created=row["created"],
        updated=row["updated"],
        pid=row["pid"],
        host=row["host"],
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def promotion_from_row(row: Row) -> dict[str, Any]:
    """A stored promotion row as a dict: id, ts, decision, candidate, release, payload (decoded)."""
    return {
        "id": row["id"],
        "ts": row["ts"],
        "decision": row["decision"],
        "candidate": row["candidate"],
        "release": row["release"],
        "payload": json.loads(row["payload"]),
    }


def scan_filters(mark: str, corpus: str | None, since: float | None, prefix: str = "",
                 corpus_col: str = "corpus") -> tuple[list[str], list[Any]]:
    """The WHERE terms (``mark`` is the driver's placeholder) and their values that keep a scan to one corpus and
    to rows at or after ``since``; ``prefix`` qualifies the time column (``"f."``) and ``corpus_col`` names the
    corpus column."""
    where: list[str] = []
    args: list[Any] = []
    if corpus is not None:
        where.append(f"{corpus_col} = {mark}")
        args.append(corpus)
    if since is not None:
        where.append(f"{prefix}ts >= {mark}")
        args.append(since)
    return where, args


# --------------------------------------------------------------------------------------------------- jobs, locks
def job_update_sets(
    state: str | None,
    progress: float | None,
    message: str | None,
    result: Any,
    error: str | None,
    pid: int | None,
    mark: str,
) -> tuple[list[str], list[Any]]:
    """The ``column = <mark>`` assignments and their values for a job update: ``updated`` always, each field given,
    and ``pid`` when given or when the job starts running (this process). ``mark`` is the driver's placeholder.

    Raises:
        StoreError: for a state that is not one of :data:`JOB_STATES`.
    """
    if state is not None and state not in JOB_STATES:
        raise StoreError(f"job state expects one of {', '.join(JOB_STATES)}, but got {state!r}")
    sets, args = [f"updated = {mark}"], [time.time()]
    for col, value in (("state", state), ("progress", progress), ("message", message), ("error", error)):
        if value is not None:
            sets.append(f"{col} = {mark}")
            args.append(value)
    if result is not None:
        sets.append(f"result = {mark}")
        args.append(json.dumps(result, ensure_ascii=False))
    if pid is not None or state == "running":
        sets.append(f"pid = {mark}")
        args.append(pid if pid is not None else os.getpid())
    return sets, args


def check_job_transition(run_id: str, current: str | None, state: str | None) -> None:
    """Refuse an update of an unknown job (``current`` None) or a change of a finished job's state."""
    if current is None:
        raise StoreError(f"Unknown run_id {run_id!r}: list jobs with `agro jobs` or reranker_admin status")
    if state is not None and current in TERMINAL_STATES and state != current:
        raise StoreError(f"job {run_id} already {current}; cannot move it to {state}")


def lock_is_held(name: str, row: Row | None, owner: str, now: float, host: str, stale_after: float,
                 is_alive: Callable[[int], bool]) -> bool:
    """Whether lock ``name`` (its stored ``row``: owner, pid, host, heartbeat) is held by another owner that is still
    alive. A stale holder (its process on this host gone, or a heartbeat older than ``stale_after`` seconds) is not:
    the takeover is logged."""
    if row is None or row["owner"] == owner:
        return False
    dead = row["host"] == host and row["pid"] is not None and not is_alive(row["pid"])
    if not dead and now - row["heartbeat"] <= stale_after:
        return True
    logger.warning("taking over stale lock %r from %s (pid %s on %s)", name, row["owner"], row["pid"], row["host"])
    return False
