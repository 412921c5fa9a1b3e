import re
from pathlib import Path

import pytest

from retrieval.tokenize import STOPWORDS, code_tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("getUserName", ["getusername", "get", "user", "name"]),
        ("GetUserName", ["getusername", "get", "user", "name"]),
        ("get_user_name", ["get_user_name", "get", "user", "name"]),
        ("MAX_RETRY_COUNT", ["max_retry_count", "max", "retry", "count"]),
        ("HTTPServer", ["httpserver", "http", "server"]),
        ("XMLHttpRequest", ["xmlhttprequest", "xml", "http", "request"]),
        ("base64Encode", ["base64encode", "base", "64", "encode"]),
        ("utf8", ["utf8", "utf"]),
        ("__init__", ["init"]),
        ("_private_fn", ["private_fn", "private", "fn"]),
        ("name", ["name"]),
    ],
)
def test_identifiers_are_split_and_kept_whole(text, tokens):
    assert code_tokens(text) == tokens


def test_dotted_names_keep_the_chain_and_its_parts():
    assert code_tokens("os.path.join(a, b)") == ["os.path.join", "os", "path", "join"]


def test_self_prefix_is_dropped_from_chains():
    assert code_tokens("self.user_name = this.count") == ["user_name", "user", "name", "count"]


def test_version_numbers_are_not_chains():
    assert code_tokens("Python 3.11") == ["python", "11"]


def test_stopwords_and_one_char_tokens_are_dropped_keywords_kept():
    toks = code_tokens("def f(self, x): return the value of x if it is None")
    assert toks == ["def", "return", "value", "if", "none"]
    assert "return" not in STOPWORDS and "self" in STOPWORDS


def test_non_ascii_words_split_on_underscores_only():
    assert code_tokens("größe_wert") == ["größe_wert", "größe", "wert"]


def test_overlong_tokens_are_dropped_but_their_parts_kept():
    word = "a" * 70 + "Tail"
    assert code_tokens(word) == ["tail"]


def test_tokens_are_deterministic_and_keep_repeats():
    text = "parseConfig(config); parseConfig(other)"
    assert code_tokens(text) == code_tokens(text)
    assert code_tokens(text).count("parseconfig") == 2


def _naive(text: str) -> list[str]:
    """Reference without caching or fast paths."""
    out = []
    for word in re.findall(r"\w+(?:\.\w+)*", text):
        names = word.split(".")
        if len(names) > 1:
            trimmed = list(names)
            while len(trimmed) > 1 and trimmed[0].lower() in ("self", "cls", "this"):
                trimmed = trimmed[1:]
            if len(trimmed) > 1 and not trimmed[0][0].isdigit() and len(".".join(trimmed)) <= 64:
                out.append(".".join(trimmed).lower())
        for name in names:
            if name.isascii():
                parts = [p.lower() for p in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)]
            else:
                parts = [p.lower() for p in name.split("_") if p]
            whole = name.strip("_").lower()
            keep = lambda t: 1 < len(t) <= 64 and t not in STOPWORDS  # noqa: E731
            if parts != [whole] and keep(whole) and not whole.isdigit():
                out.append(whole)
            out.extend(p for p in parts if keep(p))
    return out


def test_matches_a_naive_reference_on_real_code():
    import retrieval.chunking as sample

    text = Path(sample.__file__).read_text(encoding="utf-8")
    assert code_tokens(text) == _naive(text)
