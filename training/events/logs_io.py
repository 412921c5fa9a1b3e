"""Import and export of query logs in the seeds' JSONL format (``data/logs/queries.jsonl``).

The seeds wrote one JSON object a line:

- ``{"type": "query", "event_id", "ts", "query_raw", "retrieval": [{"doc_id", "score", "text", "clicked"}],
  "ground_truth_refs", "latency_ms", ...}``
- ``{"type": "feedback", "event_id", "ts", "feedback": {"signal", "doc_id"?, "note"?}}`` with signal
  ``click`` / ``noclick`` / ``thumbsup`` / ``thumbsdown`` / ``star1``..``star5`` / ``note``.

Import also accepts the flat variants (``query``, ``corpus``/``repo``, ``signal`` at top level, ``type: rating``
with ``rating``, our own signal names). A retrieval item's ``clicked: true`` becomes a ``click`` and
``ground_truth_refs`` become ``correct_location`` feedback, so the miners see what the seeds' miner saw.
``note`` and ``noclick`` feedback is kept under those signal names (the live tool does not accept them).

Each line is imported whole or not at all; malformed lines are counted and skipped. An event keeps its
``event_id`` unless the store already holds a different event under it; re-importing the same file adds nothing.

JSONL here is an export format, never the store: every file is written new and then renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from retrieval.atomic import atomic_write
from retrieval.errors import AgroError
from retrieval.types import chunk_hash, parse_doc_id
from training.events.feedback import MAX_NOTE_CHARS, FeedbackError, submit_feedback
from training.events.records import ChunkText, FeedbackRecord, QueryEvent, ResultRecord
from training.events.store import EventStore

__all__ = ["ExportReport", "ImportReport", "export_queries", "import_logs", "write_jsonl_atomic"]

logger = logging.getLogger(__name__)

_MAX_ERRORS = 20
_IMPORT_NS = uuid.UUID("6f1c1d0e-6a57-4c8e-9a57-a9f0c3e1b2d4")
_IMPORT_ONLY_SIGNALS = frozenset({"note", "noclick"})
_SIGNAL_ALIASES = {
    "thumbsup": "thumbs_up",
    "thumbs_up": "thumbs_up",
    "up": "thumbs_up",
    "thumbsdown": "thumbs_down",
    "thumbs_down": "thumbs_down",
    "down": "thumbs_down",
    "click": "click",
    "used": "used",
    "rating": "rating",
    "correct_location": "correct_location",
    "note": "note",
    "noclick": "noclick",
}
_EXPORT_SIGNALS = {"thumbs_up": "thumbsup", "thumbs_down": "thumbsdown"}


@dataclass(slots=True)
class ImportReport:
    """What an import did. ``errors`` holds the first 20 problems as ``line N: reason``."""

    queries: int = 0
    feedback: int = 0
    duplicates: int = 0
    skipped_malformed: int = 0
    errors: list[str] = field(default_factory=list)

    def _skip(self, lineno: int, reason: str) -> None:
        self.skipped_malformed += 1
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(f"line {lineno}: {reason}")


@dataclass(frozen=True, slots=True)
class ExportReport:
    path: Path
    queries: int
    feedback: int


class _Malformed(AgroError, ValueError):
    pass


# --------------------------------------------------------------------------------------------------- helpers
def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSONL to a new file beside ``path``, fsync it, then rename it over ``path``.

    Readers see the old file or the complete new one, never a partial one. Returns the number of rows.
    """
    n = 0
    with atomic_write(Path(path)) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_ts(value: Any) -> float:
    if value is None:
        return time.time()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Malformed(f"ts {value!r} is neither epoch seconds nor an ISO 8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise _Malformed(f"ts {value!r} is neither epoch seconds nor an ISO 8601 time")


def _opt_str(obj: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise _Malformed(f"{key} expects a string, but got {type(value).__name__}")
        return value
    return None


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _Malformed(f"{key} expects an integer, but got {value!r}")
    return int(value)


def _opt_float(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Malformed(f"{key} expects a number, but got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------- import
@dataclass(slots=True)
class _ParsedQuery:
    event: QueryEvent
    texts: list[ChunkText]
    clicked: list[str]
    ground_truth: list[str]


def _parse_result(rank: int, item: Any) -> tuple[ResultRecord, ChunkText | None]:
    if not isinstance(item, dict):
        raise _Malformed(f"retrieval[{rank - 1}] expects an object, but got {type(item).__name__}")
    doc_id = _opt_str(item, "doc_id", "id")
    path = _opt_str(item, "path", "file_path")
    start, end = _opt_int(item, "start_line"), _opt_int(item, "end_line")
    if doc_id is not None and (path is None or start is None or end is None):
        try:
            path, start, end = parse_doc_id(doc_id)
        except ValueError:
            path = path or doc_id  # a bare path or an opaque id: keep it, without lines
    if path is None:
        raise _Malformed(f"retrieval[{rank - 1}] has neither doc_id nor path")
    if doc_id is None:
        doc_id = f"{path}:{start}-{end}" if start is not None and end is not None else path
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        raise _Malformed(f"retrieval[{rank - 1}].text expects a string")
    h = _opt_str(item, "chunk_hash", "hash") or (chunk_hash(text) if text else None)
    result = ResultRecord(
        rank=rank,
        doc_id=doc_id,
        path=path,
        start_line=start,
        end_line=end,
        chunk_hash=h,
        fused_score=_opt_float(item, "fused_score"),
        rerank_score=_opt_float(item, "rerank_score"),
        score=_opt_float(item, "score"),
        bm25_rank=_opt_int(item, "bm25_rank"),
        dense_rank=_opt_int(item, "dense_rank"),
    )
    chunk = (
        ChunkText(h, text, path, _opt_str(item, "language"), _opt_str(item, "symbol")) if text and h else None
    )
    return result, chunk


def _parse_query(obj: dict[str, Any], default_corpus: str) -> _ParsedQuery:
    query = _opt_str(obj, "query", "query_raw", "q")
    if query is None:
        raise _Malformed("query line has no query (query / query_raw)")
    retrieval = obj.get("retrieval", obj.get("results", []))
    if retrieval is None:
        retrieval = []
    if not isinstance(retrieval, list):
        raise _Malformed("retrieval expects a list")
    results, texts, clicked = [], [], []
    for rank, item in enumerate(retrieval, start=1):
        result, chunk = _parse_result(rank, item)
        results.append(result)
        if chunk is not None:
            texts.append(chunk)
        if item.get("clicked") is True:
            clicked.append(result.doc_id)
    gt = obj.get("ground_truth_refs") or []
    if not isinstance(gt, list) or not all(isinstance(g, str) for g in gt):
        raise _Malformed("ground_truth_refs expects a list of doc_id strings")
    k = _opt_int(obj, "k")
    event = QueryEvent(
        event_id=_opt_str(obj, "event_id") or uuid.uuid4().hex,
        ts=_parse_ts(obj.get("ts")),
        corpus=_opt_str(obj, "corpus", "repo") or default_corpus,
        query=query,
        k=k if k is not None else len(results),
        reranker_model=_opt_str(obj, "reranker_model"),
        reranking_used=bool(obj.get("reranking_used", False)),
        fallback_reason=_opt_str(obj, "fallback_reason", "reranker_fallback_reason"),
        latency_ms=_opt_float(obj, "latency_ms"),
        index_generation=_opt_str(obj, "index_generation"),
        source="import",
        results=tuple(results),
    )
    return _ParsedQuery(event, texts, clicked, gt)


def _same_event(a: QueryEvent, b: QueryEvent) -> bool:
    return (
        a.query == b.query
        and a.corpus == b.corpus
        and abs(a.ts - b.ts) < 1e-3
        and [r.doc_id for r in a.results] == [r.doc_id for r in b.results]
    )


def _derived_feedback(parsed: _ParsedQuery, event_id: str) -> list[FeedbackRecord]:
    """click / correct_location records implied by a seeds query line's ``clicked`` and ``ground_truth_refs``."""
    out = []
    by_id = {r.doc_id: r for r in parsed.event.results}
    for signal, ids in (("click", parsed.clicked), ("correct_location", parsed.ground_truth)):
        for doc_id in dict.fromkeys(ids):
            r = by_id.get(doc_id)
            if r is not None:
                path, start, end = r.path, r.start_line, r.end_line
            else:
                try:
                    path, start, end = parse_doc_id(doc_id)
                except ValueError:
                    continue  # an opaque ground-truth ref we cannot locate
                if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
                    continue
            out.append(
                FeedbackRecord(
                    feedback_id=uuid.uuid4().hex,
                    event_id=event_id,
                    ts=parsed.event.ts,
                    signal=signal,
                    doc_id=doc_id,
                    path=path,
                    start_line=start,
                    end_line=end,
                )
            )
    return out


def _feedback_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Flatten a feedback/rating line into submit_feedback's fields (signal mapped to ours)."""
    inner = obj.get("feedback")
    if inner is None:
        inner = obj
    if not isinstance(inner, dict):
        raise _Malformed("feedback expects an object")
    raw_signal = _opt_str(inner, "signal") or _opt_str(obj, "signal")
    rating = _opt_int(inner, "rating") if "rating" in inner else _opt_int(obj, "rating")
    if raw_signal is None and (obj.get("type") == "rating" or rating is not None):
        raw_signal = "rating"
    if raw_signal is None:
        raise _Malformed("feedback has no signal")
    sig = raw_signal.strip().lower()
    if sig.startswith("star") and sig[4:].isdigit():
        stars = int(sig[4:])
        if rating is not None and rating != stars:
            raise _Malformed(f"signal {raw_signal!r} disagrees with rating {rating}")
        sig, rating = "rating", stars
    if sig not in _SIGNAL_ALIASES:
        raise _Malformed(f"unknown signal {raw_signal!r}")
    return {
        "signal": _SIGNAL_ALIASES[sig],
        "doc_id": _opt_str(inner, "doc_id"),
        "rating": rating,
        "path": _opt_str(inner, "path"),
        "start_line": _opt_int(inner, "start_line"),
        "end_line": _opt_int(inner, "end_line"),
        "note": _opt_str(inner, "note") or _opt_str(obj, "note"),
        "ts": _parse_ts(obj.get("ts", inner.get("ts"))),
    }


def _import_feedback(store: EventStore, event_id: str, fields: dict[str, Any]) -> FeedbackRecord:
    signal = fields.pop("signal")
    if signal != "correct_location" and fields["doc_id"] is not None:
        # Our own exports name a hit by doc_id; a location beside it is derived from the results.
        fields.update(path=None, start_line=None, end_line=None)
    if signal not in _IMPORT_ONLY_SIGNALS:
        return submit_feedback(store, event_id, signal, corpus_root=None, **fields)
    event = store.get_event(event_id)
    if event is None:
        raise FeedbackError(f"Unknown event_id {event_id!r}")
    note, doc_id = fields["note"], fields["doc_id"]
    if signal == "note" and not note:
        raise FeedbackError("signal 'note' without a note")
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise FeedbackError(f"note is {len(note)} characters; the limit is {MAX_NOTE_CHARS}")
    hit = event.result_by_doc_id(doc_id) if doc_id is not None else None
    if doc_id is not None and hit is None:
        raise FeedbackError(f"doc_id {doc_id!r} was not in event {event_id}'s results")
    return store.add_feedback(
        event_id,
        signal,
        doc_id=doc_id,
        path=hit.path if hit else None,
        start_line=hit.start_line if hit else None,
        end_line=hit.end_line if hit else None,
        note=note,
        ts=fields["ts"],
    )


def import_logs(store: EventStore, path: Path, *, default_corpus: str = "default") -> ImportReport:
    """Import a seeds-format ``queries.jsonl`` into the store.

    Query lines are imported first, then feedback and rating lines, so feedback may precede its query.

    Args:
        store: The event store.
        path: The JSONL file.
        default_corpus: Corpus for query lines that name none (the seeds' lines do not).
    """
    report = ImportReport()
    others: list[tuple[int, dict[str, Any]]] = []
    id_map: dict[str, str] = {}
    with Path(path).open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                report._skip(lineno, f"not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                report._skip(lineno, "not a JSON object")
                continue
            kind = obj.get("type")
            if kind in ("feedback", "rating"):
                others.append((lineno, obj))
                continue
            if kind != "query":
                report._skip(lineno, f"unknown type {kind!r} (expected query, feedback or rating)")
                continue
            try:
                parsed = _parse_query(obj, default_corpus)
            except _Malformed as exc:
                report._skip(lineno, str(exc))
                continue
            original_id = parsed.event.event_id
            if store.insert_event(parsed.event, parsed.texts, _derived_feedback(parsed, original_id)):
                report.queries += 1
                continue
            existing = store.get_event(original_id)
            if existing is not None and _same_event(existing, parsed.event):
                report.duplicates += 1
                continue
            # The id is taken by a different event: derive a stable new one, so a re-import finds it again.
            e = parsed.event
            new_id = uuid.uuid5(_IMPORT_NS, f"{original_id}|{e.corpus}|{e.ts!r}|{e.query}").hex
            id_map[original_id] = new_id
            event = QueryEvent(**{**_event_fields(e), "event_id": new_id})
            if store.insert_event(event, parsed.texts, _derived_feedback(parsed, new_id)):
                report.queries += 1
                logger.info("imported event %s under new id %s (the id was taken)", original_id, new_id)
            else:
                report.duplicates += 1

    for lineno, obj in others:
        try:
            event_id = _opt_str(obj, "event_id")
            if event_id is None:
                raise _Malformed("feedback line has no event_id")
            fields = _feedback_fields(obj)
            record = _import_feedback(store, id_map.get(event_id, event_id), fields)
        except (_Malformed, FeedbackError) as exc:
            report._skip(lineno, str(exc))
            continue
        if record.created:
            report.feedback += 1
        else:
            report.duplicates += 1
    logger.info(
        "imported %d queries and %d feedback from %s; %d duplicates, %d malformed lines skipped",
        report.queries,
        report.feedback,
        path,
        report.duplicates,
        report.skipped_malformed,
    )
    return report


def _event_fields(event: QueryEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in QueryEvent.__slots__}


# --------------------------------------------------------------------------------------------------- export
def _query_row(store: EventStore, event: QueryEvent) -> dict[str, Any]:
    texts = store.chunk_texts(r.chunk_hash for r in event.results if r.chunk_hash)
    retrieval = []
    for r in event.results:
        item: dict[str, Any] = {
            "doc_id": r.doc_id,
            "path": r.path,
            "start_line": r.start_line,
            "end_line": r.end_line,
            "score": r.score,
            "fused_score": r.fused_score,
            "rerank_score": r.rerank_score,
            "bm25_rank": r.bm25_rank,
            "dense_rank": r.dense_rank,
            "chunk_hash": r.chunk_hash,
        }
        if r.chunk_hash in texts:
            item["text"] = texts[r.chunk_hash]
        retrieval.append(item)
    return {
        "type": "query",
        "event_id": event.event_id,
        "ts": _iso(event.ts),
        "query_raw": event.query,
        "query": event.query,
        "corpus": event.corpus,
        "repo": event.corpus,
        "k": event.k,
        "retrieval": retrieval,
        "latency_ms": event.latency_ms,
        "reranker_model": event.reranker_model,
        "reranking_used": event.reranking_used,
        "fallback_reason": event.fallback_reason,
        "index_generation": event.index_generation,
        "source": event.source,
    }


def _feedback_row(fb: FeedbackRecord) -> dict[str, Any]:
    if fb.signal == "rating" and fb.rating is not None:
        signal = f"star{fb.rating}"
    else:
        signal = _EXPORT_SIGNALS.get(fb.signal, fb.signal)
    inner = {"signal": signal, "doc_id": fb.doc_id, "rating": fb.rating, "note": fb.note}
    if fb.signal == "correct_location":
        inner.update(path=fb.path, start_line=fb.start_line, end_line=fb.end_line)
    return {
        "type": "feedback",
        "event_id": fb.event_id,
        "feedback_id": fb.feedback_id,
        "ts": _iso(fb.ts),
        "feedback": {k: v for k, v in inner.items() if v is not None},
    }


def export_queries(store: EventStore, out_path: Path, *, corpus: str | None = None) -> ExportReport:
    """Write every query event, each followed by its feedback, as seeds-format JSONL (atomically)."""
    counts = {"queries": 0, "feedback": 0}

    def rows() -> Iterator[dict[str, Any]]:
        for event in store.iter_events(corpus=corpus):
            counts["queries"] += 1
            yield _query_row(store, event)
            for fb in store.feedback_for_event(event.event_id):
                counts["feedback"] += 1
                yield _feedback_row(fb)

    write_jsonl_atomic(Path(out_path), rows())
    return ExportReport(Path(out_path), counts["queries"], counts["feedback"])
