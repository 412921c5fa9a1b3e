"""Background jobs with a run_id, progress, logs and cancellation, and the crash-surviving job locks.

Embedded backend: locks are ``fcntl.flock`` on files in ``AGRO_HOME/locks/``: the kernel drops a lock when its
process dies, so a lock left by a crashed job is never obeyed. The holder's pid and run_id are written into the
file for messages only.

PostgreSQL backend (the store is a :class:`training.events.postgres.PgEventStore`, i.e. ``AGRO_BACKEND=postgres``): the
lock is a session-level advisory lock (``pg_try_advisory_lock(hashtext('agro-train'))`` for training) held on a
dedicated connection for the whole job, so it spans every machine using the database and the server drops it when
the holding process dies (its connection closes). See :class:`PgAdvisoryLock`.

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

from retrieval.errors import AgroUserError
from retrieval.threads import apply_limits, current_limits

__all__ = [
    "FileLock",
    "JobBusyError",
    "JobContext",
    "PgAdvisoryLock",
    "TRAINING_LOCK",
    "PROMOTE_LOCK",
    "job_lock",
    "run_job",
    "start_job",
]

logger = logging.getLogger(__name__)

TRAINING_LOCK = "training"
PROMOTE_LOCK = "promote"
# Advisory-lock keys (hashed with hashtext) of the PostgreSQL backend; other names use "agro-<name>".
_ADVISORY_KEYS = {TRAINING_LOCK: "agro-train"}


class JobBusyError(AgroUserError, RuntimeError):
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


class PgAdvisoryLock:
    """A PostgreSQL session-level advisory lock on a dedicated connection (not from the pool), for one job.

    The connection is opened by :meth:`acquire` and kept until :meth:`release`, so the lock lasts the whole job
    and covers every machine using the database. If the process dies, its connection closes and the server
    releases the lock; server-side TCP keepalives on the connection bound how long a vanished machine (power
    loss, network cut) keeps it (about a minute). The connection's ``application_name`` carries the holder's pid
    and run_id, read back by :meth:`holder` for the busy message.

    Args:
        database: the :class:`retrieval.pgdb.Database` of the store (its URL is used, not its pool).
        name: lock name (``training``, ``promote``).
        owner: the run_id holding it, for messages.
        store: the event store, to name the holder's host from its job record.
    """

    def __init__(self, database: Any, name: str, owner: str, store: Any = None) -> None:
        self.database = database
        self.name = name
        self.owner = owner
        self.key = _ADVISORY_KEYS.get(name, f"agro-{name}")
        self.store = store
        self._conn: Any = None

    def _connect(self, app: str) -> Any:
        import psycopg

        from retrieval.pgdb import DatabaseUnavailableError

        try:
            conn = psycopg.connect(
                self.database.url, autocommit=True, application_name=app[:63], connect_timeout=10
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"Cannot take the {self.name} job lock: PostgreSQL at {self.database.safe_url} is unreachable "
                f"({str(exc).strip()}). Check that the database is up, then start the job again."
            ) from None
        return conn

    def _holder_query(self, conn: Any) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint LIMIT 1",
            (self.key,),
        ).fetchone()
        if row is None:
            return None
        app, addr = row
        info: dict[str, Any] = {"run_id": None, "pid": None, "host": addr}
        parts = (app or "").split(" ", 2)  # "agro-job <pid> <run_id>"
        if len(parts) == 3 and parts[0] == "agro-job":
            info["pid"] = int(parts[1]) if parts[1].isdigit() else parts[1]
            info["run_id"] = parts[2] or None
        if info["run_id"] and self.store is not None:
            try:
                job = self.store.get_job(info["run_id"])
            except Exception:  # the host is only for the message
                job = None
            if job is not None and job.host:
                info["host"] = job.host
        return info

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (run_id, pid, host), or None if no one does."""
        if self._conn is not None and not self._conn.closed:
            return self._holder_query(self._conn)
        with self._connect("agro-lock-probe") as conn:
            return self._holder_query(conn)

    def held_by_someone(self) -> bool:
        return self.holder() is not None

    def acquire(self) -> PgAdvisoryLock:
        """Take the lock or raise :class:`JobBusyError` naming the holder."""
        conn = self._connect(f"agro-job {os.getpid()} {self.owner}")
        try:
            # Let the server notice a vanished client (and drop its lock) within about a minute.
            for setting, value in (("tcp_keepalives_idle", "30"), ("tcp_keepalives_interval", "10"),
                                   ("tcp_keepalives_count", "3")):
                conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
            got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (self.key,)).fetchone()[0]
            if not got:
                h = self._holder_query(conn) or {}
                raise JobBusyError(
                    f"Another {self.name} job is running (run {h.get('run_id') or '?'}, pid {h.get('pid') or '?'} on "
                    f"{h.get('host') or '?'}); one at a time per database ({self.database.safe_url}). Check it with "
                    "`agro jobs` or reranker_admin status, cancel it with reranker_admin cancel, or wait."
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.key,))
        except Exception:  # closing the session releases it anyway
            logger.debug("advisory unlock failed; closing the connection releases the lock", exc_info=True)
        finally:
            conn.close()

    def __enter__(self) -> PgAdvisoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


JobLock = FileLock | PgAdvisoryLock


def job_lock(store: Any, home: Path, name: str, owner: str) -> JobLock:
    """The job lock for the store's backend: an advisory lock in PostgreSQL (``AGRO_BACKEND=postgres``, the
    store is a ``PgEventStore``), else a ``flock`` in ``home/locks``. Not yet acquired."""
    if getattr(store, "backend", "embedded") == "postgres":
        return PgAdvisoryLock(store.database, name, owner, store=store)
    return FileLock(home, name, owner)


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


def _execute(ctx: JobContext, fn: JobFn, lock: JobLock | None) -> Any:
    from training.learning.trainer import TrainingCancelled

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
             run_id: str | None) -> tuple[JobContext, JobLock | None]:
    store.reap_dead_jobs()
    run_id = run_id or store.create_job(kind, params or {})
    lock = None
    if lock_name is not None:
        lock = job_lock(store, home, lock_name, run_id)
        try:
            lock.acquire()
        except Exception as exc:
            busy = isinstance(exc, JobBusyError)
            store.update_job(run_id, state="failed", error=str(exc), message="busy" if busy else "no lock")
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

    The thread keeps the starting thread's CPU limits (:mod:`retrieval.threads`). The lock is taken before
    returning, so a second training job is refused immediately with
    :class:`JobBusyError`; the thread releases it when the job ends, and the kernel (embedded) or the
    PostgreSQL server (postgres) does if the process dies.
    """
    ctx, lock = _prepare(store, home, kind, params, lock_name, None)
    limits = current_limits()  # a job started from the daemon's lower-priority pool stays there, torch threads too

    def target() -> None:
        apply_limits(limits)
        try:
            _execute(ctx, fn, lock)
        except BaseException:  # top-level handler of a job thread: recorded in the store by _execute
            logger.exception("job %s (%s) ended with an error", ctx.run_id, kind)

    threading.Thread(target=target, name=f"agro-job-{ctx.run_id}", daemon=True).start()
    return ctx.run_id
