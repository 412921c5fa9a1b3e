"""Index errors. Every message says what to run next; the faces show it as it is."""

from __future__ import annotations

__all__ = ["IndexError_", "IndexLockedError", "IndexVersionError", "NoIndexError", "ReachError", "RootChangeError"]


class IndexError_(RuntimeError):
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
