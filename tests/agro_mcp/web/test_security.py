"""The console's guard over HTTP (real app, real engine and store): token file, session cookie, Host, Origin and
CSRF checks, admin controls absent when admin is disabled."""

from __future__ import annotations

import os
import re
import stat
import threading

import pytest
from starlette.testclient import TestClient

from agro_mcp.web import create_console_app, load_or_create_token
from tests.agro_mcp.web.conftest import console_settings

BASE = "http://127.0.0.1:8765"


@pytest.fixture
def app_for(tmp_path, embedder):
    engines = []

    def make(**env: str):
        from agro_mcp.engine import Engine

        settings = console_settings(tmp_path / "home", **env)
        engine = Engine(settings, embedder=embedder)
        engines.append(engine)
        return engine, create_console_app(engine, settings.console, "the-token")

    yield make
    for e in engines:
        e.close()


def logged_in(app) -> tuple[TestClient, str]:
    client = TestClient(app, base_url=BASE)
    r = client.get("/learning?token=the-token", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/learning"
    page = client.get("/learning")
    return client, re.search(r'data-csrf="([0-9a-f]+)"', page.text).group(1)


def test_the_token_file_is_created_once_with_mode_0600_and_reused(tmp_path):
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(load_or_create_token(tmp_path / "home")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1 and len(tokens[0]) >= 40
    mode = stat.S_IMODE(os.stat(tmp_path / "home" / "daemon.token").st_mode)
    assert mode == 0o600
    os.chmod(tmp_path / "home" / "daemon.token", 0o644)
    assert load_or_create_token(tmp_path / "home") == tokens[0]
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "daemon.token").st_mode) == 0o600
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["daemon.token"]  # no temp file left


def test_without_the_token_every_page_is_refused_and_the_token_sets_a_strict_httponly_cookie(app_for):
    _, app = app_for()
    client = TestClient(app, base_url=BASE)
    for path in ("/", "/learning", "/corpora", "/reranker", "/api/paths?corpus=x&q=a", "/events/jobs"):
        assert client.get(path).status_code == 401, path
    assert client.get("/?token=wrong").status_code == 403
    r = client.get("/reranker?token=the-token&x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/reranker?x=1"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "the-token" not in cookie
    assert client.get("/reranker").status_code == 200
    forged = TestClient(app, base_url=BASE, cookies={"agro_console": "0123abcd." + "0" * 64})
    assert forged.get("/reranker").status_code == 401


def test_a_foreign_host_header_is_refused(app_for):
    _, app = app_for()
    client = TestClient(app, base_url="http://attacker.example:8765")
    assert client.get("/?token=the-token").status_code == 421


def test_posts_need_the_csrf_token_and_the_console_origin(app_for):
    engine, app = app_for()
    client, csrf = logged_in(app)
    ok = {"Origin": BASE}
    assert client.post("/learning/rollback", data={"confirm": "yes"}, headers=ok).status_code == 403
    assert client.post("/learning/rollback", data={"confirm": "yes", "csrf": "0" * 40}, headers=ok).status_code == 403
    foreign = {"Origin": "http://evil.example"}
    assert client.post("/learning/rollback", data={"confirm": "yes", "csrf": csrf}, headers=foreign).status_code == 403
    assert client.post("/learning/rollback", data={"confirm": "yes", "csrf": csrf}).status_code == 403  # no origin
    r = client.post("/learning/rollback", data={"confirm": "yes", "csrf": csrf}, headers=ok, follow_redirects=False)
    assert r.status_code == 303 and "err=" in r.headers["location"]  # accepted; nothing to roll back to
    r = client.post("/api/feedback", data={"event_id": "nope", "signal": "click"}, headers=ok)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]  # the page's script shows why
    r = client.post("/api/feedback", data={"event_id": "nope", "signal": "click"},
                    headers={**ok, "X-CSRF-Token": csrf})
    assert r.status_code == 400 and "Unknown event_id" in r.json()["error"]
    assert engine.store.counts()["feedback"] == 0


def test_admin_controls_are_absent_and_refused_when_admin_is_disabled(app_for):
    _, app = app_for(AGRO_ADMIN_ENABLED="0")
    client, csrf = logged_in(app)
    page = client.get("/learning").text
    assert 'id="train"' not in page and "Promote" not in page and "Roll back" not in page
    assert "Reload now" not in client.get("/reranker").text
    ok = {"Origin": BASE}
    for path in ("/learning/train", "/learning/rollback", "/learning/promote", "/reranker/reload"):
        assert client.post(path, data={"csrf": csrf, "confirm": "yes"}, headers=ok).status_code == 403, path
    assert client.get("/learning/confirm?action=rollback").status_code == 403


def test_pages_carry_a_strict_content_security_policy(app_for):
    _, app = app_for()
    client, _ = logged_in(app)
    r = client.get("/learning")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text and "onclick" not in r.text  # no inline script to allow
