"""PostgreSQL access shared by the index backend and the event store: one pool per URL, versioned migrations,
a retry for reads that lost their connection, and errors that say what to do.

Used only when ``AGRO_BACKEND=postgres``; nothing here is imported by the embedded backend.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from retrieval.errors import AgroUserError

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseUnavailableError",
    "SchemaVersionError",
    "close_all",
    "open_database",
    "redact_url",
    "require_postgres_client",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseError(AgroUserError, RuntimeError):
    """A database operation failed; the message says why and what to do."""


class DatabaseUnavailableError(DatabaseError):
    """PostgreSQL cannot be reached (at start) or the connection was lost twice in a row (mid-call)."""


class SchemaVersionError(DatabaseError):
    """The database schema was written by a newer agro-mcp than this one."""


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    url = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
    return re.sub(r"(password=)\S+", r"\1***", url)


POSTGRES_EXTRA_HINT = "pip install 'agro-mcp[postgres]' (from a clone: pip install -e '.[postgres]')"


def require_postgres_client() -> None:
    """Check that the PostgreSQL client libraries (the ``postgres`` extra) are installed.

    Raises:
        DatabaseError: naming the missing module and the extra that provides it.
    """
    for module in ("psycopg", "psycopg_pool", "pgvector"):
        try:
            __import__(module)
        except ImportError:
            raise DatabaseError(
                f"The postgres backend needs the PostgreSQL client libraries ({module} is not installed): "
                f"{POSTGRES_EXTRA_HINT}. Or run the embedded backend: AGRO_BACKEND=embedded."
            ) from None


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout):
        return True
    # A server-side termination (pg_terminate_backend, a restart) surfaces as AdminShutdown.
    return type(exc).__name__ in {"AdminShutdown", "CrashShutdown", "CannotConnectNow"}


CHECK_IDLE_SEC = 2.0  # a pooled connection idle longer than this is probed before it is handed out
_returned_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _mark_returned(conn: Any) -> None:
    _returned_at[conn] = time.monotonic()


def _check_if_idle(conn: Any) -> None:
    """Probe a connection (an empty query) only if it sat idle long enough for the server or a proxy to have dropped
    it. A busy server reuses connections within milliseconds and skips the round trip; a connection lost anyway
    is caught by :meth:`Database.read`'s retry or reported by :meth:`Database.write`."""
    from psycopg_pool import ConnectionPool

    if time.monotonic() - _returned_at.get(conn, 0.0) > CHECK_IDLE_SEC:
        ConnectionPool.check_connection(conn)


