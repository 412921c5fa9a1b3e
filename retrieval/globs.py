"""Path filters (``path_glob``): gitignore-style globs, matched by ``pathspec`` in memory and in PostgreSQL.

``*`` stays inside one folder, ``**`` spans folders, ``?`` is one character, ``[...]`` a set. A pattern without a
``/`` (other than a trailing one) matches a file or folder name at any depth (``*.py``, ``tests``), as in
.gitignore; a pattern that names a folder matches everything below it (``src/auth``, ``docs/``). A leading ``./``
is dropped; a leading ``!`` or ``#`` is taken literally.
"""

from __future__ import annotations

import re
from functools import lru_cache

try:  # pathspec >= 1.0
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern as _Pattern
except ImportError:  # pragma: no cover - pathspec 0.12
    from pathspec.patterns import GitWildMatchPattern as _Pattern

from retrieval.errors import AgroUserError

__all__ = ["InvalidGlobError", "path_glob_pg", "path_glob_regex"]


class InvalidGlobError(AgroUserError, ValueError):
    """A path_glob that is not a glob; the message says what a valid one looks like."""


@lru_cache(maxsize=256)
def _source(pattern: str) -> str:
    pat = pattern.strip().removeprefix("./")
    if pat.startswith(("!", "#")):
        pat = "\\" + pat
    try:
        regex = _Pattern(pat).regex if pat else None
    except (ValueError, re.error) as exc:
        regex, why = None, re.sub(r" at position \d+", "", str(exc))
    else:
        why = "it matches no path"
    if regex is None:
        raise InvalidGlobError(
            f"path_glob expects a glob such as 'src/**/*.py', '*.js' or 'tests/', but got {pattern[:100]!r} ({why})"
        )
    return regex.pattern


@lru_cache(maxsize=256)
def path_glob_regex(pattern: str) -> re.Pattern:
    """The glob as a compiled regular expression; ``.match(path)`` decides (``path`` POSIX, relative to the root).

    Raises:
        InvalidGlobError: not a valid glob (an empty pattern, a bad range such as ``[b-a]``).
    """
    return re.compile(_source(pattern))


def path_glob_pg(pattern: str) -> str:
    """The same glob as a PostgreSQL regular expression (for ``path ~ %s``)."""
    return _source(pattern).replace("(?P<ps_d>", "(")
