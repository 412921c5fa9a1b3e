"""Background jobs and the crash-surviving training lock.

Tests taking ``store`` run on both event-store backends (tests/training/conftest.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from training.releases.jobs import FileLock, JobBusyError, run_job, start_job
from training.learning.trainer import TrainingCancelled

ROOT = Path(__file__).resolve().parents[3]


def wait_done(store, run_id):
    import time

    for _ in range(500):
        job = store.get_job(run_id)
        if job.finished:
            return job
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def test_one_training_job_per_home_and_the_second_is_told_who_holds_it(store, tmp_path):
    release = threading.Event()
    started = threading.Event()

    def slow(ctx):
        started.set()
        release.wait(10)
        return {"ok": True}

    rid = start_job(store, tmp_path, "train", slow)
    started.wait(5)
    with pytest.raises(JobBusyError, match=rid):
        start_job(store, tmp_path, "train", lambda ctx: None)
    release.set()
    job = wait_done(store, rid)
    assert job.state == "succeeded" and job.result == {"ok": True} and job.progress == 1.0
    rid2, result = run_job(store, tmp_path, "train", lambda ctx: 7)  # free again
    assert result == 7 and store.get_job(rid2).state == "succeeded"


def test_a_lock_held_by_a_killed_process_is_not_obeyed(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from training.releases.jobs import FileLock; "
            f"FileLock({str(tmp_path)!r}, 'training', 'dead-run').acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(JobBusyError, match="dead-run"):
        FileLock(tmp_path, "training", "me").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    lock = FileLock(tmp_path, "training", "me").acquire()
    assert lock.holder()["run_id"] == "me"
    lock.release()


def test_cancel_is_seen_by_the_job_and_recorded(store, tmp_path):
    def job(ctx):
        ctx.store.request_cancel(ctx.run_id)
        ctx._last_poll = 0.0
        assert ctx.cancelled()
        raise TrainingCancelled("stopped")

    with pytest.raises(TrainingCancelled):
        run_job(store, tmp_path, "train", job)
    (j,) = store.list_jobs()
    assert j.state == "cancelled"


def test_a_failing_job_records_its_error_and_logs(store, tmp_path):
    def job(ctx):
        ctx.log("working on %s", "it")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        run_job(store, tmp_path, "mine", job, lock_name=None)
    (j,) = store.list_jobs()
    assert j.state == "failed" and "boom" in j.error
    assert "working on it" in store.job_logs(j.run_id)
