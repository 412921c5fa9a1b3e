"""The stdio transport with a reader in front: every request line gets an answer.

The SDK's stdio transport drops a line it cannot validate, so a request carrying a lone surrogate escape
(``"\\ud800"``, valid JSON but not valid Unicode) got no reply at all and its client waited for its own timeout.
Here each line is checked first: undecodable text is replaced (U+FFFD) so the request goes on to its tool and gets
its reply; a request that still is no valid JSON-RPC message but names its ``id`` gets an ``Invalid Request`` error
reply. Everything else is passed to the SDK's transport unchanged.

As in the SDK, fd 0 and fd 1 point at the null device and stderr while serving, so a child process or a stray
``print`` never touches the protocol stream.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from io import TextIOWrapper
from typing import Any, BinaryIO

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from pydantic import ValidationError

from retrieval.redact import clip

__all__ = ["repair_line", "stdio_transport"]

logger = logging.getLogger(__name__)

INVALID_REQUEST = -32600
_SURROGATES = {cp: "\ufffd" for cp in range(0xD800, 0xE000)}


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.translate(_SURROGATES)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def repair_line(line: str) -> tuple[str | None, dict[str, Any] | None]:
    """Check one inbound line: ``(line to hand to the SDK, None)`` or ``(None, error reply to send back)``.

    A line the SDK accepts is returned unchanged. One that is JSON but not valid Unicode (lone surrogates) comes
    back with them replaced by U+FFFD. A request (it has a ``method`` and an ``id``) that still fails validation
    is answered here with JSON-RPC ``Invalid Request``; anything else goes to the SDK, which logs it.
    """
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return line, None
    except ValidationError:
        pass
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return line, None  # not JSON: no id to answer to
    try:
        cleaned = _clean(obj)
    except RecursionError:
        cleaned = obj
    text = json.dumps(cleaned, ensure_ascii=False)
    try:
        types.jsonrpc_message_adapter.validate_json(text, by_name=False)
        return text, None
    except ValidationError as exc:
        if isinstance(cleaned, dict) and "method" in cleaned and _is_id(cleaned.get("id")):
            reason = "; ".join(f"{'.'.join(map(str, e['loc'][-2:]))}: {e['msg']}" for e in exc.errors()[:3])
            reply = {"jsonrpc": "2.0", "id": cleaned["id"],
                     "error": {"code": INVALID_REQUEST, "message": f"Invalid request: {clip(reason, 300)}"}}
            return None, reply
        return text, None


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class _LockedWriter:
    """The protocol stream's writer, shared by the SDK's writer and the reader's own replies (whole lines only)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lock = anyio.Lock()

    async def write(self, text: str) -> None:
        async with self._lock:
            await self._stream.write(text)

    async def flush(self) -> None:
        async with self._lock:
            await self._stream.flush()

    async def reply(self, message: dict[str, Any]) -> None:
        async with self._lock:
            await self._stream.write(json.dumps(message) + "\n")
            await self._stream.flush()


class _RepairingReader:
    """``async for line in reader``: the lines the SDK should see, after :func:`repair_line`."""

    def __init__(self, stream: Any, writer: _LockedWriter) -> None:
        self._stream = stream
        self._writer = writer

    def __aiter__(self) -> _RepairingReader:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self._stream.readline()
            if not line:
                raise StopAsyncIteration
            fixed, reply = repair_line(line)
            if reply is not None:
                logger.info("answered an invalid request (id %s) with an error", clip(reply["id"], 40))
                await self._writer.reply(reply)
                continue
            return fixed if fixed.endswith("\n") else fixed + "\n"


def _claim(fd: int, mode: str, divert: Callable[[], int]) -> tuple[BinaryIO, Callable[[], None]]:
    """Serve ``fd`` from a private duplicate and point ``fd`` itself at ``divert()`` until restored."""
    fallback = (sys.stdin if fd == 0 else sys.stdout).buffer
    try:
        import fcntl

        private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except (ImportError, OSError):
        return fallback, lambda: None
    try:
        target = divert()
        os.dup2(target, fd)
        os.close(target)
    except OSError:
        return os.fdopen(private, mode, closefd=False), lambda: None

    def restore() -> None:
        with suppress(OSError):
            os.dup2(private, fd)

    # closefd=False: a worker thread may still block on it after the transport exits.
    return os.fdopen(private, mode, closefd=False), restore


@asynccontextmanager
async def stdio_transport() -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's ``stdio_server`` over this process's stdin/stdout, with :func:`repair_line` in front."""
    stdin_buffer, restore_stdin = _claim(0, "rb", lambda: os.open(os.devnull, os.O_RDONLY))
    stdout_buffer, restore_stdout = _claim(1, "wb", lambda: os.dup(2))
    try:
        stdin = anyio.wrap_file(TextIOWrapper(stdin_buffer, encoding="utf-8", errors="replace"))
        writer = _LockedWriter(anyio.wrap_file(TextIOWrapper(stdout_buffer, encoding="utf-8")))
        async with stdio_server(stdin=_RepairingReader(stdin, writer), stdout=writer) as streams:
            yield streams
    finally:
        restore_stdout()
        restore_stdin()
