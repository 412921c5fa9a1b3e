"""End to end: `agro serve` as a real subprocess, spoken to over stdio by the SDK's client."""

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import write_repo
from tests.reranker.conftest import build_tiny_cross_encoder, make_release, point_current

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"AGRO_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)})
    env.update(extra)
    return env


def _server(home: Path, **extra: str) -> Client:
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=_env(home, **extra))
    return Client(params, read_timeout_seconds=120)


@pytest.fixture(scope="module")
def stdio_home(tmp_path_factory):
    base = tmp_path_factory.mktemp("stdio")
    repo = write_repo(base / "sample")
    home = base / "home"
    out = subprocess.run(
        [sys.executable, "-m", "agro_mcp", "index", str(repo), "--corpus", "sample"],
        env=_env(home), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "published generation" in out.stdout
    return home, repo


async def test_search_and_feedback_over_stdio(stdio_home):
    home, _ = stdio_home
    async with _server(home, AGRO_RERANKER_ENABLED="0") as client:
        res = await client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 3})
        assert not res.is_error
        out = res.structured_content
        assert out["results"][0]["symbol"] == "backoff_delays"
        fb = await client.call_tool("submit_feedback", {"event_id": out["event_id"], "signal": "used",
                                                        "doc_id": out["results"][0]["doc_id"]})
        assert not fb.is_error and fb.structured_content["created"]
    with sqlite3.connect(home / "agro.db") as db:
        assert db.execute("SELECT count(*) FROM feedback WHERE event_id=?", (out["event_id"],)).fetchone()[0] == 1


async def test_two_server_processes_share_one_home(stdio_home):
    home, _ = stdio_home
    results = {}

    async def one(name: str) -> None:
        async with _server(home, AGRO_RERANKER_ENABLED="0") as client:
            ids = []
            for q in ("oauth token", "connection pool", "http server routes"):
                res = await client.call_tool("rag_search", {"query": q, "k": 2})
                assert not res.is_error
                ids.append(res.structured_content["event_id"])
            results[name] = ids

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    all_ids = results["a"] + results["b"]
    with sqlite3.connect(home / "agro.db") as db:
        found = {r[0] for r in db.execute("SELECT event_id FROM query_events")}
    assert set(all_ids) <= found and len(set(all_ids)) == 6


async def test_promotion_and_rollback_are_hot_reloaded_without_restart(stdio_home, tmp_path):
    home, _ = stdio_home
    models = home / "models"
    (models / "releases").mkdir(parents=True, exist_ok=True)
    make_release(models, "rel-a", build_tiny_cross_encoder(tmp_path / "a", seed=1))
    make_release(models, "rel-b", build_tiny_cross_encoder(tmp_path / "b", seed=2))
    point_current(models, "rel-a")

    async def serving(client) -> str | None:
        res = await client.call_tool("rag_search", {"query": "token expiry", "k": 3})
        assert not res.is_error
        return res.structured_content["reranker_model"]

    async def wait_for(client, want: str, within: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if await serving(client) == want:
                return time.monotonic() - t0
            await anyio.sleep(0.2)
        raise AssertionError(f"{want} not served within {within}s (serving {await serving(client)})")

    async with _server(home, AGRO_RERANKER_RELOAD_PERIOD_SEC="1") as client:
        assert await serving(client) == "rel-a"
        info = (await client.call_tool("reranker_admin", {"action": "info"})).structured_content
        assert info["loaded"] is True
        point_current(models, "rel-b")
        await wait_for(client, "rel-b", within=15)
        point_current(models, "rel-a")  # a rollback to an older release reloads too
        await wait_for(client, "rel-a", within=15)
        res = (await client.call_tool("rag_search", {"query": "token expiry", "k": 3})).structured_content
        assert res["reranking_used"] is True
        assert all(h["rerank_score"] is not None for h in res["results"])
        skip = (await client.call_tool("rag_search", {"query": "token expiry", "k": 3, "rerank": False})).structured_content
        assert skip["reranking_used"] is False and "rerank=false" in skip["reranker_fallback_reason"]
