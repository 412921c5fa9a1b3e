"""``agro console``: a real process that prints its URL with the token once and refuses requests without it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from agro_mcp.cli import main


def test_console_url_prints_the_loopback_url_with_the_install_token(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGRO_CONSOLE_PORT", "9911")
    assert main(["console", "--url"]) == 0
    token = (tmp_path / "home" / "daemon.token").read_text().strip()
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:9911/?token={token}"


@pytest.mark.slow
def test_agro_console_serves_the_console_behind_its_token(tmp_path):
    env = {**os.environ, "AGRO_HOME": str(tmp_path / "home"), "AGRO_RERANKER_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "console.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "agro_mcp", "console", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("agro console: http://127.0.0.1:"), (line, (tmp_path / "console.log").read_text())
        url = line.split(": ", 1)[1].strip()
        base, token = url.split("/?token=")
        assert token == (tmp_path / "home" / "daemon.token").read_text().strip()
        assert (tmp_path / "home" / "daemon.token").stat().st_mode & 0o777 == 0o600
        with httpx.Client(base_url=base, follow_redirects=True) as client:
            assert client.get("/").status_code == 401
            r = client.get(f"/?token={token}")
            assert r.status_code == 200 and r.url.path == "/" and "token" not in str(r.url) and 'id="q"' in r.text
            assert client.get("/corpora").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        log.close()
