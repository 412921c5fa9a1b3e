"""``agro``: the command line. Every command calls the same library functions as the MCP tools.

This module parses the global options, loads the settings, configures logging and dispatches; the commands live
by group: ``cli_index`` (index, search, status, demo), ``cli_serve`` (serve), ``cli_feedback`` (feedback,
import-logs, export, golden, db), ``cli_training`` (evaluate, mine, train, loop, bootstrap, pretrain) and
``cli_releases`` (promote, rollback, jobs). Shared helpers are in ``cli_common``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agro_mcp.serve_fast import try_fast_proxy

# Nothing heavier at import time: `agro serve` (the proxy every MCP session launches) starts from this module, and
# serve_fast runs it on the standard library alone when it can. The command groups load in build_parser().

__all__ = ["build_parser", "echo", "main"]


def _groups() -> tuple:
    """Command groups, in the order ``agro --help`` lists them."""
    from agro_mcp import cli_daemon, cli_feedback, cli_index, cli_releases, cli_serve, cli_training

    return (cli_index, cli_serve, cli_daemon, cli_feedback, cli_training, cli_releases)


def __getattr__(name: str):
    if name == "echo":
        from agro_mcp.cli_common import echo

        return echo
    if name == "GROUPS":
        return _groups()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

EPILOG = """\
first steps:
  agro index ~/src/myrepo                        index a repository (corpus id: the folder name)
  agro search "where is the token validated?"    search it
  agro serve                                     what an MCP client launches (see the README)

Every command has its own help with an example: agro index --help
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agro", description="Local-first code search for AI assistants (MCP), with a "
                                "reranker that learns from feedback.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", metavar="DIR", help="data home: database, indexes, models (default: $AGRO_HOME or ~/.agro)")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                   help="stderr log level (default: $AGRO_LOG_LEVEL or INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _groups():
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    fast = try_fast_proxy(argv)
    if fast is not None:
        return fast
    from agro_mcp import cli_daemon
    from agro_mcp.config import ConfigError, load_settings
    from agro_mcp.logging_setup import configure_logging, quiet_third_party
    from retrieval.errors import AgroUserError

    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.home:
        env["AGRO_HOME"] = args.home
    if args.log_level:
        env["AGRO_LOG_LEVEL"] = args.log_level
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"agro: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    quiet_third_party()  # no progress bars in a log file or a pipe
    if settings.retrieval.embed_model == "auto" or Path(settings.retrieval.embed_model).expanduser().exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local weights: never ask a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    routed = cli_daemon.route(args, settings)  # the stdio proxy and the daemon's lifecycle: no engine imports
    if routed is not None:
        return routed
    try:
        return args.func(args, settings) or 0
    except AgroUserError as exc:
        print(f"agro: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
