"""Keys never in output: one helper for every message, log line and result that can carry a URL, header or body.

:func:`redact` removes what looks like a credential (``Authorization`` / ``Bearer`` values, ``user:password@`` in
URLs, ``api_key=`` style parameters, ``"api_key": "…"`` JSON fields) and every literal secret it is given (the
configured LLM key, the database URL's password). :func:`register_secret` adds a process-wide literal (set once at
start-up from the settings), so log lines are scrubbed too (:class:`RedactingFormatter`). :func:`clip` bounds how
much of a caller's input a message repeats.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["MASK", "RedactingFormatter", "clip", "redact", "register_secret", "url_secrets"]

MASK = "[REDACTED]"
CLIP_CHARS = 200
_MIN_SECRET = 4  # shorter literals would mask ordinary words

_PATTERNS = [
    # Authorization: Bearer xxx / Basic xxx / token xxx (header lines, echoed dicts, reprs)
    (re.compile(r"(?i)(\b(?:proxy-)?authorization\b['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token)\s+)?[^\s'\",}]+"),
     lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + MASK),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{4,}"), lambda m: m.group(1) + " " + MASK),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/@:'\"]*):([^\s/@'\"]*)@"),
     lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@"),
    # api_key=…, token=…, password=… in query strings, env lines and JSON fields
    (re.compile(r"(?i)([\"']?\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd|pwd|"
                r"x-api-key)\b[\"']?\s*[:=]\s*[\"']?)([^\s&'\",}]+)"),
     lambda m: m.group(1) + MASK),
]

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL secrets) everywhere :func:`redact` runs in this process, logs included."""
    if not value:
        return
    with _lock:
        for s in (value, *url_secrets(value)):
            if len(s) >= _MIN_SECRET:
                _secrets.add(s)


def url_secrets(url: str) -> list[str]:
    """The password (and user) of ``scheme://user:password@host`` in ``url``, if any."""
    try:
        parts = urlsplit(url)
        return [s for s in (parts.password,) if s]
    except ValueError:
        return []


def redact(text: object, secrets: Iterable[str | None] = (), patterns: bool = True) -> str:
    """``text`` with credentials masked: registered secrets, ``secrets`` given here, and (``patterns``)
    credential-shaped values such as ``Authorization: Bearer …`` or ``https://user:password@…``."""
    out = str(text)
    literals = {s for s in secrets if s and len(s) >= _MIN_SECRET}
    for s in list(literals):
        literals.update(u for u in url_secrets(s) if len(u) >= _MIN_SECRET)
    with _lock:
        literals |= _secrets
    for s in sorted(literals, key=len, reverse=True):
        if s in out:
            out = out.replace(s, MASK)
    if patterns:
        for pattern, repl in _PATTERNS:
            out = pattern.sub(repl, out)
    return out


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with a count of what was left out (errors echo no more)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback) passes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
