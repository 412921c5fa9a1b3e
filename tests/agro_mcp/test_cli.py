"""The `agro` command line, run in-process through main() (same Engine as the MCP tools)."""

import json
from pathlib import Path

import pytest

from agro_mcp.cli import main
from tests.conftest import write_repo

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _actions(parser, path=("agro",)):
    """Every (command path, subparser) pair under ``parser``, depth first."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _actions(sub, (*path, name))


def test_every_flag_and_positional_has_help_and_every_command_ends_with_an_example():
    from agro_mcp.cli import build_parser

    commands = list(_actions(build_parser()))
    assert {"index", "search", "serve", "feedback", "evaluate", "loop", "promote"} <= {p[1] for p, _ in commands}
    for path, sub in commands:
        assert (sub.epilog or "").startswith("example:\n"), f"{' '.join(path)} has no example"
        assert sub.format_help().rstrip().splitlines()[-1].startswith("  "), path  # the example is the last thing
        for action in sub._actions:
            if action.dest in ("help",) or action.__class__.__name__ == "_SubParsersAction":
                continue
            assert action.help, f"{' '.join(path)} {action.option_strings or action.dest} has no help text"


def _tiny_repo(root):
    """A small repository with enough chunks (> 4 x 65) that the dense search takes its float16 screen path."""
    files = {"README.md": "# tiny\nToken validation lives in auth/tokens.py.\n"}
    for f in range(12):
        body = []
        for i in range(24):
            body.append(f'def handler_{f}_{i}(request):\n    """Handle request kind {f}-{i} and return its status."""\n'
                        f"    return request.status + {i}\n\n")
        files[f"pkg/mod_{f}.py"] = "\n".join(body)
    files["auth/tokens.py"] = ('def validate_token(token, secret):\n    """Check the signature and expiry of an '
                               'access token."""\n    return token.startswith(secret)\n')
    return write_repo(root, files)


@pytest.mark.slow
def test_index_and_search_leave_nothing_on_stderr_a_user_cannot_act_on(tmp_path):
    import os
    import subprocess
    import sys

    repo = _tiny_repo(tmp_path / "tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGRO_", "HF_HUB_DISABLE"))}
    env.update(AGRO_HOME=str(tmp_path / "home"), AGRO_RETRIEVAL_DENSE_CANDIDATES="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO_ROOT))

    def agro(*argv):
        done = subprocess.run([sys.executable, "-m", "agro_mcp", *argv], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        assert done.returncode == 0, done.stderr
        return done

    index = agro("index", str(repo), "--json")
    assert json.loads(index.stdout)["chunks"] > 4 * 65
    search = agro("search", "where is the access token validated", "-k", "3")
    assert "validate_token" in search.stdout
    for stderr in (index.stderr, search.stderr):
        for noise in ("Loading weights", "Token indices", "UserWarning", "Warning:", "Traceback", "\r", "No index for"):
            assert noise not in stderr, f"{noise!r} on stderr:\n{stderr}"
        for line in stderr.splitlines():
            assert " INFO " in line, f"not an INFO line: {line!r}"


def _agro_env(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGRO_", "HF_HUB_DISABLE"))}
    env.update(AGRO_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO_ROOT))
    return env


@pytest.mark.slow
def test_a_job_draws_its_progress_on_a_terminal_and_not_into_a_pipe(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    env = _agro_env(tmp_path)
    repo = write_repo(tmp_path / "sample")
    cmd = [sys.executable, "-m", "agro_mcp", "--log-level", "WARNING"]
    subprocess.run([*cmd, "index", str(repo)], env=env, check=True, capture_output=True, timeout=600)

    piped = subprocess.run([*cmd, "bootstrap"], env=env, capture_output=True, text=True, timeout=600)
    assert "bootstrap [" not in piped.stderr and "\r" not in piped.stderr
    assert "run " in piped.stdout  # the result still reaches stdout

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*cmd, "bootstrap"], env=env, stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            drawn += chunk
        proc.communicate(timeout=600)
    finally:
        os.close(leader)
    text = drawn.decode(errors="replace")
    assert "bootstrap [" in text and "mining" in text and "\r" in text
