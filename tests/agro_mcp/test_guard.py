"""The guarded MCP server: unknown arguments refused, fix-it validation messages, crashes as short tool errors."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import pytest
from mcp import Client
from pydantic import Field

from agro_mcp.guard import GuardedMCPServer
from agro_mcp.stdio import repair_line

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _server() -> GuardedMCPServer:
    server = GuardedMCPServer("t")

    @server.tool()
    def pick(
        k: Annotated[int, Field(ge=1, le=50)] = 10,
        mode: Literal["a", "b"] = "a",
        name: Annotated[str, Field(min_length=1, max_length=20)] = "x",
    ) -> str:
        return f"{k}{mode}{name}"

    @server.tool()
    def crash(word: Annotated[str, Field(max_length=100)] = "w") -> str:
        raise RuntimeError(f"internal detail {word}")

    @server.tool()
    def refuse(word: Annotated[str, Field(max_length=2_000_000)]) -> str:
        from mcp.server.mcpserver.exceptions import ToolError

        raise ToolError(f"no such thing as {word!r}")

    return server


def _text(result) -> str:
    return result.content[0].text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"k": 0}, "Invalid arguments for pick: k must be between 1 and 50; got 0"),
        ({"k": 51}, "k must be between 1 and 50; got 51"),
        ({"mode": "c"}, "mode must be one of 'a' or 'b'; got 'c'"),
        ({"name": ""}, "name must not be empty"),
        ({"name": "n" * 1_000_000}, "name must be at most 20 characters; got 1000000"),
        ({"colour": "red"}, "unknown argument 'colour'; pick takes: k, mode, name"),
    ],
)
async def test_validation_errors_are_fix_it_sentences_without_pydantic_links(args, message):
    async with Client(_server()) as client:
        result = await client.call_tool("pick", args)
    assert result.is_error and message in _text(result)
    assert "pydantic" not in _text(result) and len(_text(result)) < 400


async def test_the_published_schema_forbids_unknown_arguments():
    async with Client(_server()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert all(t.input_schema["additionalProperties"] is False for t in tools.values())


async def test_a_crash_is_a_short_tool_error_and_its_traceback_goes_to_the_log(caplog):
    caplog.set_level(logging.ERROR)
    async with Client(_server()) as client:
        result = await client.call_tool("crash", {"word": "w1"})
    assert result.is_error
    assert _text(result).startswith("crash failed with an internal error (RuntimeError)")
    assert "internal detail" not in _text(result)
    assert "Traceback" in caplog.text and "internal detail w1" in caplog.text


async def test_an_error_never_repeats_more_than_about_200_characters_of_the_input():
    async with Client(_server()) as client:
        result = await client.call_tool("refuse", {"word": "z" * 1_000_000})
        unknown = await client.call_tool("q" * 100_000, {})
    assert result.is_error and "more characters" in _text(result) and len(_text(result)) < 400
    assert unknown.is_error and len(_text(unknown)) < 400


def test_repair_line_replaces_lone_surrogates_and_answers_invalid_requests_by_id():
    line = '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x\\ud800", "arguments": {}}}'
    fixed, reply = repair_line(line)
    assert reply is None and "\ufffd" in fixed and "\\ud800" not in fixed
    fixed, reply = repair_line('{"jsonrpc": "2.0", "id": "a", "method": 5}')
    assert fixed is None and reply["id"] == "a" and reply["error"]["code"] == -32600
    ok = '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    assert repair_line(ok) == (ok, None)
    assert repair_line("not json") == ("not json", None)  # no id to answer: the SDK logs it
