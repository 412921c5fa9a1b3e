"""``agro daemon run|start|stop|status|restart``, and the read-only commands' warm path through a running daemon.

Nothing here imports torch or numpy: ``agro serve`` (the proxy) and the lifecycle commands stay light.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from agro_mcp.config import Settings
from agro_mcp.daemon_client import (
    DaemonUnavailable,
    control,
    socket_path,
    start_daemon,
    stop_daemon,
    token_path,
)
from retrieval.errors import AgroUserError

__all__ = ["register", "route", "daemon_search", "daemon_status", "socket_transport"]


def register(sub) -> None:
    from agro_mcp.cli_common import add_command

    s = add_command(sub, "daemon", "the shared warm server of this data home (models, indexes, sessions)",
                    "agro daemon status            # pid, uptime, sessions, memory, corpora, HTTP URL")
    s.add_argument("action", choices=["run", "start", "stop", "status", "restart"],
                   help="run: in the foreground; start: in the background; stop; status; restart")
    s.add_argument("--json", action="store_true", help="status as JSON")
    s.set_defaults(func=cmd_daemon)


def route(args, settings: Settings) -> int | None:
    """Commands that run without the heavy engine imports: the proxy and the lifecycle commands (None: others)."""
    if args.command == "daemon" and args.action != "run":
        return cmd_daemon(args, settings)
    if args.command == "serve" and settings.server.serve_mode == "proxy":
        from agro_mcp.proxy import run_proxy

        try:
            return run_proxy(settings.server.home, settings.server.daemon_start_timeout_sec)
        except KeyboardInterrupt:
            return 130
    return None


def cmd_daemon(args, settings: Settings) -> int:
    home = settings.server.home
    sv = settings.server
    if args.action == "run":
        from agro_mcp.daemon import configure_daemon_logging, run_daemon

        home.mkdir(parents=True, exist_ok=True)
        path = configure_daemon_logging(home, sv.log_level, sv.daemon_log_max_bytes, sv.daemon_log_backups)
        print(f"agro daemon: logging to {path}", file=sys.stderr)
        return run_daemon(settings)
    if args.action in ("stop", "restart"):
        st = stop_daemon(home)
        print("agro daemon stopped" + (f" (pid {st['pid']})" if st else ": none was running"), file=sys.stderr)
        if args.action == "stop":
            return 0
    if args.action in ("start", "restart"):
        try:
            started = start_daemon(home, timeout=sv.daemon_start_timeout_sec)
        except DaemonUnavailable as exc:
            print(f"agro: {exc}", file=sys.stderr)
            return 1
        print("agro daemon " + ("started" if started else "already running"), file=sys.stderr)
    st = control(home, "status")
    if st is None:
        if args.json:
            print(json.dumps({"running": False, "home": str(home), "socket": str(socket_path(home))}))
        else:
            print(f"agro daemon: not running (AGRO_HOME {home})")
        return 0 if args.action == "status" else 1
    st["running"] = True
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    up = st["uptime_sec"]
    sessions = st["sessions"]
    models = st["models"]
    print(f"agro daemon {st['version']}  pid {st['pid']}  up {_duration(up)}"
          + ("  (draining)" if st.get("draining") else ""))
    print(f"  sessions: {sessions['socket']} socket, {sessions['http']} HTTP ({sessions['total_served']} served)")
    print(f"  memory:   {st['rss_mb']:.0f} MB RSS")
    print(f"  models:   embedder {models.get('embedder') or 'loading'}; reranker "
          + (json.dumps(models['reranker']) if models.get("reranker") else "none loaded"))
    print(f"  corpora:  {', '.join(st['corpora']) or 'none indexed'}")
    print(f"  socket:   {st['socket']}")
    if st.get("http"):
        print(f"  http:     {st['http']}  (bearer token in {token_path(home)})")
    if st.get("console"):
        token = token_path(home).read_text(encoding="utf-8").strip()
        print(f"  console:  {st['console']}?token={token}")
    idle = st.get("idle_exit_sec")
    print(f"  idle exit: {'never' if not idle else _duration(idle)}")
    return 0


def _duration(sec: float) -> str:
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# -- the read-only commands through a running daemon ------------------------------------------------------------
@asynccontextmanager
async def socket_transport(path: Path):
    """An MCP client transport over the daemon's Unix socket (newline-delimited JSON-RPC)."""
    import anyio
    import mcp_types as types
    from anyio.streams.buffered import BufferedByteReceiveStream
    from mcp.shared._context_streams import create_context_streams
    from mcp.shared.message import SessionMessage

    stream = await anyio.connect_unix(os.fspath(path))
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)

    async def reader() -> None:
        buffered = BufferedByteReceiveStream(stream)
        async with read_writer:
            while True:
                try:
                    line = await buffered.receive_until(b"\n", 64 * 1024 * 1024)
                except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError):
                    return
                try:
                    await read_writer.send(SessionMessage(types.jsonrpc_message_adapter.validate_json(line)))
                except ValueError as exc:
                    await read_writer.send(exc)

    async def writer() -> None:
        async with write_reader:
            async for msg in write_reader:
                await stream.send((msg.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode())

    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_stream, write_stream
        finally:
            tg.cancel_scope.cancel()


class RemoteToolError(AgroUserError, RuntimeError):
    """A tool call through the daemon failed; the message is the tool's error text."""


def _call_daemon(settings: Settings, calls: list[tuple[str, dict]]) -> list[dict] | None:
    """Results (structured content) of tool calls through the running daemon, or None when none runs."""
    path = socket_path(settings.server.home)
    if control(settings.server.home, "status", timeout=2.0) is None:
        return None
    import anyio
    from mcp import Client

    async def go() -> list[dict]:
        out = []
        async with Client(socket_transport(path)) as client:
            for name, arguments in calls:
                result = await client.call_tool(name, arguments)
                if result.is_error:
                    raise RemoteToolError(" ".join(getattr(c, "text", "") for c in result.content))
                out.append(result.structured_content)
        return out

    try:
        return anyio.run(go)
    except OSError:
        return None  # the daemon went away between the check and the call: the caller runs the search itself


def daemon_search(args, settings: Settings):
    """``agro search`` answered by the running daemon (warm), or None when none runs."""
    arguments = {"query": args.query, "k": args.k}
    for name, value in (("corpus", args.corpus), ("path_glob", args.path_glob), ("language", args.language)):
        if value:
            arguments[name] = value
    if args.no_rerank:
        arguments["rerank"] = False
    try:
        results = _call_daemon(settings, [("rag_search", arguments)])
    except RemoteToolError as exc:
        from agro_mcp.engine import UserError

        raise UserError(str(exc)) from None
    if results is None:
        return None
    from agro_mcp.schemas import SearchResponse

    return SearchResponse.model_validate(results[0])


def daemon_status(args, settings: Settings) -> dict | None:
    """``agro status`` answered by the running daemon, or None when none runs."""
    calls = [("rag_index", {"action": "status", "corpus": args.corpus} if args.corpus else {"action": "list"})]
    if args.reranker:
        calls.append(("reranker_admin", {"action": "info"}))
    try:
        results = _call_daemon(settings, calls)
    except RemoteToolError as exc:
        from agro_mcp.engine import UserError

        raise UserError(str(exc)) from None
    if results is None:
        return None
    data = results[0].get("data", {})
    corpora = [data] if args.corpus else data.get("corpora", [])
    out = {"home": str(settings.server.home), "corpora": [c for c in corpora if "error" not in c],
           "daemon": {k: v for k, v in (control(settings.server.home, "status") or {}).items()
                      if k in ("pid", "version", "uptime_sec", "sessions", "rss_mb")}}
    if args.reranker:
        out["reranker"] = results[1]
    return out


def wait_for_socket(home: Path, timeout: float) -> bool:
    """True once a daemon listens for ``home`` (used by tests and scripts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if control(home, "status", timeout=1.0) is not None:
            return True
        time.sleep(0.05)
    return False
