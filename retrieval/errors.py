"""The one exception root of agro-mcp, in the lowest package so every package can raise it, and the index errors.

``AgroUserError`` messages are written for the person or the model calling a face: the MCP server returns them as
tool errors and the CLI prints them as ``agro: <message>``. Any other ``AgroError`` is an internal signal (a
fallback, a cancellation) that a face does not show as it is.
"""

from __future__ import annotations

__all__ = [
    "AgroError",
    "AgroUserError",
    "IndexError_",
    "IndexLockedError",
    "IndexVersionError",
    "NoIndexError",
    "ReachError",
    "RootChangeError",
]


class AgroError(Exception):
    """Base of every exception agro-mcp raises on purpose."""


class AgroUserError(AgroError):
    """A failure the caller can fix; the message says what to do next and reaches the user or the model as is."""


class IndexError_(AgroUserError, RuntimeError):
    """Base of index errors; messages say what to run next."""


class NoIndexError(IndexError_):
    pass


class IndexVersionError(IndexError_):
    pass


class IndexLockedError(IndexError_):
    pass


class ReachError(IndexError_):
    """A folder this caller may not index (``retrieval.reach``); the message names the setting or command."""


class RootChangeError(IndexError_):
    """A corpus indexed again from another folder without ``--root-change``."""
