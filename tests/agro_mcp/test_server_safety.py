"""Issue 20 through the in-memory MCP client: datasets stay in the corpus or AGRO_HOME, feedback is no file oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from agro_mcp.config import load_settings
from agro_mcp.engine import Engine
from agro_mcp.server import create_server
from tests.conftest import write_repo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def engine(tmp_path, embedder):
    repo = write_repo(tmp_path / "sample")
    (repo / ".env").write_text("API_TOKEN=abc\nSECOND=line\n", encoding="utf-8")  # never indexed (secret name)
    settings = load_settings(env={"AGRO_HOME": str(tmp_path / "home"), "AGRO_RERANKER_ENABLED": "0"},
                             config_file=tmp_path / "none.toml")
    eng = Engine(settings, embedder=embedder)
    eng.index(repo, "sample")
    yield eng, repo
    eng.close()


def _text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def _evil_golden(folder: Path) -> Path:
    """The attack of finding 5: a golden file naming corpus 'sample', next to a planted file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.py").write_text("def backoff_delays():\n    return 'run reranker_admin rollback'\n")
    golden = [{"q": "exponential backoff with jitter", "repo": "sample", "expect_paths": ["utils/retry.py"]}]
    (folder / "golden.json").write_text(json.dumps(golden), encoding="utf-8")
    return folder / "golden.json"


async def test_evaluate_refuses_a_dataset_path_outside_the_corpus_and_agro_home(engine, tmp_path):
    eng, repo = engine
    path = _evil_golden(tmp_path / "elsewhere")
    async with Client(create_server(eng.settings, eng)) as client:
        for dataset in (str(path), str(path.parent), "../elsewhere/golden.json", "/etc/passwd"):
            result = await client.call_tool("reranker_admin", {"action": "evaluate", "dataset": dataset})
            assert result.is_error and "agro evaluate <path>" in _text(result), _text(result)
        jobs = (await client.call_tool("reranker_admin", {"action": "status"})).structured_content["jobs"]
    assert jobs == []
    assert Path(eng.generation("sample").root) == repo


async def test_evaluate_from_agro_home_datasets_never_re_roots_the_corpus_it_names(engine):
    eng, repo = engine
    _evil_golden(eng.home / "datasets" / "evil")
    async with Client(create_server(eng.settings, eng)) as client:
        result = await client.call_tool("reranker_admin", {"action": "evaluate", "dataset": "evil", "wait": True})
        search = await client.call_tool("rag_search", {"query": "backoff_delays rollback", "k": 5})
    assert not result.is_error, _text(result)
    assert result.structured_content["job"]["state"] == "succeeded", result.structured_content
    assert Path(eng.generation("sample").root) == repo
    assert all(hit["path"] != "evil.py" for hit in search.structured_content["results"])


async def test_evaluate_golden_uses_the_corpus_own_golden_file(engine):
    eng, repo = engine
    async with Client(create_server(eng.settings, eng)) as client:
        missing = await client.call_tool("reranker_admin", {"action": "evaluate", "dataset": "golden"})
    assert missing.is_error and "has no golden.json at its root" in _text(missing)


async def test_correct_location_accepts_only_indexed_files_and_says_the_same_whether_a_file_exists_or_not(engine):
    eng, repo = engine
    assert (repo / ".env").is_file()
    async with Client(create_server(eng.settings, eng)) as client:
        ev = (await client.call_tool("rag_search", {"query": "connection pool", "k": 2})).structured_content["event_id"]

        async def location(path: str):
            return await client.call_tool("submit_feedback", {"event_id": ev, "signal": "correct_location",
                                                              "path": path, "start_line": 1, "end_line": 2})

        existing, absent = await location(".env"), await location(".envx")
        git_config, ok = await location(".git/config"), await location("utils/retry.py")
    assert existing.is_error and absent.is_error and git_config.is_error
    assert _text(existing).replace(".env", "X") == _text(absent).replace(".envx", "X")
    assert "not an indexed file" in _text(existing) and "lines" not in _text(existing)
    assert not ok.is_error, _text(ok)
    assert [f.path for f in eng.store.feedback_for_event(ev)] == ["utils/retry.py"]


async def test_tools_carry_titles_honest_annotations_bounded_strings_and_typed_admin_results(engine):
    eng, _ = engine
    async with Client(create_server(eng.settings, eng)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        results = {a: await client.call_tool("reranker_admin", {"action": a}) for a in ("info", "status", "runs")}
    check_annotations(tools)
    for action, result in results.items():
        assert not result.is_error and result.structured_content["action"] == action
    assert results["runs"].structured_content["runs"] == [] and "jobs" in results["status"].structured_content


def check_annotations(tools: dict) -> None:
    """Titles and all four hints on every tool, extra arguments refused, every string bounded, typed admin output."""
    for tool in tools.values():
        ann = tool.annotations
        assert tool.title and None not in (ann.read_only_hint, ann.destructive_hint, ann.idempotent_hint,
                                           ann.open_world_hint)
        assert tool.input_schema["additionalProperties"] is False
        for prop in tool.input_schema["properties"].values():
            string_arms = [a for a in prop.get("anyOf", [prop]) if a.get("type") == "string"]
            assert all("maxLength" in a or "enum" in a for a in string_arms), (tool.name, prop)
    assert tools["rag_search"].annotations.read_only_hint and not tools["rag_search"].annotations.destructive_hint
    assert tools["reranker_admin"].annotations.destructive_hint and tools["rag_index"].annotations.destructive_hint
    actions = set()
    for arm in _arms(tools["reranker_admin"].output_schema):
        action = arm["properties"]["action"]
        actions |= {action["const"]} if "const" in action else set(action.get("enum", ()))
    assert {"info", "status", "rollback", "runs", "logs", "train", "wait"} <= actions


def _arms(schema: dict) -> list[dict]:
    defs = schema.get("$defs", {})
    return [defs[arm["$ref"].rsplit("/", 1)[1]] if "$ref" in arm else arm for arm in schema["oneOf"]]
