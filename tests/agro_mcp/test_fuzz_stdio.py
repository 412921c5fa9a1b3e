"""Fuzz (issue 20): seeded, bounded random calls over every tool through real clients over stdio.

Random strings (words, control characters and NUL, paths, globs, 5 KB to 1.1 MB), random integers, wrong types,
unknown arguments and unknown tools. Phase one goes through the SDK's client; phase two through a raw JSON-RPC peer,
because only a raw peer can send lone surrogates (``\\ud800``), which the SDK's client refuses to encode. Every call
must be answered within 10 s and the server must still answer at the end. State-changing admin actions are off
(``AGRO_ADMIN_ENABLED=0``) so no training job starts; indexing a new folder is refused (no elicitation).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.agro_mcp.stdio_helpers import RawPeer, index_with_cli, serve_env
from tests.conftest import write_repo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SEED = 20
SDK_CALLS = 450
RAW_CALLS = 100
ANSWER_SEC = 10.0

TOOLS: dict[str, dict[str, list[Any]]] = {  # argument -> plausible values (random ones are mixed in)
    "rag_search": {"query": ["oauth token expiry", "ConnectionPool.acquire", "retry with jitter"],
                   "corpus": ["sample", None], "k": [1, 5, 50], "rerank": [True, False, None],
                   "path_glob": ["**/*.py", "auth/*", "a[b-a]c", "[", "**"], "language": ["python", "js"]},
    "rag_answer": {"question": ["how is a token validated?"], "corpus": ["sample"], "k": [1, 3, 8]},
    "rag_index": {"action": ["status", "list", "refresh", "index"], "path": ["/", "/etc", "~/.ssh", "~nonuser/x"],
                  "corpus": ["sample", "new-one"], "full": [False]},
    "submit_feedback": {"event_id": ["0" * 32], "signal": ["click", "used", "thumbs_up", "thumbs_down", "rating",
                                                            "correct_location"],
                        "doc_id": ["auth/oauth.py:1-16", "x.py:1-2"], "rating": [1, 5], "path": [".env", "../x"],
                        "start_line": [1], "end_line": [2, 10_000], "note": ["ok"]},
    "reranker_admin": {"action": ["info", "status", "runs", "eval_latest", "logs", "cancel", "wait", "train",
                                  "rollback", "promote", "evaluate", "mine", "reload"],
                       "run_id": ["20260101-000000-train-abcdef", "../../etc"], "dataset": ["golden", "/etc/passwd"],
                       "wait": [False, True], "force": [False, True]},
}
ODD_STRINGS = ["", " ", "\x00", "a\x00b", "../../etc/passwd", "/etc/shadow", "~/.aws/credentials", "C:\\x\\y",
               "'; DROP TABLE query_events; --", "${HOME}", "%s%s%n", "\u202e\u0000\uffff", "🦀" * 50,
               "Authorization: Bearer xyz", "http://user:pw@127.0.0.1:1/v1"]


def _random_string(rng: random.Random, surrogates: bool) -> str:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(ODD_STRINGS)
    if roll < 0.5:
        return "x" * rng.choice([5_000, 100_001, 1_100_000])
    alphabet = [chr(c) for c in (*range(0, 0x80), 0x85, 0xA0, 0x2028, 0xFEFF, 0x1F600)]
    if surrogates:
        alphabet += ["\ud800", "\udbff", "\udc00", "\udfff"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))


def _random_value(rng: random.Random, surrogates: bool) -> Any:
    roll = rng.random()
    if roll < 0.5:
        return _random_string(rng, surrogates)
    if roll < 0.75:
        return rng.choice([0, -1, 1, 51, 2**31, -(2**63), 10**30, 3])
    return rng.choice([None, True, 1.5, [], ["a"], {"k": "v"}, float("1e308")])


def _random_call(rng: random.Random, surrogates: bool = False) -> tuple[str, dict[str, Any]]:
    name = rng.choice(list(TOOLS))
    args: dict[str, Any] = {}
    for arg, plausible in TOOLS[name].items():
        if rng.random() < 0.55:
            args[arg] = rng.choice(plausible) if rng.random() < 0.6 else _random_value(rng, surrogates)
    if rng.random() < 0.08:
        args[_random_string(rng, surrogates)[:40] or "extra"] = _random_value(rng, surrogates)
    if rng.random() < 0.03:
        name = rng.choice(["nope", "rag_search ", _random_string(rng, surrogates)[:100]])
    return name, args


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    home = base / "home"
    index_with_cli(home, write_repo(base / "sample"), "sample")
    return home


def _env(home: Path) -> dict[str, str]:
    return serve_env(home, AGRO_ADMIN_ENABLED="0")


async def test_random_calls_through_the_sdk_client_are_each_answered_and_the_server_survives(home):
    rng = random.Random(SEED)
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=_env(home))
    answered = errors = 0
    async with Client(params, read_timeout_seconds=120) as client:
        warm = await client.call_tool("rag_search", {"query": "warm up", "k": 1})  # waits for the embedding model
        assert not warm.is_error
        for _ in range(SDK_CALLS):
            name, args = _random_call(rng)
            with anyio.fail_after(ANSWER_SEC):
                try:
                    result = await client.call_tool(name, args)
                except MCPError:  # a protocol-level error reply is an answer too
                    errors += 1
                    continue
            answered += 1
            if result.is_error:
                text = result.content[0].text
                assert len(text) <= 4200 and "Error executing tool" not in text, text[:300]
        alive = await client.call_tool("rag_index", {"action": "list"})
    assert not alive.is_error
    assert answered + errors == SDK_CALLS


async def test_random_calls_with_lone_surrogates_over_raw_stdio_are_each_answered(home):
    rng = random.Random(SEED + 1)
    async with await anyio.open_process([sys.executable, "-m", "agro_mcp", "serve"], env=_env(home)) as proc:
        peer = RawPeer(proc)
        await peer.initialize()
        await peer.call_tool("rag_search", {"query": "warm up", "k": 1}, timeout=120)
        for _ in range(RAW_CALLS):
            name, args = _random_call(rng, surrogates=True)
            reply = await peer.call_tool(name, args, timeout=ANSWER_SEC)
            assert "result" in reply or "error" in reply
        alive = await peer.call_tool("rag_index", {"action": "list"})
        proc.terminate()
    assert not alive["result"]["isError"]
