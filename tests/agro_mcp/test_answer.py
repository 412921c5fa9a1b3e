"""rag_answer: context building, citation checks, and the tool through the SDK's client against the real server."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from agro_mcp.answer import (
    ANSWER_PROMPT,
    DROPPED_MARK,
    build_context,
    chat_completions_url,
    estimate_tokens,
    extract_citations,
)
from agro_mcp.config import load_settings
from agro_mcp.engine import Engine
from agro_mcp.server import create_server
from retrieval.types import Chunk, Hit

API_KEY = "sk-test-secret-4242"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- unit: context ------------------------------------------------------------------------------------------------


def _hit(path: str, start: int, n_lines: int, width: int = 30, score: float = 1.0) -> Hit:
    lines = [f"line_{start + i:04d} " + "x" * width for i in range(n_lines)]
    return Hit(Chunk.make(path, start, start + n_lines - 1, "python", None, "\n".join(lines) + "\n"), score, score)


def _block_bodies(context: str) -> list[str]:
    """Every code line shown in the context (fences and labels removed)."""
    return [ln for ln in context.splitlines() if ln.startswith("line_")]


def test_build_context_keeps_every_hit_in_rank_order_when_they_fit():
    hits = [_hit("a.py", 1, 5), _hit("b.py", 10, 5), _hit("c.py", 20, 5)]
    context, used = build_context(hits, 10_000, estimate_tokens)
    assert [h.doc_id for h in used] == ["a.py:1-5", "b.py:10-14", "c.py:20-24"]
    labels = re.findall(r"^\[(\d)\] (\S+)", context, flags=re.M)
    assert labels == [("1", "a.py:1-5"), ("2", "b.py:10-14"), ("3", "c.py:20-24")]


def test_build_context_cuts_the_first_hit_that_does_not_fit_at_a_line_boundary_and_drops_lower_ones():
    hits = [_hit("a.py", 1, 10), _hit("b.py", 100, 40), _hit("c.py", 5, 1)]
    first, _ = build_context(hits[:1], 10_000, estimate_tokens)
    budget = estimate_tokens(first) + 1 + 150  # room for a.py and part of b.py
    context, used = build_context(hits, budget, estimate_tokens)
    assert [h.chunk.path for h in used] == ["a.py", "b.py"]  # tiny c.py never displaces the higher-ranked b.py
    cut = used[1]
    kept = len(cut.chunk.text.splitlines())
    assert 3 <= kept < 40
    assert cut.doc_id == f"b.py:100-{100 + kept - 1}"
    assert f"[2] b.py:100-{100 + kept - 1}" in context
    assert cut.extra["cut_from"] == "b.py:100-139"
    source_lines = set(hits[0].chunk.text.splitlines()) | set(hits[1].chunk.text.splitlines())
    assert all(line in source_lines for line in _block_bodies(context))  # never mid-line
    assert estimate_tokens(context) <= budget


def test_build_context_never_splits_a_line_even_when_nothing_else_fits():
    long_line = Hit(Chunk.make("big.py", 7, 7, "python", None, "y" * 4000), 1.0, 1.0)
    context, used = build_context([long_line, _hit("a.py", 1, 3)], 200, estimate_tokens)
    assert used == [] and context == ""


def test_build_context_respects_the_budget_for_many_budgets():
    hits = [_hit(f"f{i}.py", 1 + i * 50, 12 + i, width=10 + 7 * i) for i in range(6)]
    all_lines = {ln for h in hits for ln in h.chunk.text.splitlines()}
    for budget in range(50, 1200, 37):
        context, used = build_context(hits, budget, estimate_tokens)
        assert estimate_tokens(context) <= budget
        assert [h.chunk.path for h in used] == [h.chunk.path for h in hits[: len(used)]]
        assert all(line in all_lines for line in _block_bodies(context))


def test_build_context_fence_survives_backticks_in_the_code():
    md = Hit(Chunk.make("README.md", 1, 3, "markdown", None, "```python\nx = 1\n```\n"), 1.0, 1.0)
    context, _ = build_context([md], 1000, estimate_tokens)
    assert "````markdown" in context and context.rstrip().endswith("````")


# -- unit: citations ----------------------------------------------------------------------------------------------

CONTEXT_HITS = [_hit("src/auth/oauth.py", 45, 23), _hit("src/db.py", 1, 30)]


def test_extract_citations_keeps_overlapping_ranges_and_drops_invented_ones():
    answer = (
        "Tokens are checked in src/auth/oauth.py:50-55 and stored via src/db.py:12. "
        "Refresh lives in src/auth/refresh.py:10-20 and in src/db.py:200-210."
    )
    kept, dropped, cleaned = extract_citations(answer, CONTEXT_HITS)
    assert [(c.doc_id, c.start_line, c.end_line) for c in kept] == [
        ("src/auth/oauth.py:45-67", 50, 55),
        ("src/db.py:1-30", 12, 12),
    ]
    assert dropped == ["src/auth/refresh.py:10-20", "src/db.py:200-210"]
    assert "refresh.py" not in cleaned and "200-210" not in cleaned
    assert cleaned.count(DROPPED_MARK) == 2
    assert "src/auth/oauth.py:50-55" in cleaned


def test_extract_citations_clips_to_the_block_and_accepts_a_unique_path_suffix():
    kept, dropped, _ = extract_citations("See oauth.py:40-50, `src/db.py:L3-L4`, ./src/db.py:5.", CONTEXT_HITS)
    assert dropped == []
    spans = [(c.path, c.start_line, c.end_line) for c in kept]
    assert spans == [("src/auth/oauth.py", 45, 50), ("src/db.py", 3, 4), ("src/db.py", 5, 5)]


def test_extract_citations_ignores_text_that_is_not_a_location():
    kept, dropped, cleaned = extract_citations("Step:2 then ratio 3:4 at http://localhost:8080 ok", CONTEXT_HITS)
    assert kept == [] and dropped == [] and cleaned == "Step:2 then ratio 3:4 at http://localhost:8080 ok"


def test_chat_completions_url_accepts_v1_bases_and_bare_hosts():
    assert chat_completions_url("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


# -- the tool through the SDK's client ----------------------------------------------------------------------------

REPO = {
    "src/auth/tokens.py": '''"""Access tokens."""

import hmac
import time


def validate_token(token: str, secret: bytes, now: float | None = None) -> bool:
    """Check the signature and the expiry of an access token."""
    body, _, signature = token.rpartition(".")
    expected = hmac.new(secret, body.encode(), "sha256").hexdigest()
    if not hmac.compare_digest(expected, signature):
        return False
    expires_at = float(body.split(":")[1])
    return (now or time.time()) < expires_at
''',
    "src/storage/cache.py": '''"""A small LRU cache."""

from collections import OrderedDict


class LruCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.size:
            self.items.popitem(last=False)
''',
    "src/cli.py": '''import argparse


def main() -> int:
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    return 0 if args else 1
''',
}

QUESTION = "how is an access token validated?"


def _settings(home: Path, **extra: str):
    env = {"AGRO_HOME": str(home), "AGRO_RERANKER_ENABLED": "0", **extra}
    return load_settings(env=env, config_file=home / "no-agro.toml")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("repo")
    for rel, text in REPO.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    eng = Engine(_settings(tmp_path_factory.mktemp("home")))
    eng.index(root, "demo")
    yield eng
    eng.close()


@pytest.fixture
def configured(engine):
    """Point the shared engine at other settings for one test (the LLM endpoint), then restore them."""
    original = engine.settings

    def apply(**extra: str) -> Engine:
        engine.settings = _settings(engine.home, **extra)
        return engine

    yield apply
    engine.settings = original


async def _answer(client: Client, **args) -> types.CallToolResult:
    return await client.call_tool("rag_answer", {"question": QUESTION, **args})


def _fixed_sampling_text(params: types.CreateMessageRequestParams) -> str:
    label = re.search(r"^\[1\] (\S+)", params.messages[0].content.text, flags=re.M).group(1)
    return f"validate_token checks the HMAC signature and the expiry ({label}); see also src/auth/session.py:10-20."


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 (input_required) and the handshake protocol
async def test_sampling_answer_keeps_the_real_citation_and_drops_the_invented_one(engine, mode):
    seen: list[types.CreateMessageRequestParams] = []

    async def sampling(_ctx, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append(params)
        text = _fixed_sampling_text(params)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=text), model="m")

    async with Client(create_server(engine.settings, engine=engine), sampling_callback=sampling, mode=mode) as client:
        result = await _answer(client)
        assert not result.is_error, result.content
        out = result.structured_content
        assert len(seen) == 1 and seen[0].system_prompt == ANSWER_PROMPT
        assert out["mode"] == "sampling"
        assert out["dropped_citations"] == ["src/auth/session.py:10-20"]
        assert "session.py" not in out["answer"] and DROPPED_MARK in out["answer"]
        assert [c["path"] for c in out["citations"]] == ["src/auth/tokens.py"]
        assert out["citations"][0]["doc_id"] in out["context"]
        assert "src/auth/session.py:10-20" in out["note"]

        feedback = await client.call_tool(
            "submit_feedback", {"event_id": out["event_id"], "signal": "used", "doc_id": out["citations"][0]["doc_id"]}
        )
        assert not feedback.is_error, feedback.content
    event = engine.store.get_event(out["event_id"])
    assert event.source == "answer"


@pytest.mark.anyio
async def test_a_refused_sampling_request_falls_back_to_context_with_the_reason(engine):
    async def refuse(_ctx, _params) -> types.ErrorData:
        return types.ErrorData(code=-1, message="user declined sampling")

    server = create_server(engine.settings, engine=engine)
    async with Client(server, sampling_callback=refuse, mode="legacy") as client:
        out = (await _answer(client)).structured_content
    assert out["mode"] == "context" and out["answer"] is None
    assert "user declined sampling" in out["note"]


@pytest.mark.anyio
async def test_a_client_without_sampling_gets_the_grounded_context_and_no_answer(engine):
    async with Client(create_server(engine.settings, engine=engine)) as client:
        result = await _answer(client, k=3)
    out = result.structured_content
    assert out["answer"] is None and out["mode"] == "context"
    assert out["citations"] and all(c["doc_id"] in out["context"] for c in out["citations"])
    assert out["citations"][0]["path"] == "src/auth/tokens.py"
    assert "def validate_token" in out["context"]
    assert "answer the question yourself" in out["note"]
    assert out["timings_ms"]["total"] > 0


@pytest.mark.anyio
async def test_a_small_token_budget_trims_the_context_by_rank_and_says_so(engine, configured):
    eng = configured(AGRO_ANSWER_CONTEXT_TOKENS="200")
    async with Client(create_server(eng.settings, engine=eng)) as client:
        out = (await _answer(client, k=3)).structured_content
    tokenizer = eng.embedder().tokenizer
    assert len(tokenizer(out["context"], add_special_tokens=False)["input_ids"]) <= 200
    assert len(out["citations"]) < 3 and "The context holds" in out["note"]
    source_lines = {ln for text in REPO.values() for ln in text.splitlines()}
    body = [ln for ln in out["context"].splitlines() if not ln.startswith(("[", "```"))]
    assert all(ln in source_lines for ln in body)  # whole lines only


# -- OpenAI-compatible endpoint -----------------------------------------------------------------------------------


class _Endpoint:
    """A local /v1/chat/completions stand-in: behaviour 'ok', 'garbage' or 'hang' (until released)."""

    def __init__(self) -> None:
        self.behaviour = "ok"
        self.requests: list[tuple[dict, dict]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers), body))
                if outer.behaviour == "hang":
                    outer.release.wait(10)
                    return
                status = 200
                if outer.behaviour == "garbage":
                    payload = b"<html>502 upstream sad</html>"
                elif outer.behaviour == "echo-401":  # an error that repeats the request's headers
                    status, payload = 401, json.dumps({"error": "bad key", "headers": dict(self.headers)}).encode()
                elif outer.behaviour == "echo-text":  # non-JSON that repeats the Authorization header
                    payload = f"upstream said no to Authorization: {self.headers['Authorization']}".encode()
                elif outer.behaviour == "echo-answer":  # an "answer" that repeats the key verbatim
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    reply = {"choices": [{"message": {"role": "assistant", "content": f"key {key} here"}}]}
                    payload = json.dumps(reply).encode()
                else:
                    label = re.search(r"^\[1\] (\S+)", body["messages"][1]["content"], flags=re.M).group(1)
                    message = {"role": "assistant", "content": f"It checks the HMAC ({label})."}
                    reply = {"choices": [{"message": message}]}
                    payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    ep = _Endpoint()
    yield ep
    ep.close()


def _llm_env(url: str, timeout: str = "5") -> dict[str, str]:
    return {
        "AGRO_LLM_BASE_URL": url,
        "AGRO_LLM_MODEL": "tiny-chat",
        "AGRO_LLM_API_KEY": API_KEY,
        "AGRO_LLM_TIMEOUT_SEC": timeout,
    }


@pytest.mark.anyio
async def test_endpoint_answers_with_bearer_auth_and_checked_citations(engine, configured, endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    eng = configured(**_llm_env(endpoint.url))
    async with Client(create_server(eng.settings, engine=eng)) as client:
        out = (await _answer(client)).structured_content
    assert out["mode"] == "endpoint"
    assert out["answer"].startswith("It checks the HMAC (src/auth/tokens.py:")
    assert [c["path"] for c in out["citations"]] == ["src/auth/tokens.py"]
    headers, body = endpoint.requests[0]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "tiny-chat" and body["messages"][0] == {"role": "system", "content": ANSWER_PROMPT}
    assert API_KEY not in caplog.text and API_KEY not in json.dumps(out)


@pytest.mark.anyio
async def test_endpoint_timeout_falls_back_to_context_with_the_reason(engine, configured, endpoint):
    endpoint.behaviour = "hang"
    eng = configured(**_llm_env(endpoint.url, timeout="0.3"))
    async with Client(create_server(eng.settings, engine=eng)) as client:
        out = (await _answer(client)).structured_content
    endpoint.release.set()
    assert out["mode"] == "context" and out["answer"] is None
    assert "timed out after 0.3s" in out["note"]
    assert "def validate_token" in out["context"]


@pytest.mark.anyio
async def test_endpoint_malformed_reply_falls_back_to_context_with_the_reason(engine, configured, endpoint):
    endpoint.behaviour = "garbage"
    eng = configured(**_llm_env(endpoint.url))
    async with Client(create_server(eng.settings, engine=eng)) as client:
        out = (await _answer(client)).structured_content
    assert out["mode"] == "context" and out["answer"] is None
    assert "malformed reply" in out["note"]


@pytest.mark.anyio
async def test_unreachable_endpoint_falls_back_to_context_with_the_reason(engine, configured):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    eng = configured(**_llm_env(f"http://127.0.0.1:{port}/v1"))
    async with Client(create_server(eng.settings, engine=eng)) as client:
        out = (await _answer(client)).structured_content
    assert out["mode"] == "context" and "unreachable" in out["note"]


# -- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"question": "   "}, "query is empty"),
        ({"question": ""}, "question"),
        ({"question": QUESTION, "corpus": "nope"}, "Known corpora: demo"),
        ({"question": QUESTION, "k": 0}, "k must be between 1 and 50; got 0"),
    ],
)
async def test_bad_input_is_a_tool_error_that_says_how_to_fix_it(engine, args, message):
    async with Client(create_server(engine.settings, engine=engine)) as client:
        result = await client.call_tool("rag_answer", args)
    assert result.is_error
    assert message in result.content[0].text


# -- secrets never in output (issue 20, finding 4) ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("behaviour", ["echo-401", "echo-text", "echo-answer"])
async def test_an_endpoint_that_echoes_the_key_never_gets_it_into_the_result_or_the_log(
    engine, configured, endpoint, caplog, behaviour
):
    caplog.set_level(logging.DEBUG)
    endpoint.behaviour = behaviour
    eng = configured(**_llm_env(endpoint.url))
    async with Client(create_server(eng.settings, engine=eng)) as client:
        result = await _answer(client)
    assert endpoint.requests[0][0]["Authorization"] == f"Bearer {API_KEY}"  # the key was really sent
    everything = json.dumps(result.structured_content) + _text_of(result) + caplog.text
    assert API_KEY not in everything
    if behaviour != "echo-answer":
        assert result.structured_content["mode"] == "context" and "[REDACTED]" in result.structured_content["note"]


@pytest.mark.anyio
async def test_a_key_in_the_endpoint_url_never_reaches_the_note_or_the_log(engine, configured, endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    endpoint.behaviour = "echo-401"
    url_key = "url-secret-9f8e7d6c5b4a"
    eng = configured(**{**_llm_env(endpoint.url.replace("http://", f"http://user:{url_key}@")),
                        "AGRO_LLM_API_KEY": ""})
    async with Client(create_server(eng.settings, engine=eng)) as client:
        result = await _answer(client)
    assert endpoint.requests  # reached the endpoint (httpx sends the URL's user:password as Basic auth)
    out = result.structured_content
    assert out["mode"] == "context" and "HTTP 401" in out["note"]
    assert url_key not in json.dumps(out) + caplog.text


def _text_of(result: types.CallToolResult) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


# -- citations (issue 20, finding 11) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cited",
    ["/etc/passwd:1-2", "../../etc/passwd:1-2", "~/.ssh/id_rsa:1-5", "id_rsa:1-5", "src\\db.py:3-4",
     "/home/user/repo/src/db.py:3-4", "file:///etc/passwd:1", "./../src/db.py:3", "src/../src/db.py:3-4"],
)
def test_extract_citations_drops_any_location_that_is_not_a_context_block_whatever_its_form(cited):
    kept, dropped, cleaned = extract_citations(f"It is at {cited} and src/db.py:3-4.", CONTEXT_HITS)
    assert [c.doc_id for c in kept] == ["src/db.py:1-30"]
    assert len(dropped) == 1 and "passwd" not in cleaned and "id_rsa" not in cleaned
    assert cleaned.count(DROPPED_MARK) == 1


def test_extract_citations_leaves_times_and_urls_alone():
    text = "From 10:30-11:00 see http://example.com:8080/x"
    assert extract_citations(text, CONTEXT_HITS) == ([], [], text)
