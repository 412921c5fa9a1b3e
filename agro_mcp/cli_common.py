"""What every ``agro`` command group shares: stdout output, progress on a terminal, the Engine, and subcommands
whose help ends with an example."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from retrieval.errors import AgroUserError

__all__ = ["CommandFailed", "JobProgress", "Progress", "add_command", "echo", "guard", "make_engine", "run_here"]


def echo(*parts: Any, **kw: Any) -> None:
    """The one way commands write results to stdout (never used by ``agro serve``, whose stdout is MCP)."""
    print(*parts, **kw)


def make_engine(settings):
    """The Engine, imported lazily: ``agro --help`` and ``agro serve``'s start must not pay for torch."""
    from agro_mcp.engine import Engine

    return Engine(settings)


class CommandFailed(AgroUserError):
    """A user-fixable failure of a command: printed as ``agro: <message>``, exit status 2."""


def guard(fn):
    """Turn user-facing errors (and a missing file) into ``agro: message`` on stderr and exit status 2."""

    def wrapped(args, settings) -> int:
        try:
            return fn(args, settings) or 0
        except (AgroUserError, FileNotFoundError) as exc:
            echo(f"agro: {exc}", file=sys.stderr)
            return 2

    return wrapped


def run_here(settings, kind: str, fn, lock: str | None = "training"):
    """Run ``fn(workspace, ctx)`` as a recorded job in this process: ``(run_id, result)``. On a terminal its
    progress is drawn on stderr."""
    from training.releases.jobs import run_job

    eng = make_engine(settings)
    ws = eng.workspace
    shown = None

    def job(ctx):
        nonlocal shown
        shown = JobProgress(ctx)
        return fn(ws, shown)

    try:
        run_id, result = run_job(eng.store, settings.server.home, kind, job, lock_name=lock)
    finally:
        if shown is not None:
            shown.close()
        eng.close()
    return run_id, result


def add_command(sub, name: str, help: str, example: str, description: str | None = None, **kw: Any):
    """A subcommand whose ``--help`` shows its description and ends with ``example`` (one or more lines)."""
    lines = example.strip("\n").splitlines()
    epilog = "example:\n" + "\n".join("  " + ln for ln in lines)
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


class Progress:
    """A one-line progress display on stderr, only when stderr is a terminal: ``progress(stage, done, total)``."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{stage:>6} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class JobProgress:
    """A job context whose progress reports are also drawn on stderr when it is a terminal (training, mining).

    Wraps the ``JobContext`` a job function receives; every other attribute is the context's own.
    """

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self._enabled = sys.stderr.isatty()
        self._last = 0.0
        self._width = 0

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)

    def progress(self, fraction: float, message: str | None = None) -> None:
        self._ctx.progress(fraction, message)
        if not self._enabled:
            return
        now = time.monotonic()
        if fraction < 1 and now - self._last < 0.2:
            return
        self._last = now
        filled = int(30 * max(0.0, min(1.0, fraction)))
        line = f"\r{self._ctx.kind:>9} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {message or ''}"
        sys.stderr.write(line.ljust(self._width))
        self._width = len(line)
        if fraction >= 1:
            sys.stderr.write("\n")
            self._width = 0
        sys.stderr.flush()

    def close(self) -> None:
        """End the progress line, if one is drawn."""
        if self._enabled and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._width = 0
