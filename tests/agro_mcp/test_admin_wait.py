"""``reranker_admin`` with ``wait``: the call follows a background job to its end and reports its progress (issue 5).

Real MCP clients in process: the default mode calls the server's handlers directly (the progress callback is
invoked by the server), 'legacy' speaks JSON-RPC over memory streams (a progress token in ``_meta`` and
``notifications/progress`` on the wire). Jobs run on the real job machinery (``start_job``, the event store).
"""

from __future__ import annotations

import itertools
import threading
import time

import anyio
import pytest
from mcp import Client

from agro_mcp.engine import Engine
from agro_mcp.server import create_server
from training.releases.jobs import start_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def engine(make_settings, embedder):
    """An engine on an empty data home; extra env entries override (e.g. the wait timeout)."""
    engines = []

    def _make(**env: str) -> Engine:
        eng = Engine(make_settings(**env), embedder=embedder)
        engines.append(eng)
        return eng

    yield _make
    for eng in engines:
        eng.close()


def _text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def _stepped_job(steps: list[threading.Event]):
    """A job that moves to (i+1)/(n+1) each time the test lets it, so every stage is seen by a poll."""

    def job(ctx):
        for i, ev in enumerate(steps):
            assert ev.wait(20), "the test never released the job"
            if i < len(steps) - 1:
                ctx.progress((i + 1) / len(steps), f"step {i + 1}")
        return {"steps": len(steps) - 1}

    return job


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_wait_sends_rising_progress_for_each_stage_and_returns_the_final_status(engine, mode):
    eng = engine()
    steps = [threading.Event() for _ in range(3)]
    rid = start_job(eng.store, eng.home, "train", _stepped_job(steps), lock_name=None)
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if len(seen) <= len(steps):
            steps[len(seen) - 1].set()  # the next stage starts only once this one was reported

    async with Client(create_server(eng.settings, eng), mode=mode) as client:
        with anyio.fail_after(30):
            res = await client.call_tool("reranker_admin", {"action": "wait", "run_id": rid},
                                         progress_callback=on_progress)
        assert not res.is_error, _text(res)
        status = await client.call_tool("reranker_admin", {"action": "status", "run_id": rid})
    assert [p for p, _, _ in seen] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert [m for _, _, m in seen[1:]] == ["step 1", "step 2", "done"]
    assert {t for _, t, _ in seen} == {1.0}
    out = res.structured_content
    assert out["job"]["run_id"] == rid and out["job"]["state"] == "succeeded"
    assert out["job"]["result"] == {"steps": 2} and out.get("note") is None
    assert out["job"] == status.structured_content["job"]


async def test_wait_true_on_mine_reports_progress_and_returns_the_finished_job(engine):
    eng = engine()
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with Client(create_server(eng.settings, eng), mode="legacy") as client:
        with anyio.fail_after(60):
            res = await client.call_tool("reranker_admin", {"action": "mine", "wait": True},
                                         progress_callback=on_progress)
    assert not res.is_error, _text(res)
    job = res.structured_content["job"]
    assert job["kind"] == "mine" and job["state"] == "succeeded" and job["result"]["train"] == 0
    assert seen and seen[-1] == (1.0, "done")
    progresses = [p for p, _ in seen]
    assert all(a < b for a, b in itertools.pairwise(progresses)), progresses


async def test_wait_without_a_progress_token_still_returns_the_final_status(engine):
    eng = engine()
    release = threading.Event()
    rid = start_job(eng.store, eng.home, "evaluate", _stepped_job([release]), lock_name=None)
    threading.Timer(0.3, release.set).start()
    async with Client(create_server(eng.settings, eng), mode="legacy") as client:
        with anyio.fail_after(30):
            res = await client.call_tool("reranker_admin", {"action": "wait", "run_id": rid})
    assert not res.is_error, _text(res)
    assert res.structured_content["job"]["state"] == "succeeded"


async def test_a_wait_that_times_out_returns_the_running_status_with_a_note(engine):
    eng = engine(AGRO_ADMIN_WAIT_TIMEOUT_SEC="0.6")
    release = threading.Event()
    rid = start_job(eng.store, eng.home, "train", _stepped_job([release]), lock_name=None)
    try:
        async with Client(create_server(eng.settings, eng)) as client:
            t0 = time.monotonic()
            res = await client.call_tool("reranker_admin", {"action": "wait", "run_id": rid})
            waited = time.monotonic() - t0
    finally:
        release.set()
    assert not res.is_error, _text(res)
    out = res.structured_content
    assert out["job"]["run_id"] == rid and out["job"]["state"] == "running"
    assert "still running" in out["note"] and f"run_id={rid}" in out["note"]
    assert 0.5 <= waited < 10


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"action": "wait", "run_id": "20990101-000000-abcdef"}, "Unknown run_id"),
        ({"action": "wait", "run_id": "../x"}, "run_id"),
        ({"action": "wait"}, "action 'wait' needs run_id"),
        ({"action": "info", "wait": True}, "wait=true applies to mine, train, evaluate, promote"),
    ],
)
async def test_bad_waits_are_tool_errors_that_say_what_to_do(engine, args, needle):
    eng = engine()
    async with Client(create_server(eng.settings, eng)) as client:
        res = await client.call_tool("reranker_admin", args)
    assert res.is_error
    assert needle in _text(res)


async def test_without_wait_a_job_action_still_returns_its_run_id_at_once(engine):
    eng = engine()
    async with Client(create_server(eng.settings, eng)) as client:
        res = await client.call_tool("reranker_admin", {"action": "mine"})
        assert not res.is_error, _text(res)
        out = res.structured_content
        assert out["state"] == "started" and out["run_id"]
        done = await client.call_tool("reranker_admin", {"action": "wait", "run_id": out["run_id"]})
    assert done.structured_content["job"]["state"] == "succeeded"
