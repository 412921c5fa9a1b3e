"""``agro serve`` as the stdio proxy without the CLI's settings machinery: what an MCP client launches, started fast.

The full CLI loads every settings section (pydantic, ~0.4 s of imports on a quiet laptop core, over a second on a
loaded one, and ~25 MB of memory per process). The proxy needs three values: the data home, the serve mode and how
long to wait for a daemon it starts. When they come from the environment alone (no ``agro.toml`` to read, no
``AGRO_CONFIG``) and ``argv`` is plain ``serve``, this module runs the proxy on the standard library only. Anything
else (the in-process mode, a config file, an unknown option or a value it would have to validate) returns None and
the full CLI decides, with its checks and messages. The daemon, which loads the settings fully, reports a bad
setting in its log and the proxy shows its end.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["try_fast_proxy"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _global_options(args: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """``--home DIR`` / ``--log-level L`` before the command (either ``--x v`` or ``--x=v``); None if unsure."""
    opts: dict[str, str] = {}
    rest = list(args)
    while rest and rest[0].startswith("--"):
        name, eq, value = rest.pop(0).partition("=")
        if name not in ("--home", "--log-level"):
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        opts[name] = value
    return opts, rest


def try_fast_proxy(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int | None:
    """Run ``agro serve`` as the proxy and return its exit code, or None when the full CLI must handle ``argv``."""
    parsed = _global_options(list(sys.argv[1:] if argv is None else argv))
    if parsed is None or parsed[1] != ["serve"]:
        return None
    opts, _ = parsed
    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}  # names are case-blind
    if env.get("AGRO_CONFIG"):
        return None
    raw_home = opts.get("--home") or env.get("AGRO_HOME") or ""
    home = (Path(raw_home).expanduser() if raw_home else Path.home() / ".agro").resolve()
    if (home / "agro.toml").exists():
        return None  # it may set the mode, the home or the timeouts: the full loader reads it
    if env.get("AGRO_SERVE_MODE", "proxy") != "proxy":
        return None
    try:
        timeout = float(env.get("AGRO_DAEMON_START_TIMEOUT_SEC", "120"))
    except ValueError:
        return None
    level = (opts.get("--log-level") or env.get("AGRO_LOG_LEVEL") or "INFO").upper()
    if timeout <= 0 or level not in _LEVELS:
        return None
    if opts.get("--home"):
        os.environ["AGRO_HOME"] = raw_home  # a daemon this proxy starts serves the same home
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from agro_mcp.proxy import run_proxy

    try:
        return run_proxy(home, timeout)
    except KeyboardInterrupt:
        return 130
