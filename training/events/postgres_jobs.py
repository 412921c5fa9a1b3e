"""Background jobs and named locks in the PostgreSQL event store (``agro_jobs``, ``agro_job_logs``, ``agro_locks``).

:class:`PgJobs` is a part of :class:`training.events.postgres.PgEventStore`: it uses the store's ``_read`` and
``_write`` (one transaction each, durable before return).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from training.events.postgres_sql import _JOB_COLS, _dict_cursor
from training.events.records import (
    JobRecord,
    check_job_transition,
    job_from_row,
    job_update_sets,
    lock_is_held,
    new_run_id,
    pid_alive,
)

__all__ = ["PgJobs"]

logger = logging.getLogger(__name__)


class PgJobs:
    """Jobs (queued -> running -> succeeded / failed / cancelled, with progress, logs and cancellation) and named locks
    with heartbeats; a lock's row is serialised by a transaction-level advisory lock on its name."""

    # ---------------------------------------------------------------------------------------- jobs
    def create_job(self, kind: str, params: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Create a queued job and return its run_id (``YYYYmmdd-HHMMSS-<kind>-<hex>``)."""
        run_id = run_id or new_run_id(kind)
        now = time.time()
        body = json.dumps(params or {}, ensure_ascii=False)
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_jobs (run_id, kind, state, progress, params, created, updated, host) "
                "VALUES (%s, %s, 'queued', 0, %s, %s, %s, %s)",
                (run_id, kind, body, now, now, socket.gethostname()),
            ),
            "create_job",
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
        sets, args = job_update_sets(state, progress, message, result, error, pid, "%s")

        def tx(conn: Any) -> dict[str, Any]:
            # FOR UPDATE: the state check and the update see the same row, whatever other processes do.
            row = conn.execute("SELECT state FROM agro_jobs WHERE run_id = %s FOR UPDATE", (run_id,)).fetchone()
            check_job_transition(run_id, row[0] if row is not None else None, state)
            return _dict_cursor(conn).execute(
                f"UPDATE agro_jobs SET {', '.join(sets)} WHERE run_id = %s RETURNING {_JOB_COLS}", (*args, run_id)
            ).fetchone()

        return job_from_row(self._write(tx, "update_job"))

    def request_cancel(self, run_id: str) -> JobRecord | None:
        """Ask a job to stop; a queued job is cancelled at once, a running one when it next checks."""
        self._write(
            lambda conn: conn.execute(
                "UPDATE agro_jobs SET cancel_requested = true, updated = %s, "
                "state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END WHERE run_id = %s",
                (time.time(), run_id),
            ),
            "request_cancel",
        )
        return self.get_job(run_id)

    def get_job(self, run_id: str) -> JobRecord | None:
        row = self._read(
            lambda conn: _dict_cursor(conn).execute(
                f"SELECT {_JOB_COLS} FROM agro_jobs WHERE run_id = %s", (run_id,)
            ).fetchone(),
            "get_job",
        )
        return job_from_row(row) if row is not None else None

    def list_jobs(self, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Newest first."""
        where, args = ["true"], []
        if kind is not None:
            where.append("kind = %s")
            args.append(kind)
        if state is not None:
            where.append("state = %s")
            args.append(state)
        sql = f"SELECT {_JOB_COLS} FROM agro_jobs WHERE {' AND '.join(where)} ORDER BY created DESC, seq DESC LIMIT %s"
        rows = self._read(lambda conn: _dict_cursor(conn).execute(sql, (*args, limit)).fetchall(), "list_jobs")
        return [job_from_row(r) for r in rows]

    def reap_dead_jobs(self) -> list[str]:
        """Mark running jobs whose process on this host has died as failed; return their run_ids."""
        host = socket.gethostname()
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT run_id, pid FROM agro_jobs WHERE state = 'running' AND host = %s ORDER BY seq", (host,)
            ).fetchall(),
            "reap_dead_jobs",
        )
        dead = [run_id for run_id, pid in rows if pid is not None and not pid_alive(pid)]
        for run_id in dead:
            self._write(
                lambda conn, run_id=run_id: conn.execute(
                    "UPDATE agro_jobs SET state = 'failed', error = 'process died', updated = %s "
                    "WHERE run_id = %s AND state = 'running'",
                    (time.time(), run_id),
                ),
                "reap_dead_jobs",
            )
        return dead

    def append_job_log(self, run_id: str, line: str) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO agro_job_logs (run_id, ts, line) VALUES (%s,%s,%s)", (run_id, time.time(), line)
            ),
            "append_job_log",
        )

    def job_logs(self, run_id: str, tail: int = 200) -> list[str]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT line FROM agro_job_logs WHERE run_id = %s ORDER BY id DESC LIMIT %s", (run_id, tail)
            ).fetchall(),
            "job_logs",
        )
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

        def tx(conn: Any) -> bool:
            # Serialise acquirers of this name (a missing row cannot be locked FOR UPDATE).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"agro-lock-row:{name}",))
            row = _dict_cursor(conn).execute(
                "SELECT owner, pid, host, heartbeat FROM agro_locks WHERE name = %s", (name,)
            ).fetchone()
            if lock_is_held(name, row, owner, now, host, stale_after, is_alive):
                return False
            conn.execute(
                "INSERT INTO agro_locks (name, owner, pid, host, acquired, heartbeat) VALUES (%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, pid = EXCLUDED.pid, host = EXCLUDED.host, "
                "acquired = EXCLUDED.acquired, heartbeat = EXCLUDED.heartbeat",
                (name, owner, pid, host, now, now),
            )
            return True

        return self._write(tx, "acquire_lock")

    def heartbeat_lock(self, name: str, owner: str) -> bool:
        """Refresh the lock's heartbeat; False if ``owner`` no longer holds it."""
        n = self._write(
            lambda conn: conn.execute(
                "UPDATE agro_locks SET heartbeat = %s WHERE name = %s AND owner = %s", (time.time(), name, owner)
            ).rowcount,
            "heartbeat_lock",
        )
        return n == 1

    def release_lock(self, name: str, owner: str) -> bool:
        n = self._write(
            lambda conn: conn.execute("DELETE FROM agro_locks WHERE name = %s AND owner = %s", (name, owner)).rowcount,
            "release_lock",
        )
        return n == 1

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        row = self._read(
            lambda conn: _dict_cursor(conn).execute(
                "SELECT name, owner, pid, host, acquired, heartbeat FROM agro_locks WHERE name = %s", (name,)
            ).fetchone(),
            "lock_holder",
        )
        return dict(row) if row is not None else None
