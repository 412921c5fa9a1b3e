"""What both event stores do the same way, whatever their SQL: the methods built on each store's own primitives.

A store subclasses :class:`StoreBase` and implements ``close``, ``insert_event``, ``_chunk_column``,
``_store_feedback`` and ``list_evaluations``; the SQL-independent rest is here once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Self

from retrieval.types import Hit
from training.events.records import ChunkText, FeedbackRecord, QueryEvent, StoreError, query_event_from_hits

__all__ = ["StoreBase"]


class StoreBase:
    """The event-store methods that need no SQL of their own."""

    # ------------------------------------------------------------------------- implemented by each store
    def close(self) -> None:
        raise NotImplementedError

    def insert_event(self, event: QueryEvent, texts: Iterable[ChunkText] = (),
                     feedback: Iterable[FeedbackRecord] = (), durable: bool = True) -> bool:
        raise NotImplementedError

    def list_evaluations(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _chunk_column(self, hashes: Iterable[str], column: str) -> dict[str, Any]:
        """``hash -> column`` of the stored chunk texts among ``hashes`` (missing ones absent)."""
        raise NotImplementedError

    def _store_feedback(self, record: FeedbackRecord) -> FeedbackRecord:
        """Insert ``record`` durably, or return the stored record it repeats exactly (``created`` False)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- shared
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def chunk_texts(self, hashes: Iterable[str]) -> dict[str, str]:
        """Texts for many hashes at once; missing hashes are absent from the result."""
        return self._chunk_column(hashes, "text")

    def chunk_symbols(self, hashes: Iterable[str]) -> dict[str, str | None]:
        """The symbol stored with each chunk text (``None`` for a chunk without one); missing hashes are absent."""
        return self._chunk_column(hashes, "symbol")

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
        return self._store_feedback(record)

    def latest_evaluation(self, name: str | None = None) -> dict[str, Any] | None:
        rows = self.list_evaluations(limit=1, name=name)
        return rows[0] if rows else None
