"""``agro`` commands that serve MCP clients: ``serve``."""

from __future__ import annotations

import logging

from agro_mcp.cli_common import add_command
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


def register(sub) -> None:
    """Add ``serve`` to ``agro``'s subcommands."""
    s = add_command(
        sub, "serve", "run the MCP server over stdio (what an MCP client launches)",
        "claude mcp add agro -- /path/to/agro-mcp/.venv/bin/agro serve",
        description="Run the MCP server over stdio: stdout is the protocol stream, logs go to stderr.\n"
                    "MCP clients start it themselves; index a repository first (agro index).")
    s.set_defaults(func=cmd_serve)
