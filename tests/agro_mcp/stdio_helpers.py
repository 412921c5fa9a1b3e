"""Helpers for tests that run `agro serve` as a real subprocess: an indexed data home and a raw JSON-RPC peer.

The raw peer writes request lines itself (``json.dumps`` escapes a lone surrogate as ``\\ud800``, which the SDK's
client cannot send at all) and reads the replies by id, with a deadline per request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

REPO_ROOT = Path(__file__).resolve().parents[2]


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"AGRO_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
                "AGRO_RERANKER_ENABLED": "0", "AGRO_CONFIG": str(home / "none.toml")})
    env.update(extra)
    return env


def index_with_cli(home: Path, repo: Path, corpus: str) -> None:
    out = subprocess.run([sys.executable, "-m", "agro_mcp", "index", str(repo), "--corpus", corpus],
                         env=serve_env(home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


class RawPeer:
    """A JSON-RPC peer on a server process's stdin/stdout (the legacy initialize handshake)."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.reader = BufferedByteReceiveStream(process.stdout)
        self.next_id = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.process.stdin.send((json.dumps(message) + "\n").encode())

    async def receive_reply(self, request_id: Any) -> dict[str, Any]:
        while True:
            line = await self.reader.receive_until(b"\n", 64 * 1024 * 1024)
            msg = json.loads(line)
            if msg.get("id") == request_id and ("result" in msg or "error" in msg):
                return msg

    async def request(self, method: str, params: Any = None, timeout: float = 10.0, **raw: Any) -> dict[str, Any]:
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method, **raw}
        if params is not None:
            msg["params"] = params
        with anyio.fail_after(timeout):
            await self.send(msg)
            return await self.receive_reply(self.next_id)

    async def initialize(self) -> None:
        await self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                          "clientInfo": {"name": "raw", "version": "0"}}, timeout=120)
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call_tool(self, name: str, arguments: Any, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request("tools/call", {"name": name, "arguments": arguments}, timeout=timeout)
