"""Import of the seeds' queries.jsonl (malformed lines skipped, never half-imported) and export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.types import Chunk, Hit
from training.events.logs_io import export_queries, import_logs, write_jsonl_atomic
from training.events.sqlite import SqliteEventStore
from training.events.store import EventStore

E1 = "0b6e7c1e-1111-4c3e-9d0a-000000000001"
E2 = "0b6e7c1e-2222-4c3e-9d0a-000000000002"


def _seeds_log() -> list[str]:
    good = [
        {  # the seeds' telemetry shape
            "type": "query", "event_id": E1, "ts": "2025-10-15T12:00:00Z", "query_raw": "How is OAuth validated?",
            "query_rewritten": "", "answer_text": "…", "latency_ms": 150,
            "retrieval": [
                {"doc_id": "auth/oauth.py:45-67", "score": 0.95, "text": "def validate_token(t): ...", "clicked": True},
                {"doc_id": "utils/http.py:1-3", "score": 0.6, "text": "import httpx", "clicked": False},
                {"doc_id": "config/index.ts:10-12", "score": 0.5, "text": "export default config"},
            ],
            "ground_truth_refs": ["auth/oauth.py:45-67"],
        },
        {  # a flat variant with a corpus, epoch ts and no texts
            "type": "query", "event_id": E2, "ts": 1760000000.5, "query": "db pool", "repo": "svc", "k": 5,
            "retrieval": [{"path": "db/pool.py", "start_line": 3, "end_line": 9, "score": 1.2}],
        },
        {"type": "feedback", "event_id": E1, "ts": "2025-10-15T12:01:00Z",
         "feedback": {"signal": "thumbsup"}},
        {"type": "feedback", "event_id": E1, "feedback": {"signal": "star2", "doc_id": "utils/http.py:1-3"}},
        {"type": "feedback", "event_id": E1, "feedback": {"signal": "note", "note": "token refresh is elsewhere"}},
        {"type": "rating", "event_id": E2, "rating": 5},
        {"type": "feedback", "event_id": E2, "signal": "click", "doc_id": "db/pool.py:3-9"},
        {"type": "feedback", "event_id": E2, "signal": "thumbsdown"},
    ]
    bad = [
        "{not json",
        "[1, 2]",
        json.dumps({"type": "telemetry", "x": 1}),
        json.dumps({"type": "query", "event_id": "q-noquery", "retrieval": []}),
        json.dumps({"type": "query", "query": "x", "retrieval": [{"score": 1}]}),  # item without doc_id/path
        json.dumps({"type": "query", "query": "x", "ts": "yesterday"}),
        json.dumps({"type": "feedback", "event_id": "nope", "feedback": {"signal": "thumbsup"}}),
        json.dumps({"type": "feedback", "event_id": E1, "feedback": {"signal": "star9"}}),
        json.dumps({"type": "feedback", "event_id": E1, "feedback": {"signal": "wave"}}),
        json.dumps({"type": "feedback", "event_id": E1, "feedback": {"signal": "click", "doc_id": "other.py:1-2"}}),
        json.dumps({"type": "feedback", "feedback": {"signal": "click"}}),
        json.dumps({"type": "rating", "event_id": E2, "rating": 7}),
    ]
    lines = [json.dumps(obj) for obj in good[:2]] + bad[:6] + [json.dumps(o) for o in good[2:]] + bad[6:] + [""]
    return lines


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteEventStore(tmp_path / "agro.db")
    yield s
    s.close()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_counts_good_lines_and_skips_malformed_ones_whole(store: EventStore, tmp_path: Path) -> None:
    report = import_logs(store, _write(tmp_path / "queries.jsonl", _seeds_log()))
    assert (report.queries, report.feedback, report.skipped_malformed) == (2, 6, 12)
    assert len(report.errors) == 12 and report.errors[0].startswith("line 3: not JSON")
    assert any("unknown signal 'wave'" in e for e in report.errors)
    assert any("Unknown event_id 'nope'" in e for e in report.errors)
    counts = store.counts()
    # 6 feedback lines + the clicked flag + the ground-truth ref of E1
    assert (counts["query_events"], counts["query_results"], counts["feedback"]) == (2, 4, 8)
    assert counts["chunk_texts"] == 3

    e1 = store.get_event(E1)
    assert (e1.query, e1.corpus, e1.k, e1.source) == ("How is OAuth validated?", "default", 3, "import")
    assert e1.results[0].path == "auth/oauth.py" and e1.results[0].start_line == 45
    assert store.chunk_text(e1.results[0].chunk_hash) == "def validate_token(t): ..."
    signals = sorted((f.signal, f.rating, f.doc_id) for f in store.feedback_for_event(E1))
    assert signals == [
        ("click", None, "auth/oauth.py:45-67"),
        ("correct_location", None, "auth/oauth.py:45-67"),
        ("note", None, None),
        ("rating", 2, "utils/http.py:1-3"),
        ("thumbs_up", None, None),
    ]
    e2 = store.get_event(E2)
    assert (e2.corpus, e2.k, e2.ts, e2.results[0].doc_id) == ("svc", 5, 1760000000.5, "db/pool.py:3-9")
    assert sorted(f.signal for f in store.feedback_for_event(E2)) == ["click", "rating", "thumbs_down"]


def test_reimporting_the_same_log_adds_nothing(store: EventStore, tmp_path: Path) -> None:
    log = _write(tmp_path / "queries.jsonl", _seeds_log())
    import_logs(store, log)
    before = store.counts()
    again = import_logs(store, log)
    assert (again.queries, again.feedback, again.duplicates) == (0, 0, 8)
    assert store.counts() == before


def test_an_event_id_taken_by_another_event_gets_a_new_id_and_keeps_its_feedback(
    store: EventStore, tmp_path: Path
) -> None:
    import_logs(store, _write(tmp_path / "a.jsonl", _seeds_log()))
    other = [
        json.dumps({"type": "query", "event_id": E1, "ts": 5.0, "query": "something else",
                    "retrieval": [{"doc_id": "x.py:1-2"}]}),
        json.dumps({"type": "feedback", "event_id": E1, "feedback": {"signal": "click", "doc_id": "x.py:1-2"}}),
    ]
    report = import_logs(store, _write(tmp_path / "b.jsonl", other))
    assert (report.queries, report.feedback, report.skipped_malformed) == (1, 1, 0)
    [moved] = [e for e in store.iter_events() if e.query == "something else"]
    assert moved.event_id != E1
    assert [f.doc_id for f in store.feedback_for_event(moved.event_id)] == ["x.py:1-2"]
    assert store.get_event(E1).query == "How is OAuth validated?"
    again = import_logs(store, tmp_path / "b.jsonl")
    assert (again.queries, again.feedback, again.duplicates) == (0, 0, 2)


def test_export_then_import_round_trips_events_and_feedback(store: EventStore, tmp_path: Path) -> None:
    a = Chunk.make("src/a.py", 1, 4, "python", "f", "def f():\n    return 1\n")
    b = Chunk.make("src/b.py", 2, 3, "python", None, "x = 2\n")
    eid = store.log_query(
        "demo", "where is f", 10, [Hit(a, 0.03, 0.9, bm25_rank=1, dense_rank=2, rerank_score=0.8), Hit(b, 0.02, 0.1)],
        reranker_model="rel-1", reranking_used=True, fallback_reason=None, latency_ms=42.0, index_generation="g1",
    )
    store.add_feedback(eid, "rating", rating=4, note="close", doc_id=a.doc_id, path=a.path, start_line=1, end_line=4)
    store.add_feedback(eid, "thumbs_down", doc_id=b.doc_id, path=b.path, start_line=2, end_line=3)
    store.add_feedback(eid, "correct_location", doc_id="src/c.py:7-9", path="src/c.py", start_line=7, end_line=9)
    out = tmp_path / "exports" / "queries.jsonl"
    report = export_queries(store, out)
    assert (report.queries, report.feedback) == (1, 3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in rows] == ["query", "feedback", "feedback", "feedback"]
    assert rows[0]["query_raw"] == "where is f" and rows[0]["retrieval"][0]["text"] == a.text
    assert [r["feedback"]["signal"] for r in rows[1:]] == ["star4", "thumbsdown", "correct_location"]
    assert not list(out.parent.glob("*.tmp"))

    with SqliteEventStore(tmp_path / "other.db") as fresh:
        imported = import_logs(fresh, out)
        assert (imported.queries, imported.feedback, imported.skipped_malformed) == (1, 3, 0)
        src, dst = store.get_event(eid), fresh.get_event(eid)
        assert dst.results == src.results
        assert abs(dst.ts - src.ts) < 1e-5
        for name in ("corpus", "query", "k", "reranker_model", "reranking_used", "latency_ms", "index_generation"):
            assert getattr(dst, name) == getattr(src, name), name
        key = lambda f: (f.signal, f.doc_id, f.rating, f.path, f.start_line, f.end_line, f.note)  # noqa: E731
        assert sorted(map(key, fresh.feedback_for_event(eid))) == sorted(map(key, store.feedback_for_event(eid)))
        assert fresh.chunk_texts([a.hash, b.hash]) == {a.hash: a.text, b.hash: b.text}


def test_write_jsonl_atomic_replaces_the_whole_file_or_leaves_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    assert write_jsonl_atomic(out, [{"a": 1}, {"b": "é"}]) == 2
    assert out.read_text(encoding="utf-8").splitlines() == ['{"a": 1}', '{"b": "é"}']

    def failing():
        yield {"c": 3}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(out, failing())
    assert out.read_text(encoding="utf-8").splitlines() == ['{"a": 1}', '{"b": "é"}']
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]
