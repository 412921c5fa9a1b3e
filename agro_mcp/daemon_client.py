"""Finding, starting and asking the daemon of a data home. Standard library only: the stdio proxy imports this.

The daemon listens on a Unix socket in ``AGRO_HOME``. A connection whose first line is a JSON object with the key
``agro_control`` is a control request (status, stop, drain) answered by one JSON line; any other connection is one
MCP session, newline-delimited JSON-RPC as over stdio.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import AgroUserError

__all__ = [
    "DaemonUnavailable",
    "agro_version",
    "connect",
    "control",
    "ensure_daemon",
    "socket_path",
    "start_daemon",
    "stop_daemon",
    "token_path",
]

logger = logging.getLogger(__name__)

CONTROL_KEY = "agro_control"
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 104 (macOS) or 108 (Linux) bytes with its NUL


class DaemonUnavailable(AgroUserError, RuntimeError):
    """The daemon is not running and could not be started; the message says why and where its log is."""


VERSION_OVERRIDE_ENV = "AGRO__VERSION_FOR_TESTS"


def agro_version() -> str:
    """The installed agro-mcp version (what a proxy compares with the daemon it finds).

    ``AGRO__VERSION_FOR_TESTS`` in the environment replaces it: the end-to-end test of an upgrade starts a daemon
    and a proxy that report different versions. It is read from the process environment only (no setting, no
    tool argument reaches it)."""
    override = os.environ.get(VERSION_OVERRIDE_ENV)
    if override:
        return override
    # The installed distribution's folder names its version: found without importlib.metadata, which would add
    # ~2.4 MB (email, zipfile, csv) to every proxy process.
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("agro_mcp-") and name.endswith(".dist-info"):
                return name[len("agro_mcp-"):-len(".dist-info")]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agro-mcp")
    except PackageNotFoundError:
        return "0.0.0"


def socket_path(home: Path) -> Path:
    """The daemon's socket: ``AGRO_HOME/daemon.sock``, or, when that path is too long for a Unix socket, a
    per-home name in a private runtime folder (``$XDG_RUNTIME_DIR`` or ``/tmp/agro-<uid>``, mode 0700)."""
    home = Path(home)
    path = home / "daemon.sock"
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        return path
    import hashlib  # here only: it loads OpenSSL (~4 MB with tempfile) into every proxy otherwise
    import tempfile

    base = Path(os.environ.get("XDG_RUNTIME_DIR") or Path(tempfile.gettempdir()) / f"agro-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256(os.fsencode(str(home.resolve()))).hexdigest()[:20]
    return base / f"agro-{digest}.sock"


def token_path(home: Path) -> Path:
    """The HTTP endpoint's bearer token (mode 0600)."""
    return Path(home) / "daemon.token"


def state_path(home: Path) -> Path:
    """What the running daemon publishes about itself (pid, version, socket, HTTP URL)."""
    return Path(home) / "daemon.json"


def log_dir(home: Path) -> Path:
    return Path(home) / "logs"


def connect(home: Path, timeout: float = 2.0) -> socket.socket | None:
    """A connected socket to the daemon of ``home``, or None when none is listening."""
    path = socket_path(home)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(path))
    except OSError:  # no socket file, a stale one (ECONNREFUSED), or a dying daemon
        s.close()
        return None
    s.settimeout(None)
    return s


def control(home: Path, action: str, timeout: float = 10.0, **params) -> dict | None:
    """Send one control request; the daemon's JSON answer, or None when no daemon is listening."""
    s = connect(home, timeout)
    if s is None:
        return None
    try:
        s.settimeout(timeout)
        s.sendall((json.dumps({CONTROL_KEY: action, **params}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError:
        return None
    finally:
        s.close()
    if not buf.strip():
        return None
    return json.loads(buf)


@contextmanager
def _start_lock(home: Path):
    """An exclusive lock around "is a daemon there? else start one", so concurrent proxies start one daemon."""
    fd = os.open(Path(home) / "daemon.start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _log_tail(home: Path, lines: int = 15) -> str:
    path = log_dir(home) / "daemon.stderr.log"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_daemon(home: Path, env: Mapping[str, str] | None = None, timeout: float = 120.0) -> bool:
    """Start the daemon of ``home`` unless one answers; wait until it accepts connections.

    Returns True when this call started it, False when one was already running.

    Raises:
        DaemonUnavailable: it exited or did not answer within ``timeout``; the message carries its log's end.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with _start_lock(home):
        s = connect(home)
        if s is not None:
            s.close()
            return False
        logs = log_dir(home)
        logs.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ if env is None else env)
        child_env["AGRO_HOME"] = str(home)
        with open(logs / "daemon.stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agro_mcp", "daemon", "run"],
                env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, close_fds=True, cwd=str(home),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = connect(home)
            if s is not None:
                s.close()
                logger.info("started the agro daemon (pid %d) for %s", proc.pid, home)
                return True
            code = proc.poll()
            if code is not None:
                # exit 0 means another daemon holds the home (started by hand, outside this lock): use it
                s = connect(home)
                if code == 0 and s is not None:
                    s.close()
                    return False
                raise DaemonUnavailable(
                    f"the agro daemon exited with code {code} while starting; its log ({logs}) ends with:\n"
                    + _log_tail(home)
                )
            time.sleep(0.05)
        raise DaemonUnavailable(
            f"the agro daemon did not accept connections within {timeout:.0f} s "
            f"(AGRO_DAEMON_START_TIMEOUT_SEC); see {logs}:\n" + _log_tail(home)
        )


def ensure_daemon(home: Path, env: Mapping[str, str] | None = None, timeout: float = 120.0,
                  version: str | None = None) -> dict:
    """A running daemon of this proxy's version for ``home``: its status.

    A daemon of another version (an upgrade, or a downgrade, since it was started) is asked to drain (it stops
    accepting, finishes its open sessions and exits) and a new one is started beside it.
    """
    version = version or agro_version()
    for _ in range(3):
        st = control(home, "status")
        if st is None:
            start_daemon(home, env, timeout)
            continue
        if st.get("version") != version:
            logger.info("agro daemon %s is not this proxy's %s: asking it to drain", st.get("version"), version)
            control(home, "drain", reason=f"a proxy of version {version} connected")
            deadline = time.monotonic() + 10  # until it has handed the home over (its socket is gone)
            while time.monotonic() < deadline and (control(home, "status", timeout=1.0) or {}).get("pid") == st["pid"]:
                time.sleep(0.05)
            continue
        return st
    raise DaemonUnavailable(f"no agro daemon of version {version} answered for {home}")


def stop_daemon(home: Path, timeout: float = 30.0) -> dict | None:
    """Ask the daemon to stop and wait until its socket is gone; its last status, or None if none was running."""
    st = control(home, "stop")
    if st is None:
        return None
    deadline = time.monotonic() + timeout
    pid = st.get("pid")
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.05)
    return st


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
