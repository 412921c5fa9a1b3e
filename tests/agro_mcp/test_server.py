"""The MCP server in memory, through the SDK's client: schemas, validation, feedback, events."""

import contextlib

import pytest
from mcp import Client

from agro_mcp.engine import Engine
from agro_mcp.server import create_server
from tests.conftest import fresh_database, write_repo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def indexed(request, tmp_path_factory, embedder):
    """One indexed sample corpus shared by this module's tests (read-only use), on each storage backend."""
    from agro_mcp.config import load_settings

    with contextlib.ExitStack() as stack:
        base = tmp_path_factory.mktemp("server")
        repo = write_repo(base / "sample")
        env = {"AGRO_HOME": str(base / "home"), "AGRO_RERANKER_ENABLED": "0", "AGRO_BACKEND": request.param}
        if request.param == "postgres":
            env["AGRO_DATABASE_URL"] = stack.enter_context(fresh_database(request.getfixturevalue("pg_server")))
        settings = load_settings(env=env, config_file=base / "x.toml")
        eng = Engine(settings, embedder=embedder)
        eng.index(repo, "sample")
        yield settings, eng, repo
        eng.close()


async def call(client, name, args):
    return await client.call_tool(name, args)


def _text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_tools_are_listed_with_schemas(indexed):
    settings, eng, _ = indexed
    async with Client(create_server(settings, eng)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"rag_search", "rag_index", "submit_feedback", "reranker_admin", "rag_answer"} <= set(tools)
    search = tools["rag_search"]
    assert search.annotations.read_only_hint is True
    assert search.input_schema["properties"]["k"]["maximum"] == 50
    assert "submit_feedback" in search.description and "correct_location" in search.description
    assert search.output_schema is not None


async def test_rag_search_returns_cited_hits_and_logs_the_event(indexed):
    settings, eng, _ = indexed
    async with Client(create_server(settings, eng)) as client:
        res = await call(client, "rag_search", {"query": "where is the oauth token expiry checked", "k": 3})
    assert not res.is_error, _text(res)
    out = res.structured_content
    assert out["corpus"] == "sample" and len(out["results"]) == 3
    top = out["results"][0]
    assert top["doc_id"] == f"{top['path']}:{top['start_line']}-{top['end_line']}"
    assert top["symbol"] == "validate_token"
    assert out["reranking_used"] is False and out["reranker_fallback_reason"]
    assert out["index_stale_files"] == 0
    # embedded times each stage; postgres runs lexical + dense + fusion as one SQL statement ("sql")
    stages = {"lexical", "dense", "fusion"} if settings.server.backend == "embedded" else {"sql"}
    assert stages | {"embed_query", "total"} <= set(out["timings_ms"])
    logged = eng.store.get_event(out["event_id"])
    assert [r.doc_id for r in logged.results] == [r["doc_id"] for r in out["results"]]


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"query": "   "}, "query is empty"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 51}, "k"),
        ({"query": "x", "corpus": "nope"}, "Known corpora: sample"),
        ({"query": "x" * 20001}, "limit is 20000"),
    ],
)
async def test_bad_search_input_is_a_tool_error_that_says_how_to_fix_it(indexed, args, needle):
    settings, eng, _ = indexed
    async with Client(create_server(settings, eng)) as client:
        res = await call(client, "rag_search", args)
    assert res.is_error
    assert needle in _text(res)


async def test_feedback_round_trip_and_rejections(indexed):
    settings, eng, _ = indexed
    async with Client(create_server(settings, eng)) as client:
        res = (await call(client, "rag_search", {"query": "connection pool", "k": 2})).structured_content
        ev, hit = res["event_id"], res["results"][0]["doc_id"]
        ok = await call(client, "submit_feedback", {"event_id": ev, "signal": "used", "doc_id": hit})
        assert not ok.is_error and ok.structured_content["created"] is True
        again = await call(client, "submit_feedback", {"event_id": ev, "signal": "used", "doc_id": hit})
        assert again.structured_content["created"] is False
        loc = await call(client, "submit_feedback", {"event_id": ev, "signal": "correct_location",
                                                     "path": "utils/retry.py", "start_line": 4, "end_line": 7})
        assert not loc.is_error, _text(loc)
        bad_doc = await call(client, "submit_feedback", {"event_id": ev, "signal": "used", "doc_id": "x.py:1-2"})
        assert bad_doc.is_error and "not in" in _text(bad_doc)
        bad_ev = await call(client, "submit_feedback", {"event_id": "nope", "signal": "click", "doc_id": hit})
        assert bad_ev.is_error and "Unknown event_id" in _text(bad_ev)
        outside = await call(client, "submit_feedback", {"event_id": ev, "signal": "correct_location",
                                                         "path": "../etc/passwd", "start_line": 1, "end_line": 1})
        assert outside.is_error
        beyond = await call(client, "submit_feedback", {"event_id": ev, "signal": "correct_location",
                                                        "path": "utils/retry.py", "start_line": 1, "end_line": 999})
        assert beyond.is_error
    signals = [f.signal for f in sorted(eng.store.feedback_for_event(ev), key=lambda f: f.ts)]
    assert signals == ["used", "correct_location"]


async def test_rag_index_status_list_and_refresh(indexed, tmp_path):
    settings, eng, repo = indexed
    async with Client(create_server(settings, eng)) as client:
        st = await call(client, "rag_index", {"action": "status", "corpus": "sample"})
        assert st.structured_content["data"]["files"] == 5
        lst = await call(client, "rag_index", {"action": "list"})
        assert [c["corpus"] for c in lst.structured_content["data"]["corpora"]] == ["sample"]
        missing = await call(client, "rag_index", {"action": "index", "path": str(tmp_path / "nope")})
        assert missing.is_error and "no such directory" in _text(missing)
        refreshed = await call(client, "rag_index", {"action": "refresh", "corpus": "sample"})
        assert not refreshed.is_error and refreshed.structured_content["data"]["published"] is False


async def test_reranker_admin_info_says_why_no_model_serves(indexed):
    settings, eng, _ = indexed
    async with Client(create_server(settings, eng)) as client:
        info = await call(client, "reranker_admin", {"action": "info"})
    assert not info.is_error, _text(info)
    assert info.structured_content["loaded"] is False
