"""The web console: search with feedback, corpora, learning and the reranker, for people.

``create_console_app(engine, settings, token)`` returns the ASGI app; ``agro console`` serves it alone and the
daemon mounts it. Heavy imports (Starlette, Jinja2, Pygments) happen when the app is built, not at import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_console_app", "load_or_create_token"]


def create_console_app(engine: Any, settings: Any = None, token: str | None = None):
    """See :func:`agro_mcp.web.app.create_console_app`."""
    from agro_mcp.web.app import create_console_app as create

    return create(engine, settings, token)


def load_or_create_token(home):
    """See :func:`agro_mcp.web.security.load_or_create_token`."""
    from agro_mcp.web.security import load_or_create_token as load

    return load(home)
