"""Server-side syntax highlighting with Pygments. Its HTML formatter escapes the code, so indexed text never
becomes markup (a file holding ``<script>`` renders as text)."""

from __future__ import annotations

from functools import lru_cache

from markupsafe import Markup
from pygments import highlight as _highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_by_name, get_lexer_for_filename
from pygments.util import ClassNotFound

__all__ = ["highlight_code", "stylesheet"]

_CSS_CLASS = "hl"


@lru_cache(maxsize=64)
def _lexer(language: str, suffix: str) -> Lexer:
    for attempt in (lambda: get_lexer_by_name(language), lambda: get_lexer_for_filename("x" + suffix)):
        try:
            return attempt()
        except ClassNotFound:
            continue
    return TextLexer()


def highlight_code(text: str, language: str, path: str, start_line: int = 1) -> Markup:
    """``text`` as highlighted, escaped HTML with line numbers from ``start_line``."""
    suffix = path[path.rfind("."):] if "." in path.rsplit("/", 1)[-1] else ""
    formatter = HtmlFormatter(cssclass=_CSS_CLASS, linenos="inline", linenostart=max(1, start_line), wrapcode=True)
    return Markup(_highlight(text, _lexer(language or "", suffix), formatter))


@lru_cache(maxsize=1)
def stylesheet() -> str:
    """The CSS for the highlighted blocks (served as ``/static/pygments.css``)."""
    return HtmlFormatter(style="friendly").get_style_defs(f".{_CSS_CLASS}")
