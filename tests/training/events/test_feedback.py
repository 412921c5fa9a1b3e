"""submit_feedback: every rejection says how to fix the call; accepted feedback is stored once.

Tests taking ``store`` run on both event-store backends (tests/training/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.types import Chunk, Hit
from training.events.feedback import MAX_NOTE_CHARS, FeedbackError, count_lines, submit_feedback


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "auth.py").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    (root / "src" / "util.py").write_text("a = 1\nb = 2\nc = 3")  # 3 lines, no final newline
    (tmp_path / "secret.py").write_text("x\n" * 50)
    return root


@pytest.fixture
def roots(corpus: Path):
    return lambda name: corpus if name == "demo" else None


@pytest.fixture
def event_id(store) -> str:
    chunks = [
        Chunk.make("src/auth.py", 1, 10, "python", "login", "line 1\n"),
        Chunk.make("src/auth.py", 11, 20, "python", None, "line 11\n"),
    ]
    hits = [Hit(c, fused_score=0.1, score=0.9 - i) for i, c in enumerate(chunks)]
    return store.log_query(
        "demo", "login", 10, hits, reranker_model=None, reranking_used=False, fallback_reason=None,
        latency_ms=1.0, index_generation=None,
    )


def _submit(store, event_id, signal, roots, **kw):
    return submit_feedback(store, event_id, signal, corpus_root=roots, **kw)


def test_click_on_a_result_is_stored_with_its_location(store, event_id, roots) -> None:
    rec = _submit(store, event_id, "click", roots, doc_id="src/auth.py:11-20")
    assert rec.created
    assert (rec.signal, rec.doc_id, rec.path, rec.start_line, rec.end_line) == (
        "click", "src/auth.py:11-20", "src/auth.py", 11, 20,
    )
    assert [f.feedback_id for f in store.feedback_for_event(event_id)] == [rec.feedback_id]


def test_an_exact_repeat_is_idempotent(store, event_id, roots) -> None:
    first = _submit(store, event_id, "rating", roots, rating=4, note="good")
    again = _submit(store, event_id, "rating", roots, rating=4, note="good")
    assert first.created and not again.created and again.feedback_id == first.feedback_id
    assert store.counts()["feedback"] == 1


def test_thumbs_without_doc_id_judges_the_whole_answer(store, event_id, roots) -> None:
    rec = _submit(store, event_id, "thumbs_down", roots)
    assert rec.doc_id is None and rec.path is None


def test_correct_location_outside_the_results_is_accepted(store, event_id, roots) -> None:
    rec = _submit(store, event_id, "correct_location", roots, path="src/util.py", start_line=2, end_line=3)
    assert (rec.doc_id, rec.path) == ("src/util.py:2-3", "src/util.py")
    by_doc_id = _submit(store, event_id, "correct_location", roots, doc_id="src/auth.py:15-20")
    assert (by_doc_id.path, by_doc_id.start_line, by_doc_id.end_line) == ("src/auth.py", 15, 20)


def test_correct_location_given_as_an_absolute_path_inside_the_root_is_made_relative(
    store, event_id, roots, corpus
) -> None:
    rec = _submit(store, event_id, "correct_location", roots,
                  path=str(corpus / "src" / "auth.py"), start_line=1, end_line=2)
    assert rec.doc_id == "src/auth.py:1-2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "../secret.py", "start_line": 1, "end_line": 2}, "leaves the corpus root"),
        ({"path": "src/../../secret.py", "start_line": 1, "end_line": 2}, "leaves the corpus root"),
        ({"doc_id": "../secret.py:1-2"}, "leaves the corpus root"),
        ({"path": "/etc/passwd", "start_line": 1, "end_line": 1}, "outside the corpus root"),
        ({"path": "src/missing.py", "start_line": 1, "end_line": 1}, "does not exist"),
        ({"path": "src", "start_line": 1, "end_line": 1}, "does not exist"),
        ({"path": "src/util.py", "start_line": 1, "end_line": 4}, "beyond the end of 'src/util.py', which has 3"),
        ({"path": "src/util.py", "start_line": 3, "end_line": 2}, "1 <= start_line <= end_line"),
        ({"path": "src/util.py", "start_line": 0, "end_line": 2}, "1 <= start_line <= end_line"),
        ({"path": "src/util.py"}, "needs the right location"),
        ({"doc_id": "src/util.py"}, "doc_id expects 'path:start-end'"),
        ({"doc_id": "src/util.py:1-2", "path": "src/auth.py"}, "disagree"),
    ],
)
def test_bad_correct_location_is_rejected(store, event_id, roots, kwargs, message) -> None:
    with pytest.raises(FeedbackError, match=message.replace("(", r"\(")):
        _submit(store, event_id, "correct_location", roots, **kwargs)
    assert store.counts()["feedback"] == 0


def test_correct_location_through_a_symlink_out_of_the_corpus_is_rejected(store, event_id, roots, corpus) -> None:
    (corpus / "src" / "link.py").symlink_to(corpus.parent / "secret.py")
    with pytest.raises(FeedbackError, match="outside the corpus root"):
        _submit(store, event_id, "correct_location", roots, path="src/link.py", start_line=1, end_line=2)


def test_correct_location_for_a_corpus_without_a_known_root_says_to_index_it(store, event_id) -> None:
    with pytest.raises(FeedbackError, match="agro index /path/to/repo --corpus demo"):
        submit_feedback(store, event_id, "correct_location", doc_id="src/auth.py:1-2", corpus_root=lambda c: None)


def test_unknown_event_is_rejected_with_where_to_get_one(store, roots) -> None:
    with pytest.raises(FeedbackError, match="Unknown event_id 'nope': pass the event_id returned by rag_search"):
        _submit(store, "nope", "thumbs_up", roots)


def test_doc_id_not_in_the_results_lists_the_valid_ones(store, event_id, roots) -> None:
    with pytest.raises(FeedbackError) as info:
        _submit(store, event_id, "click", roots, doc_id="src/util.py:1-3")
    msg = str(info.value)
    assert "was not in event" in msg and "src/auth.py:1-10, src/auth.py:11-20" in msg
    assert "correct_location" in msg


@pytest.mark.parametrize("signal", ["click", "used"])
def test_click_and_used_need_a_doc_id(store, event_id, roots, signal) -> None:
    with pytest.raises(FeedbackError, match=f"signal '{signal}' needs doc_id.*src/auth.py:1-10"):
        _submit(store, event_id, signal, roots)


@pytest.mark.parametrize("rating", [0, 6, -1, 2.5, True, "5"])
def test_rating_out_of_range_is_rejected(store, event_id, roots, rating) -> None:
    with pytest.raises(FeedbackError, match="rating expects an integer from 1 to 5"):
        _submit(store, event_id, "rating", roots, rating=rating)


def test_rating_signal_without_a_rating_is_rejected(store, event_id, roots) -> None:
    with pytest.raises(FeedbackError, match="signal 'rating' needs rating"):
        _submit(store, event_id, "rating", roots)


def test_rating_on_another_signal_is_rejected(store, event_id, roots) -> None:
    with pytest.raises(FeedbackError, match="rating is only for signal 'rating'"):
        _submit(store, event_id, "thumbs_up", roots, rating=5)


def test_location_fields_on_another_signal_are_rejected(store, event_id, roots) -> None:
    with pytest.raises(FeedbackError, match="only for signal 'correct_location'"):
        _submit(store, event_id, "click", roots, path="src/auth.py", start_line=1, end_line=10)


def test_note_over_the_cap_is_rejected_and_at_the_cap_accepted(store, event_id, roots) -> None:
    with pytest.raises(FeedbackError, match=f"limit is {MAX_NOTE_CHARS}"):
        _submit(store, event_id, "thumbs_up", roots, note="x" * (MAX_NOTE_CHARS + 1))
    assert _submit(store, event_id, "thumbs_up", roots, note="x" * MAX_NOTE_CHARS).created


@pytest.mark.parametrize("signal", ["thumbsup", "star5", "Click", ""])
def test_unknown_signal_is_rejected_with_the_valid_ones(store, event_id, roots, signal) -> None:
    with pytest.raises(FeedbackError, match="signal expects one of click, used, thumbs_up"):
        _submit(store, event_id, signal, roots)


def test_count_lines_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    cases = {"": 0, "a": 1, "a\n": 1, "a\nb": 2, "a\nb\n": 2, "\n\n": 2}
    for i, (text, expected) in enumerate(cases.items()):
        p = tmp_path / f"f{i}"
        p.write_text(text)
        assert count_lines(p) == expected, text
