"""Background jobs with a run_id, progress, logs and cancellation, and the crash-surviving data-home locks.

Locks are ``fcntl.flock`` on files in ``AGRO_HOME/locks/``: the kernel drops a lock when its process dies, so a
lock left by a crashed job is never obeyed. The holder's pid and run_id are written into the file for messages only.
Job state lives in the store (``jobs`` / ``job_logs``), so ``status`` and ``cancel`` work across processes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FileLock", "JobBusyError", "JobContext", "TRAINING_LOCK", "PROMOTE_LOCK", "run_job", "start_job"]

logger = logging.getLogger(__name__)

TRAINING_LOCK = "training"
PROMOTE_LOCK = "promote"


class JobBusyError(RuntimeError):
    """Another job holds the lock; the message names it."""


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``<home>/locks/<name>.lock``.

    Args:
        home: data home.
        name: lock name (``training``, ``promote``).
        owner: recorded in the file (a run_id) for error messages.
    """

    def __init__(self, home: Path, name: str, owner: str) -> None:
        self.path = Path(home) / "locks" / f"{name}.lock"
        self.name = name
        self.owner = owner
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """What the current holder wrote (may be stale if no one holds the lock any more)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> FileLock:
        """Take the lock or raise :class:`JobBusyError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder() or {}
            raise JobBusyError(
                f"Another {self.name} job is running (run {h.get('run_id', '?')}, pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')}); one at a time per data home. Check it with `agro jobs` or "
                "reranker_admin status, cancel it with reranker_admin cancel, or wait."
            ) from None
        info = json.dumps({"run_id": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                           "acquired": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def held_by_someone(self) -> bool:
        """True if a live process holds the lock now (probes with a non-blocking shared attempt)."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class JobContext:
    """What a job function gets: its run_id, progress and log reporting, and the cancel check."""

    store: Any
    run_id: str
    kind: str
    _last_poll: float = 0.0
    _cancelled: bool = False
    _local_cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, fraction: float, message: str | None = None) -> None:
        try:
            self.store.update_job(self.run_id, progress=max(0.0, min(1.0, float(fraction))), message=message)
        except Exception:  # progress is advisory; a busy store must not kill the job
            logger.debug("progress update failed", exc_info=True)

    def log(self, line: str, *args: Any) -> None:
        text = line % args if args else line
        logger.info("[%s] %s", self.run_id, text)
        self.store.append_job_log(self.run_id, text)

    def cancelled(self) -> bool:
        """True once cancel was requested (polled from the store at most once a second)."""
        if self._cancelled or self._local_cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll >= 1.0:
            self._last_poll = now
            job = self.store.get_job(self.run_id)
            self._cancelled = bool(job and job.cancel_requested)
        return self._cancelled


JobFn = Callable[[JobContext], Any]


def _execute(ctx: JobContext, fn: JobFn, lock: FileLock | None) -> Any:
    from training.trainer import TrainingCancelled

    store = ctx.store
    try:
        store.update_job(ctx.run_id, state="running", pid=os.getpid(), message="started")
        ctx.log("%s job started", ctx.kind)
        result = fn(ctx)
        if ctx.cancelled():
            raise TrainingCancelled(f"{ctx.kind} job {ctx.run_id} was cancelled")
        store.update_job(ctx.run_id, state="succeeded", progress=1.0, message="done", result=result)
        ctx.log("%s job succeeded", ctx.kind)
        return result
    except TrainingCancelled as exc:
        store.update_job(ctx.run_id, state="cancelled", message=str(exc))
        ctx.log("cancelled: %s", exc)
        raise
    except BaseException as exc:
        store.update_job(ctx.run_id, state="failed", error=str(exc)[:4000], message="failed")
        store.append_job_log(ctx.run_id, f"failed: {exc}")
        raise
    finally:
        if lock is not None:
            lock.release()


def _prepare(store: Any, home: Path, kind: str, params: dict | None, lock_name: str | None,
             run_id: str | None) -> tuple[JobContext, FileLock | None]:
    store.reap_dead_jobs()
    run_id = run_id or store.create_job(kind, params or {})
    lock = None
    if lock_name is not None:
        lock = FileLock(home, lock_name, run_id)
        try:
            lock.acquire()
        except JobBusyError as exc:
            store.update_job(run_id, state="failed", error=str(exc), message="busy")
            raise
    return JobContext(store, run_id, kind), lock


def run_job(store: Any, home: Path, kind: str, fn: JobFn, *, params: dict | None = None,
            lock_name: str | None = TRAINING_LOCK) -> tuple[str, Any]:
    """Run a job in this thread (the CLI): ``(run_id, result)``. Errors propagate after being recorded."""
    ctx, lock = _prepare(store, home, kind, params, lock_name, None)
    return ctx.run_id, _execute(ctx, fn, lock)


def start_job(store: Any, home: Path, kind: str, fn: JobFn, *, params: dict | None = None,
              lock_name: str | None = TRAINING_LOCK) -> str:
    """Start a job in a background thread and return its run_id at once.

    The lock is taken before returning, so a second training job is refused immediately with
    :class:`JobBusyError`; the thread releases it when the job ends, and the kernel does if the process dies.
    """
    ctx, lock = _prepare(store, home, kind, params, lock_name, None)

    def target() -> None:
        try:
            _execute(ctx, fn, lock)
        except BaseException:  # top-level handler of a job thread: recorded in the store by _execute
            logger.exception("job %s (%s) ended with an error", ctx.run_id, kind)

    threading.Thread(target=target, name=f"agro-job-{ctx.run_id}", daemon=True).start()
    return ctx.run_id
