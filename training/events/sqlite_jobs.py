"""Background jobs and named locks in the SQLite event store (the ``jobs``, ``job_logs`` and ``locks`` tables).

:class:`SqliteJobs` is a part of :class:`training.events.sqlite.SqliteEventStore`: it uses the store's
``_conn()`` (this thread's connection) and ``_write()`` (one ``BEGIN IMMEDIATE`` transaction).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from training.events.records import (
    JobRecord,
    check_job_transition,
    job_from_row,
    job_update_sets,
    lock_is_held,
    new_run_id,
    pid_alive,
)

__all__ = ["SqliteJobs"]

logger = logging.getLogger(__name__)


class SqliteJobs:
    """Jobs (queued -> running -> succeeded / failed / cancelled, with progress, logs and cancellation) and named locks
    with heartbeats."""

    # ---------------------------------------------------------------------------------------- jobs
    def create_job(self, kind: str, params: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Create a queued job and return its run_id (``YYYYmmdd-HHMMSS-<kind>-<hex>``)."""
        run_id = run_id or new_run_id(kind)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (run_id, kind, state, progress, params, created, updated, host) "
                "VALUES (?, ?, 'queued', 0, ?, ?, ?, ?)",
                (run_id, kind, json.dumps(params or {}, ensure_ascii=False), now, now, socket.gethostname()),
            )
        return run_id

    def update_job(
        self,
        run_id: str,
        state: str | None = None,
        progress: float | None = None,
        message: str | None = None,
        result: Any = None,
        error: str | None = None,
        pid: int | None = None,
    ) -> JobRecord:
        """Update the given fields of a job. A finished job's state cannot change.

        Raises:
            StoreError: unknown run_id, unknown state, or a change to a finished job's state.
        """
        sets, args = job_update_sets(state, progress, message, result, error, pid, "?")
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
            check_job_transition(run_id, row[0] if row is not None else None, state)
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE run_id = ?", (*args, run_id))
            new = conn.execute("SELECT * FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
        return job_from_row(new)

    def request_cancel(self, run_id: str) -> JobRecord | None:
        """Ask a job to stop; a queued job is cancelled at once, a running one when it next checks."""
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET cancel_requested = 1, updated = ?, "
                "state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END WHERE run_id = ?",
                (time.time(), run_id),
            )
        return self.get_job(run_id)


    def get_job(self, run_id: str) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
        return job_from_row(row) if row is not None else None

    def list_jobs(self, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Newest first."""
        where, args = ["1=1"], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        rows = self._conn().execute(
            f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created DESC, rowid DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [job_from_row(r) for r in rows]

    def reap_dead_jobs(self) -> list[str]:
        """Mark running jobs whose process on this host has died as failed; return their run_ids."""
        host = socket.gethostname()
        dead = [
            r["run_id"]
            for r in self._conn().execute("SELECT run_id, pid FROM jobs WHERE state = 'running' AND host = ?", (host,))
            if r["pid"] is not None and not pid_alive(r["pid"])
        ]
        for run_id in dead:
            with self._write() as conn:
                conn.execute(
                    "UPDATE jobs SET state = 'failed', error = 'process died', updated = ? "
                    "WHERE run_id = ? AND state = 'running'",
                    (time.time(), run_id),
                )
        return dead

    def append_job_log(self, run_id: str, line: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO job_logs (run_id, ts, line) VALUES (?,?,?)", (run_id, time.time(), line))

    def job_logs(self, run_id: str, tail: int = 200) -> list[str]:
        rows = self._conn().execute(
            "SELECT line FROM job_logs WHERE run_id = ? ORDER BY id DESC LIMIT ?", (run_id, tail)
        ).fetchall()
        return [r[0] for r in reversed(rows)]

    # ---------------------------------------------------------------------------------------- locks
    def acquire_lock(
        self,
        name: str,
        owner: str,
        *,
        stale_after: float = 900.0,
        is_alive: Callable[[int], bool] = pid_alive,
    ) -> bool:
        """Take the named lock for ``owner`` (e.g. a run_id); True if now held by it.

        A held lock is taken over when it is stale: its process on this host is gone, or its heartbeat is older
        than ``stale_after`` seconds (a process on another host, or a hung one). Holders should call
        :meth:`heartbeat_lock` more often than that.
        """
        now, host, pid = time.time(), socket.gethostname(), os.getpid()
        with self._write() as conn:
            row = conn.execute("SELECT * FROM locks WHERE name = ?", (name,)).fetchone()
            if lock_is_held(name, row, owner, now, host, stale_after, is_alive):
                return False
            conn.execute(
                "INSERT INTO locks (name, owner, pid, host, acquired, heartbeat) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, pid = excluded.pid, host = excluded.host, "
                "acquired = excluded.acquired, heartbeat = excluded.heartbeat",
                (name, owner, pid, host, now, now),
            )
        return True

    def heartbeat_lock(self, name: str, owner: str) -> bool:
        """Refresh the lock's heartbeat; False if ``owner`` no longer holds it."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE locks SET heartbeat = ? WHERE name = ? AND owner = ?", (time.time(), name, owner)
            )
        return cur.rowcount == 1

    def release_lock(self, name: str, owner: str) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))
        return cur.rowcount == 1

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM locks WHERE name = ?", (name,)).fetchone()
        return dict(row) if row is not None else None
