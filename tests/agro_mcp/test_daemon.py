"""The shared daemon and the stdio proxy, through real processes: `agro serve` proxies spoken to by the SDK's client
over stdio, the daemon they start, `kill -9`, and the daemon's Streamable HTTP endpoint."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from agro_mcp.daemon_client import control, socket_path, token_path
from tests.conftest import write_repo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"AGRO_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
                "AGRO_RERANKER_ENABLED": "0", "AGRO_DAEMON_HTTP_PORT": "0", "AGRO_DAEMON_IDLE_EXIT_SEC": "120"})
    env.update(extra)
    return env


def _proxy(home: Path, **extra: str) -> Client:
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=_env(home, **extra))
    return Client(params, read_timeout_seconds=180)


def _agro(home: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agro_mcp", *args], env=_env(home, **extra), capture_output=True,
                          text=True, timeout=timeout)


def _daemon_pids(home: Path) -> list[int]:
    """Live `agro daemon run` processes of ``home`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if b"daemon" in cmd and b"run" in cmd and f"AGRO_HOME={home}".encode() in env and state != "Z":
            pids.append(int(d.name))
    return pids


def _stop(home: Path) -> None:
    st = control(home, "stop")
    if st is not None:
        deadline = time.monotonic() + 30
        while _daemon_pids(home) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture
def home(tmp_path):
    """A data home with the sample repository indexed (by `agro index`); its daemon is stopped afterwards."""
    repo = write_repo(tmp_path / "sample")
    home = tmp_path / "home"
    out = _agro(home, "index", str(repo), "--corpus", "sample")
    assert out.returncode == 0, out.stderr
    yield home
    _stop(home)


def _text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_eight_proxies_started_at_once_make_exactly_one_daemon(home):
    pids_seen = []

    async def session(i: int) -> None:
        async with _proxy(home) as client:
            res = await client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 2})
            assert not res.is_error, _text(res)
            assert res.structured_content["results"][0]["path"] == "utils/retry.py"
            st = control(home, "status")
            pids_seen.append(st["pid"])

    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(session, i)
    assert len(set(pids_seen)) == 1
    assert _daemon_pids(home) == [pids_seen[0]]
    st = control(home, "status")
    assert st["sessions"]["total_served"] == 8
    log = (home / "logs" / "daemon.log").read_text()
    assert log.count("serving ") == 1


async def test_kill9_fails_inflight_calls_clearly_and_the_next_call_restarts_the_daemon(home):
    acknowledged: list[str] = []
    failures: list[tuple[float, str]] = []
    killed_at: list[float] = []
    async with _proxy(home) as client:
        first = await client.call_tool("rag_search", {"query": "connection pool", "k": 3})
        assert not first.is_error, _text(first)
        event_id = first.structured_content["event_id"]
        doc_ids = [h["doc_id"] for h in first.structured_content["results"]]
        old_pid = control(home, "status")["pid"]

        async def searches(n: int) -> None:
            while not killed_at or time.monotonic() - killed_at[0] < 0.5:
                try:
                    res = await client.call_tool("rag_search", {"query": f"pool acquire {n}", "k": 3})
                    assert not res.is_error, _text(res)
                except MCPError as exc:
                    failures.append((time.monotonic(), str(exc)))
                    return

        async def feedback() -> None:
            i = 0
            while not killed_at:
                note = f"note {i}"
                try:
                    res = await client.call_tool("submit_feedback", {"event_id": event_id, "signal": "used",
                                                                     "doc_id": doc_ids[i % len(doc_ids)], "note": note})
                except MCPError as exc:
                    failures.append((time.monotonic(), str(exc)))
                    return
                assert not res.is_error, _text(res)
                acknowledged.append(res.structured_content["feedback_id"])
                i += 1

        async def killer() -> None:
            await anyio.sleep(1.5)
            os.kill(old_pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

        with anyio.fail_after(60):  # never a hang
            async with anyio.create_task_group() as tg:
                for n in range(4):
                    tg.start_soon(searches, n)
                tg.start_soon(feedback)
                tg.start_soon(killer)
        assert failures, "no call was in flight when the daemon was killed"
        for t, message in failures:
            assert t - killed_at[0] < 10
            assert "agro daemon" in message and "call it again" in message.lower()
        # the next call reconnects to a new daemon, in the same client session
        again = await client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 2})
        assert not again.is_error, _text(again)
        assert again.structured_content["results"][0]["path"] == "utils/retry.py"
        new_pid = control(home, "status")["pid"]
        assert new_pid != old_pid
    assert acknowledged
    from training.events.store import open_event_store

    store = open_event_store(home, "embedded", None)
    try:
        stored = {f.feedback_id for f in store.feedback_for_event(event_id)}
    finally:
        store.close()
    assert set(acknowledged) <= stored


async def test_reranker_admin_wait_reports_progress_through_the_proxy(home):
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with _proxy(home) as client:
        res = await client.call_tool("reranker_admin", {"action": "mine", "wait": True}, progress_callback=on_progress)
    assert not res.is_error, _text(res)
    assert res.structured_content["job"]["state"] in ("succeeded", "failed")
    assert progress, "no progress notification reached the client through the proxy"


async def test_http_endpoint_refuses_missing_or_wrong_token_and_foreign_host_or_origin(home):
    out = _agro(home, "daemon", "start")
    assert out.returncode == 0, out.stderr
    st = control(home, "status")
    url = st["http"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
    token = token_path(home).read_text().strip()
    port = url.split(":")[2].split("/")[0]
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    ok = {**base, "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(url, json=init, headers=base)).status_code == 401
        assert (await http.post(url, json=init, headers={**base, "Authorization": "Bearer nope"})).status_code == 401
        assert (await http.post(url, json=init, headers={**ok, "Host": "evil.example:" + port})).status_code == 421
        assert (await http.post(url, json=init, headers={**ok, "Origin": "http://evil.example"})).status_code == 403
        good = await http.post(url, json=init, headers={**ok, "Origin": f"http://localhost:{port}"})
        assert good.status_code == 200, good.text

    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http2:
        async with Client(streamable_http_client(url, http_client=http2)) as client:
            res = await client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 2})
    assert not res.is_error, _text(res)
    assert res.structured_content["results"][0]["path"] == "utils/retry.py"


async def test_the_daemon_serves_the_console_beside_mcp_with_the_same_token(home):
    out = _agro(home, "daemon", "start")
    assert out.returncode == 0, out.stderr
    st = control(home, "status")
    console = st["console"]
    assert console.startswith("http://127.0.0.1:") and console.endswith("/")
    token = token_path(home).read_text().strip()
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.get(console)).status_code == 401  # no token, no cookie
        assert (await http.get(console + "?token=nope")).status_code == 403
        page = await http.get(console + f"?token={token}", follow_redirects=True)
        assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:300]
        assert "token=" not in str(page.url)  # swapped for the session cookie
        # the cookie opens the console, never the MCP endpoint: that still wants the bearer header
        assert (await http.post(st["http"], json={"jsonrpc": "2.0", "id": 1, "method": "ping"})).status_code == 401
    status = _agro(home, "daemon", "status")
    assert f"?token={token}" in status.stdout


async def test_socket_token_and_state_files_are_private(home):
    out = _agro(home, "daemon", "start")
    assert out.returncode == 0, out.stderr
    for path in (socket_path(home), token_path(home), home / "daemon.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_ISSOCK(socket_path(home).stat().st_mode)


async def test_serve_proxy_imports_neither_torch_numpy_nor_the_settings_and_mcp_stacks(home):
    out = _agro(home, "daemon", "start")
    assert out.returncode == 0, out.stderr
    script = ("import sys, io\n"
              "from agro_mcp.cli import main\n"
              "sys.stdin = io.TextIOWrapper(io.BytesIO(b''))\n"
              "code = main(['serve'])\n"
              "heavy = [m for m in ('torch', 'transformers', 'numpy', 'scipy', 'sentence_transformers', "
              "'pydantic', 'pydantic_settings', 'mcp', 'anyio') "
              "if m in sys.modules]\n"
              "print('HEAVY', heavy, 'CODE', code, file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", script], env=_env(home), capture_output=True, text=True, timeout=120)
    assert "HEAVY [] CODE 0" in res.stderr, res.stderr


async def test_cli_search_and_status_use_the_running_daemon(home):
    assert _agro(home, "daemon", "start").returncode == 0
    before = control(home, "status")["sessions"]["total_served"]
    out = _agro(home, "search", "exponential backoff with jitter", "-k", "2")
    assert out.returncode == 0, out.stderr
    assert "utils/retry.py" in out.stdout
    out = _agro(home, "status", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["corpora"][0]["corpus"] == "sample" and data["daemon"]["pid"]
    assert control(home, "status")["sessions"]["total_served"] == before + 2


async def test_daemon_status_stop_and_idle_exit(home):
    out = _agro(home, "daemon", "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["running"] is False
    assert _agro(home, "daemon", "start").returncode == 0
    st = json.loads(_agro(home, "daemon", "status", "--json").stdout)
    assert st["running"] and st["version"] and st["rss_mb"] > 0 and st["corpora"] == ["sample"]
    assert set(st["sessions"]) >= {"socket", "http"} and "embedder" in st["models"]
    out = _agro(home, "daemon", "stop")
    assert out.returncode == 0 and "stopped" in out.stderr
    assert control(home, "status") is None and not _daemon_pids(home)
    assert not socket_path(home).exists() and not (home / "daemon.json").exists()

    assert _agro(home, "daemon", "start", AGRO_DAEMON_IDLE_EXIT_SEC="2").returncode == 0
    deadline = time.monotonic() + 60
    while control(home, "status") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert control(home, "status") is None, "the idle daemon did not exit"
    assert not socket_path(home).exists() and not (home / "daemon.json").exists()


async def test_inprocess_mode_keeps_a_self_contained_server(home):
    async with _proxy(home, AGRO_SERVE_MODE="inprocess") as client:
        res = await client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 2})
        assert not res.is_error, _text(res)
    assert control(home, "status") is None  # no daemon was started


async def test_a_draining_daemon_finishes_its_sessions_while_a_new_one_takes_new_sessions(home):
    async with _proxy(home) as old_client:
        res = await old_client.call_tool("rag_search", {"query": "connection pool", "k": 1})
        assert not res.is_error, _text(res)
        old_pid = control(home, "status")["pid"]
        reply = control(home, "drain", reason="test")
        assert reply["draining"] is True
        async with _proxy(home) as new_client:  # a new session starts a new daemon beside the draining one
            res = await new_client.call_tool("rag_search", {"query": "connection pool", "k": 1})
            assert not res.is_error, _text(res)
            new_pid = control(home, "status")["pid"]
            assert new_pid != old_pid
        res = await old_client.call_tool("rag_search", {"query": "exponential backoff", "k": 1})  # still served
        assert not res.is_error, _text(res)
    deadline = time.monotonic() + 30
    while old_pid in _daemon_pids(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert old_pid not in _daemon_pids(home), "the drained daemon did not exit after its last session"
    assert control(home, "status")["pid"] == new_pid


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # input_required (2026-07-28) and a server-to-client request
async def test_rag_answer_samples_from_the_client_through_the_proxy(home, mode):
    import re

    import mcp_types as types

    asked: list[str] = []

    async def sampling(_ctx, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content.text
        asked.append(prompt)
        label = re.search(r"^\[1\] (\S+)", prompt, flags=re.M).group(1)
        return types.CreateMessageResult(role="assistant", model="m",
                                         content=types.TextContent(type="text", text=f"See {label}."))

    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=_env(home))
    async with Client(params, read_timeout_seconds=180, sampling_callback=sampling, mode=mode) as client:
        res = await client.call_tool("rag_answer", {"question": "how are retries delayed with jitter", "k": 3})
    assert not res.is_error, _text(res)
    assert len(asked) == 1 and res.structured_content["mode"] == "sampling"
    assert res.structured_content["citations"]


async def test_a_proxy_of_another_version_drains_the_daemon_and_a_new_one_serves_its_session(home):
    old = {"AGRO__VERSION_FOR_TESTS": "0.0.1-old"}
    assert _agro(home, "daemon", "start", **old).returncode == 0
    st = control(home, "status")
    old_pid = st["pid"]
    assert st["version"] == "0.0.1-old"
    async with _proxy(home, **old) as old_client:  # same version: it uses the running daemon
        res = await old_client.call_tool("rag_search", {"query": "connection pool", "k": 1})
        assert not res.is_error, _text(res)
        assert control(home, "status")["pid"] == old_pid
        async with _proxy(home) as new_client:  # the installed version: the old daemon drains, a new one starts
            res = await new_client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 2})
            assert not res.is_error, _text(res)
            assert res.structured_content["results"][0]["path"] == "utils/retry.py"
            st = control(home, "status")
            assert st["pid"] != old_pid and st["version"] not in ("0.0.1-old", "")
        res = await old_client.call_tool("rag_search", {"query": "exponential backoff", "k": 1})  # still served
        assert not res.is_error, _text(res)
    deadline = time.monotonic() + 30
    while old_pid in _daemon_pids(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert old_pid not in _daemon_pids(home), "the old daemon did not exit after its last session"
    assert "draining: a proxy of version" in (home / "logs" / "daemon.log").read_text()


async def test_the_daemon_log_rotates_at_its_size_setting_and_keeps_its_backups(home):
    small = {"AGRO_DAEMON_LOG_MAX_BYTES": "1000", "AGRO_DAEMON_LOG_BACKUPS": "2"}
    for i in range(12):  # each session logs its opening and its end
        async with _proxy(home, **small) as client:
            res = await client.call_tool("rag_search", {"query": f"retry delay {i}", "k": 2})
            assert not res.is_error, _text(res)
    logs = home / "logs"
    assert (logs / "daemon.log").exists() and (logs / "daemon.log.1").exists() and (logs / "daemon.log.2").exists()
    assert not (logs / "daemon.log.3").exists()
    for name in ("daemon.log.1", "daemon.log.2"):
        assert (logs / name).stat().st_size <= 1000 + 4096  # rotated once over the limit (one record may cross it)
