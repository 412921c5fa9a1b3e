"""Several processes writing feedback at once all land; a writer killed with SIGKILL loses nothing it acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.types import Chunk, Hit
from training.events.sqlite import SqliteEventStore

REPO = Path(__file__).resolve().parents[3]

# A writer: submit `n` feedback signals one call at a time; after each call returns (committed), append the
# feedback_id to the ack file with one write(2), so the parent knows exactly what was acknowledged.
WRITER = """
import os, sys
from pathlib import Path
from training.events.feedback import submit_feedback
from training.events.sqlite import SqliteEventStore

db, event_id, worker, n, ack = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
fd = os.open(ack, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
store = SqliteEventStore(Path(db))
for i in range(n):
    rec = submit_feedback(store, event_id, "thumbs_up", note=f"{worker}-{i}")
    os.write(fd, f"{rec.feedback_id} {worker}-{i}\\n".encode())
store.close()
os.close(fd)
"""


def _setup(tmp_path: Path) -> tuple[Path, str, Path]:
    db = tmp_path / "agro.db"
    chunk = Chunk.make("a.py", 1, 2, "python", None, "x = 1\n")
    with SqliteEventStore(db) as store:
        event_id = store.log_query(
            "demo", "q", 10, [Hit(chunk, 0.1, 0.2)], reranker_model=None, reranking_used=False,
            fallback_reason=None, latency_ms=1.0, index_generation=None,
        )
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return db, event_id, script


def _spawn(script: Path, db: Path, event_id: str, worker: str, n: int, ack: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(db), event_id, worker, str(n), str(ack)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _acked(ack: Path) -> dict[str, str]:
    """note -> feedback_id for every acknowledged write."""
    if not ack.exists():
        return {}
    out = {}
    for line in ack.read_text().splitlines():
        fid, note = line.split(" ")
        out[note] = fid
    return out


def _stored(db: Path) -> dict[str, str]:
    with SqliteEventStore(db) as store:
        assert store.integrity_check() == "ok"
        return {f.note: f.feedback_id for f in store.iter_feedback()}


@pytest.mark.slow
def test_eight_processes_writing_a_thousand_feedback_each_all_land(tmp_path: Path) -> None:
    db, event_id, script = _setup(tmp_path)
    procs = [_spawn(script, db, event_id, f"w{i}", 1000, tmp_path / f"ack{i}") for i in range(8)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=55)
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    stored = _stored(db)
    assert len(stored) == 8000
    assert set(stored) == {f"w{w}-{i}" for w in range(8) for i in range(1000)}
    for w in range(8):
        assert _acked(tmp_path / f"ack{w}").items() <= stored.items()


@pytest.mark.slow
def test_writers_killed_mid_stream_lose_nothing_acknowledged_and_leave_the_store_intact(tmp_path: Path) -> None:
    db, event_id, script = _setup(tmp_path)
    rng = random.Random(7)
    for round_ in range(4):
        acks = [tmp_path / f"ack{round_}-{w}" for w in range(2)]
        procs = [_spawn(script, db, event_id, f"r{round_}w{w}", 100_000, ack) for w, ack in enumerate(acks)]
        try:
            for p, ack in zip(procs, acks):
                target = rng.randint(20, 400)
                deadline = time.monotonic() + 20
                while len(_acked(ack)) < target and p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert p.poll() is None, p.stderr.read().decode()
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)
                assert p.returncode == -signal.SIGKILL
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.stderr.close()
        stored = _stored(db)
        for w, ack in enumerate(acks):
            acked = _acked(ack)
            assert acked, "the writer acknowledged nothing before the kill"
            assert acked.items() <= stored.items()
            mine = {note for note in stored if note.startswith(f"r{round_}w{w}-")}
            # At most the call in flight (committed, not yet acknowledged) is extra.
            assert len(mine) - len(acked) in (0, 1)


OPEN_SCRIPT = """
import sys, time
from pathlib import Path
from training.events.sqlite import SqliteEventStore
start = float(sys.argv[2])
while time.time() < start:
    pass
SqliteEventStore(Path(sys.argv[1])).close()
"""


def test_processes_opening_one_new_database_at_the_same_instant_all_start(tmp_path: Path) -> None:
    # Two MCP clients starting together each spawn `agro serve`; both open (and migrate) a fresh agro.db.
    for round_ in range(3):
        db = tmp_path / f"fresh{round_}" / "agro.db"
        db.parent.mkdir()
        start = time.time() + 1.5
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_SCRIPT, str(db), str(start)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
        with SqliteEventStore(db) as s:
            assert s.schema_version() > 0
