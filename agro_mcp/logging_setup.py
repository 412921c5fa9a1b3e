"""Logging goes to stderr only: in ``agro serve`` stdout is the MCP protocol stream.

``configure_logging`` is called once, by the command line's ``main()``; library code only logs.
"""

from __future__ import annotations

import logging
import os
import sys

from retrieval.redact import RedactingFormatter

__all__ = ["configure_logging", "quiet_third_party"]

# Third-party loggers whose INFO lines say nothing a user can act on.
_NOISY = ("httpx", "sentence_transformers", "transformers", "filelock", "urllib3", "mcp", "huggingface_hub")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (a background thread may log after a test
    has swapped and closed the stream it started with)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """One stderr handler on the root logger whose lines pass through the redaction helper (no key ever reaches a
    log); third-party loggers at WARNING or above."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def quiet_third_party(progress_bars: bool | None = None) -> None:
    """Turn off the Hugging Face progress bars (weight loading, downloads, training) unless ``progress_bars``.

    Default: bars only when stderr is a terminal; a log file or a pipe gets no carriage-return bars. An explicit
    ``HF_HUB_DISABLE_PROGRESS_BARS`` in the environment wins. Call before transformers is imported (it reads the
    setting once); libraries imported earlier are switched off directly.
    """
    if progress_bars is None:
        progress_bars = sys.stderr.isatty()
    if progress_bars or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
