"""The reach policy from each face (issue 20, finding 1): rag_index over a real in-memory MCP client may index only
under AGRO_INDEX_ROOTS or refresh what a person indexed; never /, system or credential folders; the CLI moves a
corpus only with --root-change."""

import pytest
from mcp import Client

from agro_mcp.cli import main
from agro_mcp.engine import Engine
from agro_mcp.server import create_server
from tests.conftest import write_repo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_rag_index_refuses_folders_outside_index_roots_and_never_folders(make_settings, embedder, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user" / ".ssh").mkdir(parents=True)
    (tmp_path / "user" / ".ssh" / "id_ed25519").write_text("key\n")
    repo = write_repo(tmp_path / "work" / "repo")
    # unattended: past the confirmation step (a person's consent), the reach policy below the tools still decides
    eng = Engine(make_settings(AGRO_ADMIN_ENABLED="unattended"), embedder=embedder)
    try:
        async with Client(create_server(eng.settings, eng)) as client:
            out = await client.call_tool("rag_index", {"action": "index", "path": str(repo)})
            assert out.is_error and "AGRO_INDEX_ROOTS" in _text(out) and f"agro index {repo}" in _text(out)
            for folder in ("/", "/etc", str(tmp_path / "user" / ".ssh"), str(tmp_path / "user")):
                out = await client.call_tool("rag_index", {"action": "index", "path": folder, "corpus": "x"})
                assert out.is_error and "never indexes" in _text(out), (folder, _text(out))
        assert eng.corpora() == []

        eng.index(repo, "repo")  # a person, from the CLI
        (repo / "added.py").write_text("def added_later():\n    return 1\n")
        async with Client(create_server(eng.settings, eng)) as client:
            out = await client.call_tool("rag_index", {"action": "refresh", "corpus": "repo"})
            assert not out.is_error and out.structured_content["data"]["added"] == 1
            other = write_repo(tmp_path / "work" / "other")
            out = await client.call_tool("rag_index", {"action": "index", "path": str(other), "corpus": "repo"})
            assert out.is_error and "--root-change" in _text(out)
    finally:
        eng.close()

    eng = Engine(make_settings(AGRO_ADMIN_ENABLED="unattended", AGRO_INDEX_ROOTS=str(tmp_path / "work")),
                 embedder=embedder)
    try:
        async with Client(create_server(eng.settings, eng)) as client:
            out = await client.call_tool("rag_index", {"action": "index", "path": str(other)})
            assert not out.is_error and out.structured_content["data"]["published"]
    finally:
        eng.close()


def test_cli_moves_a_corpus_only_with_root_change(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGRO_RERANKER_ENABLED", "0")
    monkeypatch.delenv("AGRO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    first, second = write_repo(tmp_path / "a" / "app"), write_repo(tmp_path / "b" / "app")
    assert main(["index", str(first)]) == 0
    capsys.readouterr()
    assert main(["index", str(second)]) == 2
    err = capsys.readouterr().err
    assert "is indexed from" in err and "--root-change" in err and "Traceback" not in err
    assert main(["index", str(second), "--root-change", "--json"]) == 0
    assert f'"root": "{second}"' in capsys.readouterr().out
    assert main(["index", "/"]) == 2
    assert "never indexes" in capsys.readouterr().err
