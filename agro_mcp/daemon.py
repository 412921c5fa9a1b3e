"""``agro daemon``: one warm process per data home, serving full MCP sessions to every client.

It holds one :class:`~agro_mcp.engine.Engine` (embedding model, open index generations, the reranker with its
hot-reload, the event store) and serves the same MCP server as ``agro serve --inprocess``:

* over a Unix socket in ``AGRO_HOME`` (mode 0600): one MCP session per connection, newline-delimited JSON-RPC as
  over stdio, so sampling, elicitation, progress and cancellation work; ``agro serve`` proxies stdio to it;
* over Streamable HTTP at ``http://127.0.0.1:<port>/mcp`` (the SDK's transport with its Host and Origin checks, and a
  bearer token kept in ``AGRO_HOME/daemon.token``, mode 0600).

A connection whose first line is ``{"agro_control": ...}`` is a control request (``status``, ``stop``, ``drain``).
Index builds and training jobs run on a small pool of lower-priority threads, so searches keep their latency.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import logging.handlers
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.buffered import BufferedByteReceiveStream

from agro_mcp.config import Settings
from agro_mcp.daemon_client import (
    CONTROL_KEY,
    agro_version,
    log_dir,
    socket_path,
    state_path,
    token_path,
)
from agro_mcp.engine import Engine
from retrieval.errors import AgroError
from retrieval.redact import RedactingFormatter

__all__ = ["DaemonEngine", "run_daemon", "configure_daemon_logging", "read_or_create_token"]

logger = logging.getLogger(__name__)

MAX_LINE = 64 * 1024 * 1024
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
_JOB_ACTIONS = frozenset({"mine", "train", "evaluate", "promote", "rollback", "bootstrap", "pretrain"})


class AlreadyRunning(AgroError, RuntimeError):
    """Another daemon holds this data home."""


# -- lower-priority background work ---------------------------------------------------------------------------
class BackgroundPool:
    """A bounded pool for index builds and training jobs: its threads run at a higher niceness and with a smaller
    torch (OpenMP) team, both per thread (:mod:`retrieval.threads`), so searches keep a core and get the CPU first.
    Jobs started from it (training threads) keep the same limits."""

    def __init__(self, nice: int, workers: int = 2, torch_threads: int = 0) -> None:
        self.nice = nice
        self.torch_threads = torch_threads or max(1, (os.cpu_count() or 2) - 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agro-background")

    def _limited(self, fn, *args, **kwargs):
        from retrieval.threads import limit_this_thread

        # at every call: torch may have been imported since the thread started
        limit_this_thread(self.nice, self.torch_threads)
        return fn(*args, **kwargs)

    def run(self, fn, *args, progress=None, **kwargs):
        """Run ``fn`` on the pool and wait for its result (the caller is a worker thread of one session).

        ``progress`` (passed to ``fn`` as ``progress=``) is called back in the caller's thread, where it may reach
        the session's event loop (an MCP progress notification); the pool's threads cannot."""
        if progress is None:
            return self._pool.submit(self._limited, fn, *args, **kwargs).result()
        updates: queue.SimpleQueue = queue.SimpleQueue()
        future = self._pool.submit(self._limited, fn, *args, progress=lambda *a: updates.put(a), **kwargs)
        while True:
            try:
                progress(*updates.get(timeout=0.1))
            except queue.Empty:
                if future.done() and updates.empty():
                    return future.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class DaemonEngine(Engine):
    """The daemon's engine: index builds and job-starting admin actions run on the lower-priority pool."""

    def __init__(self, settings: Settings, pool: BackgroundPool) -> None:
        super().__init__(settings)
        self._pool = pool
        slots = settings.server.daemon_search_concurrency or os.cpu_count() or 2
        self._search_slots = threading.BoundedSemaphore(slots)

    def rank(self, *args, **kwargs):
        """At most ``AGRO_DAEMON_SEARCH_CONCURRENCY`` searches rank at once (default: one per core); the others
        wait their turn. Eight at once on two cores only took turns in the kernel and on the GIL (each query
        embedding gives the GIL up and takes it back ~70 times), which made every one of them slow."""
        with self._search_slots:
            return super().rank(*args, **kwargs)

    def index(self, path, corpus=None, full=False, progress=None, **who):
        """``who``: the caller's reach (``face``, ``root_change``), passed on unchanged."""
        return self._pool.run(super().index, path, corpus, full, progress=progress, **who)

    def admin(self, action: str, run_id: str | None = None, dataset: str | None = None, force: bool = False) -> dict:
        if action in _JOB_ACTIONS:
            return self._pool.run(super().admin, action, run_id=run_id, dataset=dataset, force=force)
        return super().admin(action, run_id=run_id, dataset=dataset, force=force)


