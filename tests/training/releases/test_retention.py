"""Retention (issue 20, findings 9 and 10): capped queries, old events without feedback compacted away on both
stores, incomplete release and run folders removed, and `agro db compact`."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from retrieval.types import Chunk, Hit
from training.releases.retention import DAY_SEC, ORPHAN_MIN_AGE_SEC, compact, remove_orphan_folders
from training.events.records import MAX_LOGGED_QUERY_CHARS, query_event_from_hits


def _hits(*names: str) -> list[Hit]:
    chunks = [Chunk.make(f"src/{n}.py", 1, 3, "python", n, f"def {n}():\n    return '{n}'\n") for n in names]
    return [Hit(c, fused_score=0.1, score=0.5, bm25_rank=i, dense_rank=i) for i, c in enumerate(chunks, start=1)]


def _event(store, hits, days_old: float, query: str = "where is it"):
    event, texts = query_event_from_hits("demo", query, 10, hits, reranker_model=None, reranking_used=False,
                                         fallback_reason=None, latency_ms=1.0, index_generation="g1")
    event = dataclasses.replace(event, ts=time.time() - days_old * DAY_SEC)
    store.insert_event(event, texts)
    return event.event_id


def test_a_logged_query_is_capped_in_length(open_store):
    store = open_store()
    eid = store.log_query("demo", "q" * 20_000, 10, _hits("a"), reranker_model=None, reranking_used=False,
                          fallback_reason=None, latency_ms=1.0, index_generation="g1")
    assert len(store.get_event(eid).query) == MAX_LOGGED_QUERY_CHARS


def test_compaction_drops_old_events_without_feedback_and_keeps_the_rest(open_store, tmp_path):
    store = open_store()
    old_plain = _event(store, _hits("gone", "shared"), days_old=120)
    old_with_feedback = _event(store, _hits("kept_by_feedback"), days_old=120)
    store.add_feedback(old_with_feedback, "used", doc_id="src/kept_by_feedback.py:1-3", path="src/kept_by_feedback.py",
                       start_line=1, end_line=3)
    recent = _event(store, _hits("recent", "shared"), days_old=5)
    before = store.counts()

    out = compact(store, tmp_path / "home", retention_days=90)

    assert out["events"] == 1 and out["chunk_texts"] == 1  # 'gone' only: 'shared' is still referenced
    assert store.get_event(old_plain) is None
    assert store.get_event(old_with_feedback) is not None and store.get_event(recent) is not None
    after = store.counts()
    assert after["query_events"] == before["query_events"] - 1
    assert after["query_results"] == before["query_results"] - 2
    hashes = {h.chunk.hash: h.chunk.symbol for h in _hits("gone", "shared")}
    texts = store.chunk_texts(hashes)
    assert set(texts) == {h for h, sym in hashes.items() if sym == "shared"}
    assert compact(store, tmp_path / "home", retention_days=0)["events"] == 0  # 0 keeps every event


def _old(path: Path) -> Path:
    t = time.time() - ORPHAN_MIN_AGE_SEC - 60
    os.utime(path, (t, t))
    return path


def test_incomplete_releases_and_runs_and_the_vectors_of_gone_releases_are_removed_and_the_rest_kept(open_store, tmp_path):
    store = open_store()
    models = tmp_path / "models"
    for rid in ("r-complete", "r-current-incomplete", "r-killed-copy"):
        (models / "releases" / rid).mkdir(parents=True)
    (models / "releases" / "r-complete" / "manifest.json").write_text(json.dumps({"id": "r-complete"}))
    os.symlink("releases/r-current-incomplete", models / "current")
    young_release = models / "releases" / "r-young"
    young_release.mkdir()
    for rid in ("run-done", "run-orphan", "run-young", "run-active"):
        (models / "runs" / rid).mkdir(parents=True)
    (models / "runs" / "run-done" / "run.json").write_text("{}")
    store.create_job("train", run_id="run-active")
    store.update_job("run-active", state="running")
    for d in ("run-done", "run-orphan", "run-active"):
        _old(models / "runs" / d)
    _old(models / "releases" / "r-killed-copy")
    (models / "vectors").mkdir()
    for rid in ("r-complete", "r-gone"):  # chunk vectors a server kept for a release; r-gone's release is gone
        (models / "vectors" / f"{rid}.delta.npz").write_bytes(b"npz")

    removed = remove_orphan_folders(models, store)  # no promote lock: only old incomplete releases
    assert sorted(removed) == ["releases/r-killed-copy", "runs/run-orphan", "vectors/r-gone.delta.npz"]
    assert young_release.is_dir()
    assert remove_orphan_folders(models, store, releases_locked=True) == ["releases/r-young"]
    left = sorted(p.relative_to(models).as_posix() for p in models.glob("*/*"))
    assert left == ["releases/r-complete", "releases/r-current-incomplete", "runs/run-active", "runs/run-done",
                    "runs/run-young", "vectors/r-complete.delta.npz"]


def test_agro_db_compact_removes_old_events_and_reports_the_sizes(tmp_path, monkeypatch, capsys):
    from agro_mcp.cli import main
    from training.events.store import open_event_store

    home = tmp_path / "home"
    monkeypatch.setenv("AGRO_HOME", str(home))
    monkeypatch.setenv("AGRO_EVENTS_RETENTION_DAYS", "30")
    store = open_event_store(home)
    old = [_event(store, _hits(f"old{i}"), days_old=40) for i in range(50)]
    new = _event(store, _hits("new"), days_old=1)
    store.close()

    assert main(["db", "compact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["events"] == 50 and out["retention_days"] == 30
    assert out["db_bytes_after"] < out["db_bytes_before"]
    store = open_event_store(home)
    try:
        assert store.get_event(old[0]) is None and store.get_event(new) is not None
    finally:
        store.close()
