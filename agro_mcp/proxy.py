"""``agro serve`` as a thin stdio proxy to the daemon: what MCP clients launch.

It imports neither torch nor numpy, connects to the daemon's socket (starting the daemon when none runs) and
copies newline-delimited JSON-RPC both ways. It reads just enough of each message to keep its promises:

* a request in flight when the daemon goes away gets a JSON-RPC error reply at once (never a hang);
* the next message reconnects, to a daemon started again if needed, replaying the client's ``initialize`` so the
  new daemon's session is ready for it;
* a daemon older than this proxy is asked to drain (finish its sessions and exit) and a new one is started.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from agro_mcp.daemon_client import DaemonUnavailable, connect, ensure_daemon

__all__ = ["Proxy", "run_proxy"]

logger = logging.getLogger(__name__)

LOST = -32001  # server-defined JSON-RPC error: the daemon connection was lost
UNAVAILABLE = -32002  # the daemon could not be reached or started
_REPLAY_TIMEOUT = 60.0


class Proxy:
    """Pumps one MCP session between ``stdin``/``stdout`` (the client) and the daemon of ``home``."""

    def __init__(self, home: Path, stdin: BinaryIO, stdout: BinaryIO, env: Mapping[str, str] | None = None,
                 start_timeout: float = 120.0) -> None:
        self.home = Path(home)
        self.stdin, self.stdout = stdin, stdout
        self.env = env
        self.start_timeout = start_timeout
        self._lock = threading.Lock()  # guards the connection and the in-flight table
        self._out_lock = threading.Lock()  # one writer on stdout at a time
        self._conn: socket.socket | None = None
        self._conn_gen = 0
        self._in_flight: dict[object, str] = {}  # request id -> method, client requests awaiting a reply
        self._initialize: dict | None = None  # the client's initialize request, replayed after a reconnect
        self._initialized = False
        self._modern = False  # the client's requests carry the per-request envelope (2026-07-28): no handshake
        self._replay_waiters: dict[str, threading.Event] = {}
        self._replays = 0
        self._readers: list[threading.Thread] = []
        self.reconnects = 0

    # client -> daemon
    def run(self) -> int:
        """Pump until the client closes stdin. Exit code 2 when no daemon can be started (the reason on stderr)."""
        try:
            self._connection(replay=False)  # at once: the daemon warms up while the client prepares its handshake
        except DaemonUnavailable as exc:
            sys.stderr.write(f"agro serve: {exc}\n")
            sys.stderr.flush()
            return 2
        try:
            for line in iter(self.stdin.readline, b""):
                if line.strip():
                    self._from_client(line if line.endswith(b"\n") else line + b"\n")
        finally:
            self._close()
        return 0

    def _from_client(self, line: bytes) -> None:
        msg = _parse(line)
        request_id = method = None
        if isinstance(msg, dict):
            method = msg.get("method")
            if method is not None and "id" in msg:
                request_id = msg["id"]
            if method == "initialize":
                self._initialize = msg
            elif request_id is not None:
                self._modern = _has_modern_envelope(msg.get("params"))
            elif method == "notifications/initialized":
                self._initialized = True
        for attempt in (1, 2):
            try:
                conn = self._connection(replay=method != "initialize")
            except DaemonUnavailable as exc:
                if request_id is not None:
                    self._reply_error(request_id, UNAVAILABLE, f"agro daemon unavailable: {exc}")
                return
            if request_id is not None:
                with self._lock:
                    self._in_flight[_key(request_id)] = method
            try:
                logger.debug("to daemon: %s", line[:300])
                conn.sendall(line)
                return
            except OSError:
                # The daemon died before this request reached it: it was never handled, so send it again once.
                with self._lock:
                    self._in_flight.pop(_key(request_id), None)
                self._lost(conn, "while sending")
                if attempt == 2 and request_id is not None:
                    self._reply_error(request_id, LOST, "the agro daemon connection was lost while sending "
                                                        "this request; call it again")

    def _connection(self, replay: bool) -> socket.socket:
        with self._lock:
            if self._conn is not None:
                return self._conn
        ensure_daemon(self.home, self.env, self.start_timeout)
        conn = connect(self.home, timeout=10.0)
        if conn is None:
            raise DaemonUnavailable(f"no agro daemon listens on the socket of {self.home}")
        with self._lock:
            if self._conn is not None:  # another thread connected meanwhile
                conn.close()
                return self._conn
            self._conn, self._conn_gen = conn, self._conn_gen + 1
            gen = self._conn_gen
            first = gen == 1
        reader = threading.Thread(target=self._pump_daemon, args=(conn, gen), name="agro-proxy-reader", daemon=True)
        reader.start()
        self._readers.append(reader)
        if not first:
            self.reconnects += 1
            logger.info("reconnected to the agro daemon (connection %d)", gen)
            if replay and self._initialize is not None and not self._modern:
                self._replay_handshake(conn)
        return conn

    def _replay_handshake(self, conn: socket.socket) -> None:
        """Open the new daemon session as the client opened the old one; its replies stay in the proxy."""
        self._replays += 1
        rid = f"agro-proxy-replay-{self._replays}"
        done = threading.Event()
        self._replay_waiters[rid] = done
        msg = dict(self._initialize)
        msg["id"] = rid
        try:
            conn.sendall((json.dumps(msg) + "\n").encode())
            if not done.wait(_REPLAY_TIMEOUT):
                raise DaemonUnavailable("the restarted agro daemon did not answer the session handshake")
            if self._initialized:
                conn.sendall(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        except OSError as exc:
            raise DaemonUnavailable(f"the restarted agro daemon closed the connection: {exc}") from None
        finally:
            self._replay_waiters.pop(rid, None)

    # daemon -> client
    def _pump_daemon(self, conn: socket.socket, gen: int) -> None:
        buf = conn.makefile("rb")
        try:
            for line in iter(buf.readline, b""):
                if not line.endswith(b"\n"):
                    break  # a partial frame: the daemon died mid-write
                msg = _parse(line)
                if isinstance(msg, dict) and "method" not in msg and "id" in msg:
                    rid = msg["id"]
                    waiter = self._replay_waiters.get(rid) if isinstance(rid, str) else None
                    if waiter is not None:
                        waiter.set()
                        continue
                    with self._lock:
                        self._in_flight.pop(_key(rid), None)
                self._write(line)
        except OSError:
            pass
        finally:
            buf.close()
            self._lost(conn, "while waiting for replies")

    def _lost(self, conn: socket.socket, when: str) -> None:
        """The daemon connection ``conn`` is gone: fail what was in flight on it; the next message reconnects."""
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
            pending, self._in_flight = self._in_flight, {}
        try:
            conn.close()
        except OSError:
            pass
        for waiter in list(self._replay_waiters.values()):
            waiter.set()
        if pending:
            logger.warning("agro daemon connection lost %s; %d call(s) in flight fail", when, len(pending))
        for rid, method in pending.items():
            self._reply_error(_unkey(rid), LOST,
                              f"the agro daemon stopped {when} (its connection was lost) before {method!r} "
                              "completed; the call was not finished. Call it again: the next call restarts "
                              "the daemon.")

    def _reply_error(self, request_id, code: int, message: str) -> None:
        reply = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
        self._write((json.dumps(reply) + "\n").encode())

    def _write(self, line: bytes) -> None:
        with self._out_lock:
            try:
                self.stdout.write(line)
                self.stdout.flush()
            except (OSError, ValueError):  # the client went away; stdin EOF will end the proxy
                pass

    def _close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_WR)  # the daemon ends the session, finishing what it was sending
            except OSError:
                pass
        for reader in self._readers:
            reader.join(timeout=5)
        if conn is not None:
            conn.close()


def _parse(line: bytes):
    try:
        return json.loads(line)
    except ValueError:
        return None  # forwarded as is: the daemon answers a malformed frame itself


def _has_modern_envelope(params) -> bool:
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and any(k.endswith("/protocolVersion") for k in meta)


def _key(request_id):
    """Ids as dict keys: 1 and "1" are different requests."""
    return (type(request_id).__name__, request_id if not isinstance(request_id, (list, dict)) else repr(request_id))


def _unkey(key):
    return key[1]


def run_proxy(home: Path, start_timeout: float = 120.0) -> int:
    """``agro serve`` in proxy mode: the client's stdio, pumped to the daemon until the client closes stdin."""
    return Proxy(home, sys.stdin.buffer, sys.stdout.buffer, start_timeout=start_timeout).run()
