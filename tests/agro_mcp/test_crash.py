"""Kill `agro serve` (SIGKILL) in the middle of a stream of feedback over MCP: every acknowledged write survives.

Runs on both storage backends. The client pipelines many submit_feedback calls; once some have been
acknowledged, the server process is killed. Afterwards every acknowledged feedback id is in the store, and the
store opens cleanly (nothing half-written).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import write_repo
from training.events.store import open_event_store

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"AGRO_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
                "AGRO_RERANKER_ENABLED": "0"})
    env.update(extra)
    return env


def _server_pids() -> list[int]:
    """`agro serve` processes started by this test process (children spawned by the MCP client)."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"agro_mcp" in cmd and b"serve" in cmd:
            out.append(int(d.name))
    return out


async def test_feedback_acknowledged_before_the_server_is_killed_is_never_lost(tmp_path, backend_env):
    repo = write_repo(tmp_path / "sample")
    home = tmp_path / "home"
    env = _env(home, **backend_env)
    out = subprocess.run([sys.executable, "-m", "agro_mcp", "index", str(repo), "--corpus", "sample"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    acked: list[str] = []
    sent = 0
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)
    with suppress(Exception):  # the client's session ends with the killed server
        async with Client(params, read_timeout_seconds=60) as client:
            res = await client.call_tool("rag_search", {"query": "token expiry", "k": 5})
            assert not res.is_error
            event_id = res.structured_content["event_id"]
            doc_id = res.structured_content["results"][0]["doc_id"]
            (pid,) = _server_pids()
            killed = anyio.Event()

            async def one(i: int) -> None:
                with suppress(Exception):
                    r = await client.call_tool("submit_feedback", {"event_id": event_id, "signal": "used",
                                                                   "doc_id": doc_id, "note": f"write {i}"})
                    if not r.is_error and not killed.is_set():
                        acked.append(r.structured_content["feedback_id"])

            async def killer() -> None:
                while len(acked) < 40:
                    await anyio.sleep(0.005)
                os.kill(pid, signal.SIGKILL)
                killed.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                for i in range(400):
                    tg.start_soon(one, i)
                    sent += 1
                    if i % 20 == 19:
                        await anyio.sleep(0.01)
                with anyio.fail_after(120):
                    await killed.wait()
                tg.cancel_scope.cancel()
    assert len(acked) >= 40
    store = open_event_store(home, backend_env["AGRO_BACKEND"], backend_env.get("AGRO_DATABASE_URL"))
    stored = {f.feedback_id for f in store.feedback_for_event(event_id)}
    lost = [f for f in acked if f not in stored]
    assert not lost, f"{len(lost)} acknowledged feedback writes lost"
    assert len(stored) < sent  # the kill really happened mid-stream
    assert store.integrity_check() == "ok"
