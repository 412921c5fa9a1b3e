"""``agro`` commands that serve clients: ``serve`` (MCP over stdio) and ``console`` (the web page)."""

from __future__ import annotations

import logging

from agro_mcp.cli_common import add_command, echo
from agro_mcp.config import Settings

__all__ = ["register"]

logger = logging.getLogger("agro")


def cmd_serve(args, settings: Settings) -> int:
    from agro_mcp.engine import Engine
    from agro_mcp.server import create_server

    # Open the storage before the MCP handshake: an unreachable database (or an unusable data home) stops here
    # with its reason, never as a half-started server that fails every call.
    engine = Engine(settings)
    engine.indexes  # noqa: B018 - opens the index backend (pool + migrations for postgres)
    engine.store  # noqa: B018
    server = create_server(settings, engine)
    logger.info("agro-mcp serving over stdio (AGRO_HOME=%s, backend %s)", settings.server.home, settings.server.backend)
    try:
        server.run("stdio")
    finally:
        engine.close()
    return 0


def cmd_console(args, settings: Settings) -> int:
    """Serve the web console alone on this process's Engine, and print the URL that carries the token once."""
    import socket

    import uvicorn

    from agro_mcp.engine import Engine
    from agro_mcp.web import create_console_app, load_or_create_token

    cs = settings.console
    host = args.host or cs.host
    port = cs.port if args.port is None else args.port
    token = load_or_create_token(settings.server.home)
    if args.url:
        echo(f"http://{_url_host(host)}:{port}/?token={token}")
        return 0
    engine = Engine(settings)
    engine.indexes  # noqa: B018 - an unreachable backend stops here, not in the first page
    engine.store  # noqa: B018
    engine.start_background(warm=True)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections made as soon as the URL is printed wait in the backlog until uvicorn serves
    port = sock.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("the console listens on %s, not loopback: anyone who can reach it and has the token can use it",
                       host)
    app = create_console_app(engine, cs.model_copy(update={"host": host, "port": port}), token)
    echo(f"agro console: http://{_url_host(host)}:{port}/?token={token}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def register(sub) -> None:
    """Add ``serve`` to ``agro``'s subcommands."""
    s = add_command(
        sub, "serve", "run the MCP server over stdio (what an MCP client launches)",
        "claude mcp add agro -- /path/to/agro-mcp/.venv/bin/agro serve",
        description="Run the MCP server over stdio: stdout is the protocol stream, logs go to stderr.\n"
                    "MCP clients start it themselves; index a repository first (agro index).")
    s.set_defaults(func=cmd_serve)

    s = add_command(
        sub, "console", "serve the web console (search, feedback, learning) on 127.0.0.1",
        "agro console                 # prints http://127.0.0.1:8765/?token=...; open it in a browser",
        description="Serve the web console: search with feedback, corpora, the learning loop and the reranker.\n"
                    "The printed URL carries the per-install token once; the browser then keeps it in a cookie.")
    s.add_argument("--host", help="address to bind (default: $AGRO_CONSOLE_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: $AGRO_CONSOLE_PORT or 8765; 0 = any free port)")
    s.add_argument("--url", action="store_true", help="only print the console's URL (with its token) and exit")
    s.set_defaults(func=cmd_console)
