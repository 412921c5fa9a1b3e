"""Logging goes to stderr only: in ``agro serve`` stdout is the MCP protocol stream."""

from __future__ import annotations

import logging
import sys

from retrieval.redact import RedactingFormatter


def configure_logging(level: str = "INFO") -> None:
    """One stderr handler whose lines pass through the redaction helper (no key ever reaches a log)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "sentence_transformers", "transformers", "filelock", "urllib3", "mcp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
