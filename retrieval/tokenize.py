"""Code-aware tokens for BM25.

Rules, applied to every word (``\\w+``) and dotted name (``a.b.c``) of the text:

* Everything is lower-cased.
* An identifier is split on ``_``, camelCase / PascalCase, acronym (``HTTPServer`` -> ``http``, ``server``) and
  letter/digit boundaries (``base64Encode`` -> ``base``, ``64``, ``encode``). The whole identifier is kept as well,
  with leading/trailing underscores stripped (``__init__`` -> ``init``); it is emitted once more only if it differs
  from its single part, so ``getUserName`` -> ``getusername``, ``get``, ``user``, ``name`` and ``name`` -> ``name``.
* A dotted name keeps the whole chain as one token (``os.path.join`` -> ``os.path.join``, then ``os``, ``path``,
  ``join``), after dropping a leading ``self.`` / ``cls.`` / ``this.``; no intermediate pairs (``path.join``).
  A chain needs two parts left and must not start with a digit (``3.11`` gives ``11`` only).
* Words with non-ASCII letters are split on ``_`` only.
* Dropped: tokens of one character, tokens over 64 characters, and a short stopword list of English function words
  plus ``self``/``cls``/``this``. Language keywords (``return``, ``def``, ``async``, ``raise``, ``import``...) are
  kept: they carry intent in questions ("where do we raise ...") and BM25's IDF already discounts them.

The output is deterministic, in text order, with repeats (term frequency matters to BM25).
"""

from __future__ import annotations

import re
from itertools import chain

__all__ = ["STOPWORDS", "code_tokens"]

STOPWORDS: frozenset[str] = frozenset(
    {
        "the", "an", "and", "or", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "as",
        "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "there",
        "we", "you", "our", "your", "my", "me", "he", "she", "they", "them", "their", "his", "her",
        "self", "cls",
    }
)

_MAX_TOKEN_CHARS = 64
_CACHE_LIMIT = 300_000

_WORD_RE = re.compile(r"\w+(?:\.\w+)*")
_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_CHAIN_PREFIXES = ("self", "cls", "this")



def _keep(tok: str) -> bool:
    return 1 < len(tok) <= _MAX_TOKEN_CHARS and tok not in STOPWORDS


def _identifier_tokens(word: str, out: list[str]) -> None:
    if word.isascii():
        parts = [p.lower() for p in _PART_RE.findall(word)]
    else:  # no case rules for other scripts: split on underscores only
        parts = [p.lower() for p in word.split("_") if p]
    whole = word.strip("_").lower()
    if len(parts) != 1 or parts[0] != whole:
        if _keep(whole) and not whole.isdigit():
            out.append(whole)
    out.extend(p for p in parts if _keep(p))


def _word_tokens(word: str) -> tuple[str, ...]:
    if word.isalpha() and word.islower() and word.isascii():  # the common case: a plain lower-case word
        return (word,) if _keep(word) else ()
    out: list[str] = []
    if "." in word:
        names = word.split(".")
        while len(names) > 1 and names[0].lower() in _CHAIN_PREFIXES:
            names = names[1:]
        if len(names) > 1 and not names[0][:1].isdigit():
            chain = ".".join(names).lower()
            if len(chain) <= _MAX_TOKEN_CHARS:
                out.append(chain)
        for name in word.split("."):
            _identifier_tokens(name, out)
    else:
        _identifier_tokens(word, out)
    return tuple(out)


class _WordCache(dict[str, tuple[str, ...]]):
    """Tokens per distinct word; code repeats its words, so most lookups stay in C."""

    def __missing__(self, word: str) -> tuple[str, ...]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        toks = self[word] = _word_tokens(word)
        return toks


_cache = _WordCache()


def code_tokens(text: str) -> list[str]:
    """BM25 tokens of code or prose (see the module docstring for the rules)."""
    return list(chain.from_iterable(map(_cache.__getitem__, _WORD_RE.findall(text))))
