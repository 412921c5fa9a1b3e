"""The one exception root of agro-mcp, in the lowest package so every package can raise it.

``AgroUserError`` messages are written for the person or the model calling a face: the MCP server returns them as
tool errors and the CLI prints them as ``agro: <message>``. Any other ``AgroError`` is an internal signal (a
fallback, a cancellation) that a face does not show as it is.
"""

from __future__ import annotations

__all__ = ["AgroError", "AgroUserError"]


class AgroError(Exception):
    """Base of every exception agro-mcp raises on purpose."""


class AgroUserError(AgroError):
    """A failure the caller can fix; the message says what to do next and reaches the user or the model as is."""