# -- files in the data home -----------------------------------------------------------------------------------
def read_or_create_token(home: Path) -> str:
    """The per-install token (``AGRO_HOME/daemon.token``, mode 0600) shared by the HTTP endpoint and the console."""
    from agro_mcp.web.security import load_or_create_token

    return load_or_create_token(home)


def _write_private_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def configure_daemon_logging(home: Path, level: str = "INFO", max_bytes: int = LOG_MAX_BYTES,
                             backups: int = LOG_BACKUPS) -> Path:
    """Log to ``AGRO_HOME/logs/daemon.log``, rotated (``AGRO_DAEMON_LOG_MAX_BYTES`` x ``AGRO_DAEMON_LOG_BACKUPS``,
    10 MB x 5 by default), instead of stderr."""
    logs = log_dir(home)
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "daemon.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(RedactingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "sentence_transformers", "transformers", "filelock", "urllib3", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return path


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak, in bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# -- the daemon -----------------------------------------------------------------------------------------------
@dataclass
class _State:
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    socket_sessions: int = 0
    sessions_total: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    draining: bool = False
    drain_reason: str | None = None
    http_url: str | None = None
    console_url: str | None = None


class Daemon:
    """One daemon process: the listeners, the sessions, the lifecycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.server.home
        self.version = agro_version()
        self.state = _State()
        self.socket_path = socket_path(self.home)
        self._lock_fd: int | None = None
        self._withdrawn = False
        self._listener: anyio.abc.SocketListener | None = None
        self._uvicorn = None
        self._http_manager = None
        self._stop: anyio.Event | None = None  # events belong to the event loop: made in main()
        self._http_done: anyio.Event | None = None
        self.pool = BackgroundPool(settings.server.daemon_background_nice,
                                   torch_threads=settings.server.daemon_background_torch_threads)
        self.engine: DaemonEngine | None = None
        self.server = None

    # lock: one serving daemon per home
    def acquire_home(self) -> None:
        import fcntl

        fd = os.open(self.home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"an agro daemon already serves {self.home}") from None
        self._lock_fd = fd

    def withdraw(self) -> None:
        """Stop being findable: no state file, then no socket. Once a client cannot connect, both are gone (the
        lock is kept until the process ends, so no successor starts while this one still closes its stores).
        Once only: after a drain the paths may already belong to a successor."""
        if self._withdrawn:
            return
        self._withdrawn = True
        try:
            st = json.loads(state_path(self.home).read_text(encoding="utf-8"))
            if st.get("pid") == os.getpid():
                state_path(self.home).unlink()
        except (OSError, ValueError):
            pass
        try:
            if self.socket_path.exists():
                self.socket_path.unlink()
        except OSError:
            logger.warning("cannot remove %s", self.socket_path, exc_info=True)

    def release_home(self) -> None:
        """Give the home to a successor: no state file, no socket, no lock (in that order)."""
        self.withdraw()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # status
    def http_sessions(self) -> int:
        manager = self._http_manager
        return len(getattr(manager, "_server_instances", {}) or {}) if manager is not None else 0

    def sessions(self) -> int:
        return self.state.socket_sessions + self.http_sessions()

    def status(self) -> dict[str, Any]:
        eng = self.engine
        models: dict[str, Any] = {"embedder": None, "reranker": None}
        corpora: list[str] = []
        if eng is not None:
            emb = eng._embedder  # noqa: SLF001 - read-only peek: status must not wait for a load
            models["embedder"] = getattr(emb, "model_id", None)
            rr = eng._reranker  # noqa: SLF001
            if rr is not None:
                try:
                    info = rr.info()
                    models["reranker"] = {k: info.get(k) for k in ("model", "release", "loaded", "backend", "loaded_at")
                                          if k in info}
                except Exception:  # noqa: BLE001 - status must answer even with a broken reranker
                    logger.debug("reranker info failed", exc_info=True)
            try:
                corpora = eng.corpora()
            except Exception as exc:  # noqa: BLE001 - status must answer even with a broken store
                corpora = [f"<error: {exc}>"]
        return {
            "pid": os.getpid(),
            "version": self.version,
            "home": str(self.home),
            "started_at": self.state.started_at,
            "uptime_sec": round(time.monotonic() - self.state.started_mono, 1),
            "sessions": {"socket": self.state.socket_sessions, "http": self.http_sessions(),
                         "total_served": self.state.sessions_total},
            "rss_mb": round(_rss_mb(), 1),
            "models": models,
            "corpora": corpora,
            "socket": str(self.socket_path),
            "http": self.state.http_url,
            "console": self.state.console_url,  # open with ?token=<AGRO_HOME/daemon.token>
            "idle_exit_sec": self.settings.server.daemon_idle_exit_sec,
            "draining": self.state.draining,
        }

    def publish_state(self) -> None:
        _write_private_json(state_path(self.home), {
            "pid": os.getpid(), "version": self.version, "socket": str(self.socket_path),
            "http": self.state.http_url, "started_at": self.state.started_at,
        })

    # listeners
    def bind_socket(self) -> socket.socket:
        path = self.socket_path
        if path.exists() or path.is_symlink():
            path.unlink()  # a dead daemon's; we hold the home lock, so no live daemon listens there
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock

    def bind_http(self) -> socket.socket | None:
        sv = self.settings.server
        if not sv.daemon_http_enabled:
            return None
        family = socket.AF_INET6 if ":" in sv.daemon_http_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((sv.daemon_http_host, sv.daemon_http_port))
        except OSError as exc:
            sock.close()
            logger.error("HTTP endpoint disabled: cannot bind %s:%d (%s); set AGRO_DAEMON_HTTP_PORT",
                         sv.daemon_http_host, sv.daemon_http_port, exc)
            return None
        sock.listen(128)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        host = f"[{sv.daemon_http_host}]" if family == socket.AF_INET6 else sv.daemon_http_host
        self.state.http_url = f"http://{host}:{port}/mcp"
        return sock

    # sessions over the socket
    async def handle_connection(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                first = await buffered.receive_until(b"\n", MAX_LINE)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, anyio.DelimiterNotFound):
                return
            request = _control_request(first)
            if request is not None:
                await self.handle_control(request, stream)
                return
            self.state.socket_sessions += 1
            self.state.sessions_total += 1
            number = self.state.sessions_total
            logger.info("session %d opened over the socket (%d open)", number, self.sessions())
            try:
                await self.serve_session(first, buffered, stream)
            except Exception:  # top-level handler of one session: it must never reach the others
                logger.exception("MCP session over the socket ended with an error")
            finally:
                self.state.socket_sessions -= 1
                self.state.last_activity = time.monotonic()
                logger.info("session %d closed (%d open)", number, self.sessions())

    async def serve_session(self, first: bytes, buffered: BufferedByteReceiveStream,
                            stream: anyio.abc.SocketStream) -> None:
        from mcp.shared._context_streams import create_context_streams
        from mcp.shared.message import SessionMessage

        from agro_mcp.stdio import repair_line

        read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
        write_stream, write_reader = create_context_streams[SessionMessage](0)

        async def reader() -> None:
            line = first
            async with read_writer:
                while True:
                    if line.strip():
                        fixed, reply = repair_line(line.decode("utf-8", "replace"))  # every request answered
                        if reply is not None:
                            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                                await stream.send((json.dumps(reply) + "\n").encode("utf-8"))
                        else:
                            try:
                                message = types.jsonrpc_message_adapter.validate_json(fixed, by_name=False)
                            except Exception as exc:  # noqa: BLE001 - the SDK answers a bad frame with an error
                                await read_writer.send(exc)
                            else:
                                await read_writer.send(SessionMessage(message))
                    try:
                        line = await buffered.receive_until(b"\n", MAX_LINE)
                    except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError,
                            anyio.ClosedResourceError, anyio.DelimiterNotFound):
                        return

        async def writer() -> None:
            async with write_reader:
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    try:
                        await stream.send(data.encode("utf-8"))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the client left; the session ends when its reader sees EOF

        low = self.server._lowlevel_server  # noqa: SLF001 - the SDK's documented per-connection entry point
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            await low.run(read_stream, write_stream, low.create_initialization_options())
            tg.cancel_scope.cancel()

    async def handle_control(self, request: dict, stream: anyio.abc.SocketStream) -> None:
        action = request.get(CONTROL_KEY)
        if action == "status":
            reply = await anyio.to_thread.run_sync(self.status)
        elif action == "stop":
            reply = await anyio.to_thread.run_sync(self.status)
            reply["stopping"] = True
            self._stop.set()
        elif action == "drain":
            reply = await anyio.to_thread.run_sync(self.status)
            reply["draining"] = True
        else:
            reply = {"error": f"unknown control action {action!r}; expected status, stop or drain"}
        try:
            await stream.send((json.dumps(reply, default=str) + "\n").encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if action == "drain":
            await self.begin_drain(str(request.get("reason") or "asked"))

    async def begin_drain(self, reason: str) -> None:
        """Stop accepting, hand the home to a successor, and exit once the open sessions end."""
        if self.state.draining:
            return
        logger.info("draining: %s (%d open session(s))", reason, self.sessions())
        self.state.draining, self.state.drain_reason = True, reason
        if self._listener is not None:
            await self._listener.aclose()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self.release_home()

    # lifecycle
    async def watch_idle(self) -> None:
        idle = self.settings.server.daemon_idle_exit_sec
        drain_deadline: float | None = None
        while not self._stop.is_set():
            await anyio.sleep(min(1.0, idle / 4) if idle else 1.0)
            now = time.monotonic()
            if self.sessions():
                self.state.last_activity = now
            if self.state.draining:
                if drain_deadline is None:
                    drain_deadline = now + self.settings.server.daemon_drain_timeout_sec
                if not self.sessions() or now >= drain_deadline:
                    logger.info("drained; exiting")
                    self._stop.set()
                continue
            if idle and not self.sessions() and now - self.state.last_activity >= idle:
                logger.info("no session for %.0f s (AGRO_DAEMON_IDLE_EXIT_SEC): exiting", idle)
                self._stop.set()

    async def watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                logger.info("signal %d: stopping", signum)
                self._stop.set()
                return

    async def serve_http(self, sock: socket.socket, token: str) -> None:
        import uvicorn
        from mcp.server.transport_security import TransportSecuritySettings

        sv = self.settings.server
        port = sock.getsockname()[1]
        hosts = {sv.daemon_http_host, "127.0.0.1", "localhost", "[::1]"} if sv.daemon_http_host in (
            "127.0.0.1", "localhost", "::1") else {sv.daemon_http_host if ":" not in sv.daemon_http_host
                                                   else f"[{sv.daemon_http_host}]"}
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"{h}:{port}" for h in hosts],
            allowed_origins=[f"http://{h}:{port}" for h in hosts],
        )
        app = self.server.streamable_http_app(transport_security=security, host=sv.daemon_http_host)
        self._http_manager = self.server.session_manager

        from agro_mcp.web import create_console_app

        # One port, one per-install token: /mcp for MCP clients (bearer header), everything else is the web console
        # (the token once in the URL, then an HttpOnly cookie; its own Host, Origin and CSRF checks).
        console = create_console_app(self.engine, self.settings.console.model_copy(
            update={"host": sv.daemon_http_host, "port": port}), token)
        self.state.console_url = f"http://{_url_host(sv.daemon_http_host)}:{port}/"
        config = uvicorn.Config(_Router(BearerTokenMiddleware(app, token), console), log_config=None,
                                lifespan="on", log_level="warning", access_log=False)
        self._uvicorn = uvicorn.Server(config)
        try:
            await self._uvicorn._serve(sockets=[sock])  # noqa: SLF001 - serve() would take the daemon's signals
        finally:
            self._http_done.set()

    async def main(self) -> None:
        self._stop, self._http_done = anyio.Event(), anyio.Event()
        sock = self.bind_socket()
        http_sock = self.bind_http()
        token = read_or_create_token(self.home) if http_sock is not None else None
        self._listener = await anyio.abc.SocketListener.from_socket(sock)
        self.publish_state()
        logger.info("agro daemon %s (pid %d) serving %s%s", self.version, os.getpid(), self.socket_path,
                    f" and {self.state.http_url}" if self.state.http_url else "")
        async with anyio.create_task_group() as tg:
            # Sessions live in their own task group: closing the listener (a drain) ends only the accept loop.
            tg.start_soon(self._serve_socket, tg)
            if http_sock is not None:
                tg.start_soon(self.serve_http, http_sock, token)
            tg.start_soon(self.watch_idle)
            tg.start_soon(self.watch_signals)
            await self._stop.wait()
            if not self.state.draining:  # a drain already closed the listener and gave the paths away
                self.withdraw()
                if self._listener is not None:
                    await self._listener.aclose()
            if self._uvicorn is not None:
                self._uvicorn.should_exit = True
                with anyio.move_on_after(5):
                    await self._http_done.wait()
            tg.cancel_scope.cancel()

    async def _serve_socket(self, sessions: anyio.abc.TaskGroup) -> None:
        try:
            await self._listener.serve(self.handle_connection, task_group=sessions)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # closed by a drain; the open sessions go on


class _Router:
    """``/mcp`` (and the lifespan, which runs the MCP session manager) to the MCP app; other paths to the console."""

    def __init__(self, mcp_app, console) -> None:
        self.mcp_app, self.console = mcp_app, console

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path == "/mcp" or path.startswith("/mcp/"):
            await self.mcp_app(scope, receive, send)
        else:
            await self.console(scope, receive, send)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class BearerTokenMiddleware:
    """Refuses HTTP requests without ``Authorization: Bearer <the daemon's token>`` (401)."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self._expected):
                body = b'{"error": "missing or wrong bearer token; it is in AGRO_HOME/daemon.token"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="agro"'),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _control_request(line: bytes) -> dict | None:
    if b'"' + CONTROL_KEY.encode() + b'"' not in line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and CONTROL_KEY in obj else None


def run_daemon(settings: Settings) -> int:
    """Serve until stopped, idle or drained. Exit code 0 also when another daemon already serves the home."""
    from agro_mcp.server import create_server

    daemon = Daemon(settings)
    try:
        daemon.acquire_home()
    except AlreadyRunning as exc:
        logger.info("%s", exc)
        return 0
    try:
        engine = DaemonEngine(settings, daemon.pool)
        engine.indexes  # noqa: B018 - opens the index backend: an unusable home fails here, with its reason
        engine.store  # noqa: B018
        engine.start_background(warm=True)
        daemon.engine = engine
        daemon.server = create_server(settings, engine)
        anyio.run(daemon.main)
    finally:
        if daemon._lock_fd is not None:  # noqa: SLF001
            daemon.release_home()
        daemon.pool.shutdown()
        if daemon.engine is not None:
            daemon.engine.close()
        logger.info("agro daemon stopped")
    return 0
