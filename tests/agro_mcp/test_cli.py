"""The `agro` command line, run in-process through main() (same Engine as the MCP tools)."""

import json

import pytest

from agro_mcp.cli import main
from tests.conftest import write_repo


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AGRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGRO_RERANKER_ENABLED", "0")
    monkeypatch.delenv("AGRO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_index_search_status_round_trip(home, tmp_path, capsys):
    repo = write_repo(tmp_path / "sample")
    assert main(["index", str(repo), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["corpus"] == "sample" and summary["files"] == 5 and summary["published"]

    assert main(["search", "exponential backoff", "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["symbol"] == "backoff_delays" and out["event_id"]

    assert main(["status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["corpora"][0]["files"] == 5 and st["corpora"][0]["stale_files"]["total"] == 0

    assert main(["feedback", out["event_id"], "used", "--doc-id", out["results"][0]["doc_id"]]) == 0
    assert f"used on event {out['event_id']}" in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message_on_stderr(home, tmp_path, capsys):
    assert main(["search", "anything"]) == 2
    assert "agro index" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_bad_setting_exits_2_naming_the_variable(home, monkeypatch, capsys):
    monkeypatch.setenv("AGRO_RERANKER_ALPHA", "7")
    assert main(["status"]) == 2
    assert "AGRO_RERANKER_ALPHA" in capsys.readouterr().err


def test_evaluate_history_on_a_fresh_home_says_how_to_start(home, capsys):
    assert main(["evaluate", "--history"]) == 0
    assert "no evaluation yet" in capsys.readouterr().out
