"""Feedback validation and submission: the one function the MCP tool, the CLI and the importer call.

Rules (DESIGN.md section 4):

- ``click`` and ``used`` name one hit: ``doc_id`` is required and must be one of the event's results.
- ``thumbs_up``, ``thumbs_down`` and ``rating`` may name one hit (``doc_id`` in the results) or, with no
  ``doc_id``, judge the whole answer/result list of the event.
- ``rating`` needs ``rating`` in 1..5; no other signal takes a rating.
- ``correct_location`` names where the answer really was: ``doc_id`` ``path:start-end`` or ``path`` +
  ``start_line`` + ``end_line``; it may lie outside the results, but must be a file inside the corpus root with
  at least ``end_line`` lines, and (live faces) one the corpus's index holds: no answer tells whether an
  unindexed file exists.
- ``path``/``start_line``/``end_line`` are only for ``correct_location``; other signals name a hit by ``doc_id``.
- ``note`` (any signal) is at most :data:`MAX_NOTE_CHARS` characters.

An exact repeat of an accepted call returns the stored record (``created=False``) instead of adding a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path, PurePosixPath

from retrieval.errors import AgroUserError
from retrieval.redact import clip
from retrieval.types import parse_doc_id
from training.events.records import FeedbackRecord, QueryEvent
from training.events.store import EventStore

__all__ = ["FeedbackError", "MAX_NOTE_CHARS", "SIGNALS", "submit_feedback", "count_lines"]

logger = logging.getLogger(__name__)

SIGNALS = ("click", "used", "thumbs_up", "thumbs_down", "rating", "correct_location")
MAX_NOTE_CHARS = 2000
_NEEDS_DOC_ID = frozenset({"click", "used"})
_MAX_LISTED_IDS = 10


class FeedbackError(AgroUserError, ValueError):
    """Feedback that cannot be accepted; the message says how to fix the call."""


def _valid_ids_hint(event: QueryEvent) -> str:
    ids = [r.doc_id for r in event.results[:_MAX_LISTED_IDS]]
    if not ids:
        return "that event returned no results"
    more = len(event.results) - len(ids)
    return "valid ids: " + ", ".join(ids) + (f" (and {more} more)" if more > 0 else "")


def count_lines(path: Path) -> int:
    """Number of lines in a file, counting a last line without a newline."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _check_span(start_line: object, end_line: object) -> tuple[int, int]:
    for name, value in (("start_line", start_line), ("end_line", end_line)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise FeedbackError(f"{name} expects an integer line number (1-based), but got {value!r}")
    start_line, end_line = int(start_line), int(end_line)  # type: ignore[call-overload]
    if start_line < 1 or end_line < start_line:
        raise FeedbackError(f"line range must satisfy 1 <= start_line <= end_line, but got {start_line}-{end_line}")
    return start_line, end_line


def _relative_path(raw: str, root: Path | None) -> str:
    """A POSIX path relative to the corpus root, or FeedbackError if it is not plainly inside it."""
    if not raw or raw.strip() != raw or "\x00" in raw:
        raise FeedbackError(f"path expects a file path relative to the corpus root, but got {raw!r}")
    p = PurePosixPath(raw)
    if p.is_absolute():
        if root is None:
            raise FeedbackError(f"path {raw!r} is absolute: pass it relative to the corpus root")
        try:
            p = PurePosixPath(Path(raw).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            raise FeedbackError(
                f"path {raw!r} is outside the corpus root {str(root)!r}: pass a path inside it, relative to it"
            ) from None
    if ".." in p.parts:
        raise FeedbackError(f"path {raw!r} leaves the corpus root ('..'): pass a path inside it")
    rel = p.as_posix()
    if rel in ("", "."):
        raise FeedbackError(f"path expects a file inside the corpus, but got {raw!r}")
    return rel


def _check_location(
    event: QueryEvent,
    path: str,
    start_line: int,
    end_line: int,
    corpus_root: Callable[[str], Path | None] | None,
    indexed_files: Callable[[str], Collection[str]] | None = None,
) -> str:
    """Validate a correct_location against the corpus's index and disk; return the normalised relative path.

    With ``indexed_files`` only a file of the corpus's index is accepted, and a file that is not indexed gets the
    same answer whether it exists or not: feedback is no way to learn which files exist (``.env``, ``id_rsa``).
    """
    if corpus_root is None:
        # No filesystem to check against (offline import): syntax only.
        return _relative_path(path, None)
    root = corpus_root(event.corpus)
    if root is None:
        raise FeedbackError(
            f"Cannot check correct_location: corpus {event.corpus!r} has no known root folder. "
            f"Index it first: agro index /path/to/repo --corpus {event.corpus}"
        )
    rel = _relative_path(path, root)
    if indexed_files is not None and rel not in indexed_files(event.corpus):
        raise FeedbackError(
            f"path {clip(rel)} is not an indexed file of corpus {event.corpus!r}: pass a file that rag_search can "
            "return (its path as in a hit's doc_id); if it is new, refresh the index first"
        )
    root_resolved = root.resolve()
    target = (root_resolved / rel).resolve()
    if not target.is_relative_to(root_resolved):
        raise FeedbackError(f"path {path!r} resolves outside the corpus root {str(root)!r} (symlink?)")
    if not target.is_file():
        raise FeedbackError(f"path {rel!r} does not exist in corpus {event.corpus!r} (root {str(root)!r})")
    n = count_lines(target)
    if end_line > n:
        raise FeedbackError(f"end_line {end_line} is beyond the end of {rel!r}, which has {n} lines")
    return rel


def submit_feedback(
    store: EventStore,
    event_id: str,
    signal: str,
    *,
    doc_id: str | None = None,
    rating: int | None = None,
    path: str | None = None,
    start_line: int | None = None,
    end_line: int | None = None,
    note: str | None = None,
    corpus_root: Callable[[str], Path | None] | None = None,
    indexed_files: Callable[[str], Collection[str]] | None = None,
    ts: float | None = None,
) -> FeedbackRecord:
    """Validate feedback against the event it names and store it durably.

    Args:
        store: The event store.
        event_id: The ``event_id`` returned by ``rag_search`` / ``rag_answer``.
        signal: One of :data:`SIGNALS`.
        doc_id: ``path:start-end`` of the hit the signal is about.
        rating: 1..5, for ``signal="rating"`` only.
        path, start_line, end_line: the right location, for ``correct_location`` (or give ``doc_id``).
        note: Free text, at most :data:`MAX_NOTE_CHARS` characters.
        corpus_root: Maps a corpus id to its root folder, to check ``correct_location`` on disk. Every live face
            must pass it; ``None`` skips the disk checks (offline imports only).
        indexed_files: Maps a corpus id to the relative paths of its indexed files; a ``correct_location`` must
            name one of them. Every live face passes it.
        ts: Timestamp to record (imports); defaults to now.

    Returns:
        The stored record; ``created`` is False for an exact repeat of earlier feedback.

    Raises:
        FeedbackError: the feedback is invalid; the message says how to fix it.
    """
    if signal not in SIGNALS:
        raise FeedbackError(f"signal expects one of {', '.join(SIGNALS)}, but got {signal!r}")
    event = store.get_event(event_id) if isinstance(event_id, str) and event_id else None
    if event is None:
        raise FeedbackError(
            f"Unknown event_id {event_id!r}: pass the event_id returned by rag_search or rag_answer"
        )
    if note is not None:
        if not isinstance(note, str):
            raise FeedbackError(f"note expects a string, but got {type(note).__name__}")
        if len(note) > MAX_NOTE_CHARS:
            raise FeedbackError(f"note is {len(note)} characters; the limit is {MAX_NOTE_CHARS}: shorten it")
        note = note or None

    if signal == "rating":
        if rating is None:
            raise FeedbackError("signal 'rating' needs rating: an integer from 1 (useless) to 5 (exactly right)")
        if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
            raise FeedbackError(f"rating expects an integer from 1 to 5, but got {rating!r}")
    elif rating is not None:
        raise FeedbackError(f"rating is only for signal 'rating', but signal is {signal!r}: drop rating")

    if signal == "correct_location":
        if doc_id is not None:
            try:
                d_path, d_start, d_end = parse_doc_id(doc_id)
            except ValueError as exc:
                raise FeedbackError(str(exc)) from None
            for name, given, parsed in (("path", path, d_path), ("start_line", start_line, d_start),
                                        ("end_line", end_line, d_end)):
                if given is not None and given != parsed:
                    raise FeedbackError(f"doc_id {doc_id!r} and {name}={given!r} disagree: give one or the other")
            path, start_line, end_line = d_path, d_start, d_end
        if path is None or start_line is None or end_line is None:
            raise FeedbackError(
                "signal 'correct_location' needs the right location: doc_id 'path:start-end', "
                "or path + start_line + end_line"
            )
        start_line, end_line = _check_span(start_line, end_line)
        path = _check_location(event, path, start_line, end_line, corpus_root, indexed_files)
        doc_id = f"{path}:{start_line}-{end_line}"
    else:
        if path is not None or start_line is not None or end_line is not None:
            raise FeedbackError(
                f"path/start_line/end_line are only for signal 'correct_location'; "
                f"for {signal!r} name the hit by doc_id"
            )
        if doc_id is None:
            if signal in _NEEDS_DOC_ID:
                raise FeedbackError(
                    f"signal {signal!r} needs doc_id: the hit it is about; {_valid_ids_hint(event)}"
                )
        else:
            hit = event.result_by_doc_id(doc_id)
            if hit is None:
                raise FeedbackError(
                    f"doc_id {doc_id!r} was not in event {event_id}'s results; {_valid_ids_hint(event)}. "
                    "If the right answer was elsewhere, send signal 'correct_location'"
                )
            path, start_line, end_line = hit.path, hit.start_line, hit.end_line

    record = store.add_feedback(
        event_id,
        signal,
        doc_id=doc_id,
        rating=rating,
        path=path,
        start_line=start_line,
        end_line=end_line,
        note=note,
        ts=ts,
    )
    if record.created:
        logger.info("feedback %s %s on event %s (%s)", record.feedback_id, signal, event_id, doc_id or "whole answer")
    return record
