"""Pieces of the daemon client that need no daemon: socket path length, the light import chain."""

import os
import subprocess
import sys
from pathlib import Path

from agro_mcp.daemon_client import socket_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_socket_path_is_in_the_home_unless_too_long_for_a_unix_socket(tmp_path, monkeypatch):
    short = tmp_path / "h"
    assert socket_path(short) == short / "daemon.sock"
    long_home = tmp_path / ("x" * 120)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    path = socket_path(long_home)
    assert len(os.fsencode(str(path))) <= 100 and path.parent == tmp_path / "run"
    assert socket_path(long_home) == path  # stable: every proxy finds the same daemon
    assert socket_path(tmp_path / ("y" * 120)) != path


def test_the_proxy_and_lifecycle_commands_import_neither_torch_nor_numpy():
    code = ("import sys; import agro_mcp.cli, agro_mcp.proxy, agro_mcp.cli_daemon, agro_mcp.daemon_client; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'scipy', 'sentence_transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_fast_proxy_path_leaves_to_the_full_cli_what_it_cannot_read_from_the_environment(tmp_path):
    from agro_mcp.serve_fast import try_fast_proxy

    home = tmp_path / "home"
    home.mkdir()
    env = {"AGRO_HOME": str(home)}
    assert try_fast_proxy(["index", "."], env) is None
    assert try_fast_proxy(["serve", "--extra"], env) is None
    assert try_fast_proxy(["--verbose", "serve"], env) is None
    assert try_fast_proxy(["serve"], {**env, "AGRO_SERVE_MODE": "inprocess"}) is None
    assert try_fast_proxy(["serve"], {**env, "agro_serve_mode": "inprocess"}) is None  # names are case-blind
    assert try_fast_proxy(["serve"], {**env, "AGRO_CONFIG": str(tmp_path / "agro.toml")}) is None
    assert try_fast_proxy(["serve"], {**env, "AGRO_DAEMON_START_TIMEOUT_SEC": "soon"}) is None
    assert try_fast_proxy(["--log-level", "LOUD", "serve"], env) is None
    (home / "agro.toml").write_text("[server]\nserve_mode = 'inprocess'\n")
    assert try_fast_proxy(["serve"], env) is None


def test_the_fast_proxy_path_loads_only_the_standard_librarys_light_parts():
    code = ("import sys; import agro_mcp.cli, agro_mcp.proxy, agro_mcp.serve_fast; "
            "from agro_mcp.daemon_client import agro_version; agro_version(); "
            "print(sorted(m for m in ('torch', 'numpy', 'pydantic', 'pydantic_settings', 'mcp', 'anyio', 'hashlib', "
            "'email', 'importlib.metadata') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "AGRO__VERSION_FOR_TESTS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**env, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_proxy_reads_the_installed_version_as_importlib_metadata_does(monkeypatch):
    from importlib.metadata import version

    from agro_mcp.daemon_client import agro_version

    monkeypatch.delenv("AGRO__VERSION_FOR_TESTS", raising=False)
    assert agro_version() == version("agro-mcp")