class Database:
    """A connection pool to one PostgreSQL database with the pgvector extension.

    ``write`` runs a function in one transaction and never retries it: if the connection is lost, the caller
    gets an error and the write is reported as failed (callers make writes idempotent, e.g. feedback's dedupe
    key, so a client retry is safe). ``read`` retries once on a lost connection, then raises
    :class:`DatabaseUnavailableError`.
    """

    def __init__(self, url: str, pool_size: int = 8, connect_timeout: float = 10.0) -> None:
        require_postgres_client()
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.safe_url = redact_url(url)
        self._migrated: set[str] = set()
        self._lock = threading.Lock()
        try:
            with psycopg.connect(url, connect_timeout=max(1, int(connect_timeout)), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                self.server_version = conn.info.server_version
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"Cannot use PostgreSQL at {self.safe_url}: {str(exc).strip()}. Check AGRO_DATABASE_URL, that the "
                "server is running and reachable, and that the pgvector extension is installed "
                "(CREATE EXTENSION vector needs it on the server). Or run the embedded backend: AGRO_BACKEND=embedded."
            ) from None

        def configure(conn) -> None:
            from pgvector.psycopg import register_vector

            register_vector(conn)
            conn.commit()

        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
            configure=configure,
            check=_check_if_idle,
            reset=_mark_returned,
            timeout=connect_timeout,  # waiting for a connection: fail with a clear error instead of hanging
            open=False,
            name="agro",
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            self.pool.close()
            raise DatabaseUnavailableError(f"Cannot open a connection pool to {self.safe_url}: {exc}") from None

    # -- running work -------------------------------------------------------------------------------------
    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection inside one transaction: committed on a clean exit, rolled back on an error."""
        with self.pool.connection() as conn:
            yield conn

    def read(self, fn: Callable[[Any], T], what: str = "read") -> T:
        """Run ``fn(conn)``; a lost connection is retried once on a fresh one."""
        for attempt in (1, 2):
            try:
                with self.pool.connection() as conn:
                    return fn(conn)
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                if attempt == 2:
                    raise DatabaseUnavailableError(
                        f"Lost the connection to PostgreSQL at {self.safe_url} during {what}, twice: {str(exc).strip()}. "
                        "Check that the database is up; the call can be repeated."
                    ) from None
                logger.warning("connection lost during %s; retrying once: %s", what, exc)
                with contextlib.suppress(Exception):
                    self.pool.check()
        raise AssertionError("unreachable")

    def write(self, fn: Callable[[Any], T], what: str = "write") -> T:
        """Run ``fn(conn)`` in one transaction. Not retried: a failure is reported, never swallowed."""
        try:
            with self.pool.connection() as conn:
                return fn(conn)
        except Exception as exc:
            if not _is_connection_error(exc):
                raise
            with contextlib.suppress(Exception):
                self.pool.check()
            raise DatabaseUnavailableError(
                f"Lost the connection to PostgreSQL at {self.safe_url} during {what}: {str(exc).strip()}. "
                "The write was not acknowledged; repeat the call (it is safe to repeat)."
            ) from None

    # -- schema -------------------------------------------------------------------------------------------
    def migrate(self, component: str, migrations: Sequence[Sequence[str]]) -> int:
        """Apply ``component``'s missing migrations (each list of statements in one transaction).

        Several processes may start at once: a transaction-level advisory lock makes one apply them while the
        others wait. Returns the schema version. Raises :class:`SchemaVersionError` for a newer schema.
        """
        with self._lock:
            if component in self._migrated:
                return len(migrations)
            with self.pool.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"agro-migrate:{component}",))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS agro_schema (component text PRIMARY KEY, version integer NOT NULL, "
                    "updated timestamptz NOT NULL DEFAULT now())"
                )
                row = conn.execute("SELECT version FROM agro_schema WHERE component = %s", (component,)).fetchone()
                current = int(row[0]) if row else 0
                if current > len(migrations):
                    raise SchemaVersionError(
                        f"The {component} schema in {self.safe_url} is version {current}, newer than this agro-mcp "
                        f"understands ({len(migrations)}). Upgrade agro-mcp on this machine (pip install -U agro-mcp)."
                    )
                for version in range(current + 1, len(migrations) + 1):
                    for statement in migrations[version - 1]:
                        conn.execute(statement)
                    logger.info("migrated %s schema to version %d", component, version)
                conn.execute(
                    "INSERT INTO agro_schema (component, version) VALUES (%s, %s) "
                    "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated = now()",
                    (component, len(migrations)),
                )
            self._migrated.add(component)
            return len(migrations)

    def schema_version(self, component: str) -> int:
        def q(conn):
            row = conn.execute(
                "SELECT version FROM agro_schema WHERE component = %s", (component,)
            ).fetchone()
            return int(row[0]) if row else 0

        return self.read(q, "schema_version")

    def close(self) -> None:
        self.pool.close()


_DATABASES: dict[str, Database] = {}
_DATABASES_LOCK = threading.Lock()


def open_database(url: str | None, pool_size: int = 8) -> Database:
    """The process-wide pool for ``url`` (one per URL, shared by the index backend and the event store)."""
    if not url:
        raise DatabaseError(
            "AGRO_BACKEND=postgres needs AGRO_DATABASE_URL, e.g. postgresql://agro:secret@db.internal:5432/agro"
        )
    with _DATABASES_LOCK:
        db = _DATABASES.get(url)
        if db is None or db.pool.closed:
            t = time.perf_counter()
            db = Database(url, pool_size=pool_size)
            _DATABASES[url] = db
            logger.info("connected to %s in %.0f ms", db.safe_url, (time.perf_counter() - t) * 1000)
        return db


def close_all() -> None:
    with _DATABASES_LOCK:
        for db in _DATABASES.values():
            db.close()
        _DATABASES.clear()
