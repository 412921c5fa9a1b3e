"""Pieces of the daemon client that need no daemon: version order, socket path length, the light import chain."""

import os
import subprocess
import sys
from pathlib import Path

from agro_mcp.daemon_client import socket_path, version_key

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_versions_compare_numerically_so_only_an_older_daemon_is_drained():
    assert version_key("0.10.0") > version_key("0.9.1")
    assert version_key("1.0.0") > version_key("0.99")
    assert version_key("0.1.0") == version_key("0.1.0")


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
