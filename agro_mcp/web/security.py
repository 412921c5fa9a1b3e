"""The console's guard: the per-install token, the session cookie, the CSRF token and the Origin and Host checks.

* The token lives in ``AGRO_HOME/token`` (0600), created once. It is given once in the URL ``agro console`` prints;
  the console answers that request by setting an HttpOnly, SameSite=Strict session cookie and redirecting to the
  same page without the token, so it stays out of the address bar and the history.
* The cookie holds a random session id and its HMAC under the token: a new token (delete the file) ends every
  session. The CSRF token is another HMAC of the session id; every POST carries it (form field ``csrf`` or header
  ``X-CSRF-Token``) and an ``Origin`` (or ``Referer``) of the console itself.
* The ``Host`` header must name the loopback address or the configured host: a DNS-rebinding page cannot reach the
  console under its own name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["COOKIE_NAME", "CSRF_FIELD", "CSRF_HEADER", "ConsoleGuard", "load_or_create_token"]

logger = logging.getLogger(__name__)

TOKEN_FILE = "daemon.token"  # one per-install token: the console and the daemon's HTTP endpoint
COOKIE_NAME = "agro_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_PUBLIC_PREFIX = "/static/"


def load_or_create_token(home: Path) -> str:
    """The install's token from ``home/daemon.token`` (the daemon's HTTP token too), created (0600) when missing. Concurrent callers get the same one."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / TOKEN_FILE
    if not path.exists():
        tmp = home / f".token.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic create-if-missing: a process that lost the race reads the winner's
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        os.chmod(path, 0o600)
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise RuntimeError(f"{path} is empty: delete it and start the console again to make a new token")
    return token


def _mac(token: str, purpose: str, value: str) -> str:
    return hmac.new(token.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8765
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _refused(status: int, title: str, detail: str) -> Response:
    body = (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
            f"<body class=refused><h1>{title}</h1><p>{detail}</p></body>")
    return HTMLResponse(body, status_code=status)


class ConsoleGuard:
    """ASGI middleware: Host check, token login, session cookie, and for POSTs the Origin check.

    The CSRF token itself is checked by the endpoints (they read the form): this guard puts the session's one in
    ``request.state.csrf`` (and the session id in ``request.state.session``).
    """

    def __init__(self, app: ASGIApp, token: str, host: str = "127.0.0.1") -> None:
        self.app = app
        self.token = token
        self.hosts = _LOOPBACK | {host}

    def session_cookie(self, session: str) -> str:
        return f"{session}.{_mac(self.token, 'session', session)}"

    def csrf_for(self, session: str) -> str:
        return _mac(self.token, "csrf", session)[:40]

    def _session(self, request: Request) -> str | None:
        raw = request.cookies.get(COOKIE_NAME, "")
        session, _, mac = raw.partition(".")
        if session and mac and hmac.compare_digest(mac, _mac(self.token, "session", session)):
            return session
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = self._gate(request)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _gate(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if _host_name(host) not in self.hosts:
            return PlainTextResponse(f"Host {host!r} is not this console's address", status_code=421)
        if request.url.path.startswith(_PUBLIC_PREFIX):
            return None
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _refused(403, "Wrong token",
                                "This link's token is not this install's. Open the URL that <code>agro console</code> "
                                "printed.")
            session = secrets.token_hex(16)
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = URL(path=request.url.path).include_query_params(**dict(query)) if query else request.url.path
            response = RedirectResponse(str(target), status_code=303)
            response.set_cookie(COOKIE_NAME, self.session_cookie(session), httponly=True, samesite="strict",
                                path="/")
            return response
        session = self._session(request)
        if session is None:
            return _refused(401, "The console needs its token",
                            "Open the URL that <code>agro console</code> printed (it carries this install's token "
                            "once; the browser then keeps a session cookie).")
        request.scope.setdefault("state", {})
        request.state.session = session
        request.state.csrf = self.csrf_for(session)
        if request.method not in _SAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is None and request.headers.get("referer"):
                ref = urlsplit(request.headers["referer"])
                origin = f"{ref.scheme}://{ref.netloc}"
            expected = f"{request.url.scheme}://{host}"
            if origin != expected:
                return _refused(403, "Cross-origin request refused",
                                f"A change must come from this console's own pages (origin {expected}).")
        return None
