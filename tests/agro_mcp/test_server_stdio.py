"""End to end: `agro serve` as a real subprocess, spoken to over stdio by the SDK's client, on both backends."""

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import write_repo
from tests.reranker.conftest import build_tiny_cross_encoder, make_release, point_current
from training.events.store import open_event_store

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


def _store(home: Path, backend_env: dict):
    return open_event_store(home, backend_env["AGRO_BACKEND"], backend_env.get("AGRO_DATABASE_URL"))


@pytest.fixture
def stdio_home(tmp_path, backend_env):
    """A repository indexed by `agro index` into a data home, on the backend under test."""
    repo = write_repo(tmp_path / "sample")
    home = tmp_path / "home"
    out = subprocess.run(
        [sys.executable, "-m", "agro_mcp", "index", str(repo), "--corpus", "sample"],
        env=_env(home, **backend_env), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "published generation" in out.stdout
    return home, repo, backend_env


async def test_search_and_feedback_over_stdio(stdio_home):
    home, _, benv = stdio_home
    async with _server(home, AGRO_RERANKER_ENABLED="0", **benv) as client:
        res = await client.call_tool("rag_search", {"query": "exponential backoff with jitter", "k": 3})
        assert not res.is_error
        out = res.structured_content
        assert out["results"][0]["symbol"] == "backoff_delays"
        fb = await client.call_tool("submit_feedback", {"event_id": out["event_id"], "signal": "used",
                                                        "doc_id": out["results"][0]["doc_id"]})
        assert not fb.is_error and fb.structured_content["created"]
    store = _store(home, benv)
    assert [f.signal for f in store.feedback_for_event(out["event_id"])] == ["used"]
    assert store.get_event(out["event_id"]).results[0].path == "utils/retry.py"


async def test_two_server_processes_share_one_store(stdio_home, tmp_path):
    """Two servers write events concurrently; on postgres they have separate data homes (two machines)."""
    home, _, benv = stdio_home
    homes = {"a": home, "b": home if benv["AGRO_BACKEND"] == "embedded" else tmp_path / "other-machine"}
    results = {}

    async def one(name: str) -> None:
        async with _server(homes[name], AGRO_RERANKER_ENABLED="0", **benv) as client:
            ids = []
            for q in ("oauth token", "connection pool", "http server routes"):
                res = await client.call_tool("rag_search", {"query": q, "k": 2})
                assert not res.is_error, res.content
                ids.append(res.structured_content["event_id"])
            results[name] = ids

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    all_ids = results["a"] + results["b"]
    store = _store(home, benv)
    assert len(set(all_ids)) == 6 and all(store.get_event(e) is not None for e in all_ids)


async def test_unreachable_database_stops_serve_with_its_reason(tmp_path):
    url = f"postgresql://agro:secret@/agro?host={tmp_path}&port=1&connect_timeout=2"
    out = subprocess.run(
        [sys.executable, "-m", "agro_mcp", "serve"],
        env=_env(tmp_path / "home", AGRO_BACKEND="postgres", AGRO_DATABASE_URL=url),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert "AGRO_DATABASE_URL" in out.stderr and "secret" not in out.stderr
    assert out.stdout == ""  # nothing on the MCP channel: no half-started server


async def test_promotion_on_one_machine_reaches_a_server_on_another(tmp_path, pg_url):
    """Team learning: two servers with separate data homes share one database; a release published to it (as
    `agro promote` does) is served by both within one reload period, and so is a rollback."""
    from retrieval.pgdb import open_database
    from training.releases.registry import PgReleaseRegistry

    benv = {"AGRO_BACKEND": "postgres", "AGRO_DATABASE_URL": pg_url}
    repo = write_repo(tmp_path / "sample")
    home_a, home_b, promoter = tmp_path / "a", tmp_path / "b", tmp_path / "trainer"
    out = subprocess.run([sys.executable, "-m", "agro_mcp", "index", str(repo), "--corpus", "sample"],
                         env=_env(home_a, **benv), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    models = promoter / "models"
    (models / "releases").mkdir(parents=True)
    ra = make_release(models, "rel-a", build_tiny_cross_encoder(tmp_path / "ta", seed=1))
    rb = make_release(models, "rel-b", build_tiny_cross_encoder(tmp_path / "tb", seed=2))
    registry = PgReleaseRegistry(open_database(pg_url))

    async def serving(client) -> str | None:
        res = await client.call_tool("rag_search", {"query": "token expiry", "k": 3})
        assert not res.is_error, res.content
        return res.structured_content["reranker_model"]

    async def wait_for(client, want: str, within: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if await serving(client) == want:
                return
            await anyio.sleep(0.2)
        raise AssertionError(f"{want} not served within {within}s (serving {await serving(client)})")

    registry.publish(ra, "rel-a")
    async with _server(home_a, AGRO_RERANKER_RELOAD_PERIOD_SEC="1", **benv) as a, \
            _server(home_b, AGRO_RERANKER_RELOAD_PERIOD_SEC="1", **benv) as b:
        await wait_for(a, "rel-a", 30)
        await wait_for(b, "rel-a", 30)
        registry.publish(rb, "rel-b")
        await wait_for(a, "rel-b", 15)
        await wait_for(b, "rel-b", 15)
        registry.set_current("rel-a")  # a rollback made anywhere
        await wait_for(a, "rel-a", 15)
        await wait_for(b, "rel-a", 15)
    assert (home_b / "models" / "releases" / "rel-b" / "manifest.json").is_file()
    assert (home_b / "models" / "current").resolve().name == "rel-a"


async def test_promotion_and_rollback_are_hot_reloaded_without_restart(stdio_home, tmp_path):
    home, _, benv = stdio_home
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

    async with _server(home, AGRO_RERANKER_RELOAD_PERIOD_SEC="1", **benv) as client:
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
