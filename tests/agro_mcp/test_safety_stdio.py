"""Issue 20 over the real stdio transport: every request answered, confirmation by elicitation, no key in stderr."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.agro_mcp.stdio_helpers import RawPeer, index_with_cli, serve_env
from tests.agro_mcp.test_server_safety import check_annotations
from tests.conftest import write_repo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # each test starts `agro serve` (~20 s)

KEY = "sk-planted-0f1e2d3c4b5a"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("safety")
    repo = write_repo(base / "sample")
    home = base / "home"
    index_with_cli(home, repo, "sample")
    return home, repo


def _client(home: Path, errlog=None, **kwargs) -> Client:
    # In-process: each test sets its own environment (keys, admin mode), and reads the server's own stderr; a shared
    # daemon keeps the environment of the session that started it (tests/agro_mcp/test_daemon.py covers the proxy).
    env = serve_env(home, **{"AGRO_SERVE_MODE": "inprocess", **kwargs.pop("env", {})})
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)
    server = stdio_client(params, errlog=errlog) if errlog is not None else params
    return Client(server, read_timeout_seconds=120, **kwargs)


def _text(result: types.CallToolResult) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


# -- every request answered (findings 7, 8) -----------------------------------------------------------------------


async def test_a_lone_surrogate_in_any_string_gets_a_reply_over_stdio(home):
    home_dir, _ = home
    async with await anyio.open_process([sys.executable, "-m", "agro_mcp", "serve"], env=serve_env(home_dir)) as proc:
        peer = RawPeer(proc)
        await peer.initialize()
        replies = [
            await peer.call_tool("rag_search", {"query": "token \ud800 expiry", "k": 2}, timeout=120),
            await peer.call_tool("submit_feedback", {"event_id": "\udfff", "signal": "used"}),
            await peer.call_tool("rag_index", {"action": "status", "corpus": "x\ud83d"}),
            await peer.call_tool("reranker_admin", {"action": "logs", "run_id": "\ud800" * 3}),
            await peer.call_tool("no\ud800such", {}),
            await peer.request("tools/call", {"name": "rag_search", "arguments": {"query\udc00": "x"}}),
        ]
        await peer.send({"jsonrpc": "2.0", "id": "bad-1", "method": 7})  # no valid request, but it has an id
        with anyio.fail_after(10):
            invalid = await peer.receive_reply("bad-1")
        alive = await peer.call_tool("rag_index", {"action": "list"})
    search = replies[0]["result"]
    assert not search["isError"] and search["structuredContent"]["query"] == "token \ufffd expiry"
    assert all(r["result"]["isError"] for r in replies[1:])
    assert "unknown argument" in replies[5]["result"]["content"][0]["text"]
    assert invalid["error"]["code"] == -32600
    assert not alive["result"]["isError"]


BAD_CALLS = [
    ("rag_search", {"query": "token", "path_glob": "a[b-a]c"}, "path_glob 'a[b-a]c' is not a valid glob"),
    ("rag_index", {"action": "index", "path": "/tmp/a\x00b"}, "Cannot index"),
    ("rag_index", {"action": "index", "path": "~nonuser-zz9/x"}, "Cannot index"),
    ("rag_index", {"action": "index", "path": "/tmp/" + "n" * 4000}, "corpus id expects"),
    ("rag_index", {"action": "index", "path": "/tmp/" + "n" * 4000, "corpus": "long"}, "Cannot index"),
    ("rag_index", {"action": "index", "path": "/" + "p" * 1_000_000}, "path must be at most 4096 characters"),
    ("reranker_admin", {"action": "logs", "run_id": "r" * 1_000_000}, "run_id must be at most 200 characters"),
    ("rag_search", {"query": "token", "k": 0}, "k must be between 1 and 50; got 0"),
    ("rag_search", {"query": "token", "colour": "red"}, "unknown argument 'colour'"),
    ("rag_search", {"query": "x" * 30_000}, "query has 30000 characters; the limit is 20000"),
    ("submit_feedback", {"event_id": "e" * 190, "signal": "used"}, "Unknown event_id"),
]


async def test_bad_calls_get_a_short_fix_it_error_over_stdio(home):
    home_dir, _ = home
    async with _client(home_dir) as client:
        results = [await client.call_tool(tool, args) for tool, args, _ in BAD_CALLS]
    for (tool, args, needle), result in zip(BAD_CALLS, results, strict=True):
        text = _text(result)
        assert result.is_error and needle in text, (tool, text[:300])
        assert "Error executing tool" not in text and "pydantic.dev" not in text
        assert len(text) < 1200  # never the megabyte it was sent


# -- confirmation by elicitation (finding 12) ---------------------------------------------------------------------


async def _corpora(client: Client) -> list[str]:
    out = (await client.call_tool("rag_index", {"action": "list"})).structured_content
    return [c["corpus"] for c in out["data"]["corpora"]]


async def test_without_elicitation_what_cannot_be_undone_is_refused_with_the_cli_command(home, tmp_path):
    home_dir, repo = home
    folder = write_repo(tmp_path / "newrepo", {"a.py": "def alpha():\n    return 1\n"})
    async with _client(home_dir) as client:
        new = await client.call_tool("rag_index", {"action": "index", "path": str(folder), "corpus": "newrepo"})
        corpora = await _corpora(client)
        own_root = await client.call_tool("rag_index", {"action": "index", "path": str(repo), "corpus": "sample"})
        rollback = await client.call_tool("reranker_admin", {"action": "rollback"})
        forced = await client.call_tool("reranker_admin", {"action": "promote", "run_id": "r1", "force": True})
        gated = await client.call_tool("reranker_admin", {"action": "promote", "run_id": "r1"})
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert new.is_error and f"agro index {folder} --corpus newrepo" in _text(new)
    assert "newrepo" not in corpora
    assert not own_root.is_error, _text(own_root)  # re-indexing a corpus from its own root: no question
    assert rollback.is_error and "agro rollback" in _text(rollback)
    assert forced.is_error and "agro promote r1 --force" in _text(forced)
    assert gated.is_error and "confirm" not in _text(gated)  # gated promotion never asks; r1 simply does not exist
    check_annotations(tools)


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # input_required rounds (2026-07-28) and mid-call requests
async def test_indexing_a_new_folder_asks_the_user_and_goes_ahead_only_when_confirmed(home, tmp_path, mode):
    home_dir, _ = home
    folder = write_repo(tmp_path / f"asked-{mode}", {"b.py": "def beta():\n    return 2\n"})
    args = {"action": "index", "path": str(folder), "corpus": f"asked-{mode}"}
    answers: list[bool | None] = [None, False, True]  # decline, accept unticked, accept ticked
    asked: list[str] = []

    async def callback(_context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        answer = answers.pop(0)
        if answer is None:
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content={"confirm": answer})

    async with _client(home_dir, elicitation_callback=callback, mode=mode) as client:
        declined = await client.call_tool("rag_index", args)
        unticked = await client.call_tool("rag_index", args)
        before = await _corpora(client)
        done = await client.call_tool("rag_index", args)
        after = await _corpora(client)
    assert declined.is_error and "did not confirm" in _text(declined)
    assert unticked.is_error and "confirm" in _text(unticked)
    assert f"asked-{mode}" not in before
    assert not done.is_error, _text(done)
    assert f"asked-{mode}" in after
    assert len(asked) == 3 and str(folder) in asked[0]


async def test_unattended_admin_skips_the_question(home):
    home_dir, _ = home
    async with _client(home_dir, env={"AGRO_ADMIN_ENABLED": "unattended"}) as client:
        rollback = await client.call_tool("reranker_admin", {"action": "rollback"})
    assert rollback.is_error and "agro rollback" not in _text(rollback)  # it ran: there is nothing to roll back


# -- secrets never in output (finding 4), over the real process -----------------------------------------------------


class _EchoEndpoint:
    """An OpenAI-compatible stand-in that answers 401 with the request's headers in the body."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.dumps({"error": "denied", "echo": dict(self.headers)}).encode()
                self.send_response(401)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def echo_endpoint() -> Iterator[_EchoEndpoint]:
    ep = _EchoEndpoint()
    yield ep
    ep.close()


async def test_a_planted_key_never_reaches_the_result_or_the_servers_stderr(home, echo_endpoint, tmp_path):
    home_dir, _ = home
    env = {"AGRO_LLM_BASE_URL": echo_endpoint.url.replace("http://", f"http://u:{KEY}-url@"),
           "AGRO_LLM_MODEL": "m", "AGRO_LLM_API_KEY": KEY, "AGRO_LOG_LEVEL": "DEBUG"}
    errlog = tmp_path / "stderr.txt"
    with errlog.open("w") as err:
        async with _client(home_dir, errlog=err, env=env) as client:
            result = await client.call_tool("rag_answer", {"question": "where is the token expiry checked",
                                                              "corpus": "sample"})
    stderr = errlog.read_text()
    assert not result.is_error, _text(result)
    assert "HTTP 401" in result.structured_content["note"] and "rag_answer" in stderr
    assert KEY not in json.dumps(result.structured_content) + _text(result) + stderr
