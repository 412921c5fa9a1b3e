"""Secrets found by content: a scanner run over every file before it is chunked.

A file with a finding is skipped by the index build (the default) or has its matching lines redacted
(``AGRO_INDEX_SECRETS=redact``); either way the secret never reaches an index, a search result or the event store.

What is found (``kind`` in the index summary):

* ``private_key``: a PEM / OpenSSH / PGP private key block (a ``BEGIN ... PRIVATE KEY`` line followed by key
  material, also inside a JSON string with ``\\n`` escapes), or one base64-encoded (``LS0tLS1CRUdJTi...``, as in
  a kubeconfig's ``client-key-data``).
* ``aws_access_key``, ``gcp_api_key``, ``azure_storage_key``, ``github_token``, ``gitlab_token``, ``slack_token``,
  ``slack_webhook``, ``stripe_key``, ``openai_key``, ``anthropic_key``, ``huggingface_token``, ``npm_token``,
  ``pypi_token``, ``sendgrid_key``, ``google_oauth_secret``: the providers' documented token formats.
* ``password_in_url``: ``scheme://user:password@host`` with a literal password.
* ``password_hash``: a crypt(3) hash in a ``user:$6$...:`` line (``/etc/shadow``).
* ``password_assignment``: a literal password assigned to a password-like name (a quoted literal of 8+ mixed characters in
  code; ``DB_PASS=...`` in an env or ini file), not a placeholder (``changeme``, ``${DB_PASSWORD}``, ``<password>``).
* ``secret_assignment``: a high-entropy literal assigned to a secret-like name (``api_key``, ``token``,
  ``secret``, ``auth``, ``client_secret``, ...).

Chosen over ``detect-secrets`` 1.5.0 by measurement (``bench/bench_secrets.py``): it finds 12 of the 12 planted
secrets (detect-secrets 10), and on the ``../shared/bench`` corpora (2,460 files of public code, no real secrets) it
flags 4 files, all test files with example credentials (``http://wiki:pedia@...``), where detect-secrets flags 35,
library sources among them (pydicom's data dictionaries, versioneer.py): a skipped source file is a search miss.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["SCANNER_VERSION", "SecretFinding", "redact_lines", "scan_text", "shannon_entropy"]

SCANNER_VERSION = "1"

_MAX_LINE = 4096  # longer lines are scanned by their first 4 KiB (minified files are skipped before this)


@dataclass(frozen=True, slots=True)
class SecretFinding:
    """One secret in a text: its kind and the 1-based, inclusive lines it spans. Never carries the secret."""

    kind: str
    start_line: int
    end_line: int


# -- token formats ------------------------------------------------------------------------------------------
_TOKEN_RULES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (kind, re.compile(rx))
    for kind, rx in (
        ("aws_access_key", r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z2-7]{16}(?![A-Z0-9])"),
        ("gcp_api_key", r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"),
        ("azure_storage_key", r"AccountKey=[A-Za-z0-9+/]{86}=="),
        ("github_token", r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?![\w])"),
        ("gitlab_token", r"(?<![\w-])gl(?:pat|ptt|dt|rt|cbt|soat|ft|imt|oas)-[A-Za-z0-9_-]{20,}(?![\w-])"),
        ("slack_token", r"(?<![\w-])xox[abposr]-(?:[0-9]+-)+[A-Za-z0-9-]{8,}"),
        ("slack_webhook", r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}"),
        ("stripe_key", r"(?<![\w])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}(?![\w])"),
        ("openai_key", r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}"),
        ("anthropic_key", r"(?<![\w-])sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{80,}"),
        ("huggingface_token", r"(?<![\w])hf_[A-Za-z]{34}(?![\w])"),
        ("npm_token", r"(?<![\w])npm_[A-Za-z0-9]{36}(?![\w])"),
        ("pypi_token", r"(?<![\w])pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),
        ("sendgrid_key", r"(?<![\w])SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![\w])"),
        ("google_oauth_secret", r"(?<![\w])GOCSPX-[A-Za-z0-9_-]{28}(?![\w])"),
    )
)
_TOKEN_PREFILTER = re.compile(
    r"AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|AIza|AccountKey=|gh[pousr]_|github_pat_|gl[a-z]{1,5}-|xox|"
    r"hooks\.slack|_live_|_test_|sk-|hf_|npm_|pypi-|SG\.|GOCSPX-"
)

# -- private keys -------------------------------------------------------------------------------------------
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/=]{40,}")
_HEADER_LINE = re.compile(r"^[A-Za-z-]+: ")  # "Proc-Type: 4,ENCRYPTED" inside an old PEM block
_B64_PEM = re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/=]{40,}")  # base64("-----BEGIN ")

# -- passwords and assignments ------------------------------------------------------------------------------
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://([^\s:@/?#'\"`<>{}]{1,100}):([^\s@/?#'\"`<>]{1,200})@[\w.-]+")
_SHADOW = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}:\$(?:1|2[abxy]?|5|6|y|gy|7|sha1|md5)\$[./A-Za-z0-9$]{8,}:")

# A name, an assignment operator, then a value: "name = 'v'", "name: v", '"name": "v"', "NAME=v", "name := 'v'".
# An unquoted value runs to whitespace, a comma or a semicolon ("#" only after a space starts a comment).
_ASSIGN = re.compile(
    r"""(?P<name>[A-Za-z_][\w.-]*)["']?\]?\s*(?P<op>:=|=>|==|!=|=|:)\s*"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`\n]*`|(?:[^\s,;#"'{}\[\]()]|(?<=\S)#)+)"""
)
_NAME_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_PASSWORD_WORDS = frozenset({"password", "passwd", "pass", "pwd", "passphrase", "pw"})
_SECRET_WORDS = frozenset({"secret", "token", "apikey", "auth", "credential", "credentials", "dsn", "bearer", "secretkey",
                           "accesskey", "privatekey", "authtoken"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("signing", "key"),
                           ("encryption", "key"), ("session", "key"), ("master", "key"), ("client", "secret"),
                           ("key", "data"), ("account", "key"), ("connection", "string"), ("access", "token")})
_NOT_SECRET_LAST = frozenset({
    "file", "path", "dir", "url", "uri", "name", "type", "field", "env", "var", "prompt", "label", "hint", "regex",
    "re", "pattern", "len", "length", "size", "count", "max", "min", "id", "enabled", "required", "policy", "mode",
    "format", "header", "param", "endpoint", "expire", "expires", "expiry", "ttl", "timeout", "hash", "hasher",
    "hashers", "algorithm", "class", "kind", "reset", "confirm", "confirmation", "validator", "strength", "input",
    "widget", "help", "template", "prefix", "suffix", "source", "provider", "scope", "scopes", "method", "backend",
    "limit", "rounds", "salt", "version", "index", "pos", "start", "end", "type_", "cls", "key_name", "usage",
    "location", "store", "manager", "handler", "factory", "getter", "setter", "callback", "func", "fn", "attr",
})
_CONFIG_LANGS = frozenset({"ini", "yaml", "toml", "json", "text", "shell", "dockerfile", "make", "terraform", "xml"})
_PLACEHOLDER = re.compile(
    r"^(?:x+|\*+|\.+|-+|#+|<[^>]*>|\[[^\]]*\]|\{[^}]*\}|\$\{[^}]*\}|\$\(.*\)|\$[A-Za-z_]\w*|%\(?[\w.]*\)?s?|"
    r"\{\{.*\}\}|%[A-Za-z_]\w*%|@[A-Za-z_]\w*@|none|null|nil|true|false|undefined|empty|changeme|change[_-]?me|"
    r"password\d*|passw(?:or)?d|pass|secret|token|example|sample|dummy|test\w*|fake\w*|mock\w*|placeholder|todo|"
    r"redacted|hidden|foo|bar|baz|qux|foobar|admin|root|user(?:name)?|guest|default|your[\w-]*|my[\w-]*|"
    r"insert[\w-]*|enter[\w-]*|replace[\w-]*|some[\w-]*|secret[\w-]*|\w*example\w*|\w*here)$",
    re.IGNORECASE,
)
_CODE_VALUE = re.compile(r"[()\[\]{}<>\\\s]|^(?:self|this|os|env|process|config|settings|cfg|conf|request|args|kwargs)\.")


def shannon_entropy(s: str) -> float:
    """Bits per character of ``s`` (0 for an empty string)."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _unquote(value: str) -> tuple[str, bool]:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        return value[1:-1], True
    return value, False


def _char_classes(s: str) -> int:
    return sum(
        (any(c.islower() for c in s), any(c.isupper() for c in s), any(c.isdigit() for c in s),
         any(not c.isalnum() for c in s))
    )


def _looks_like_password(v: str) -> bool:
    """A literal a person would use as a password: 8+ characters of at least three kinds, or 12+ of two."""
    if _PLACEHOLDER.match(v) or _CODE_VALUE.search(v) or len(v) > 128:
        return False
    classes = _char_classes(v)
    return (len(v) >= 8 and classes >= 3) or (len(v) >= 12 and classes >= 2 and shannon_entropy(v) >= 3.0)


def _looks_like_token(v: str) -> bool:
    """A high-entropy literal: 16+ token characters, random-looking (hex 32+ chars, else 3.5+ bits per char)."""
    if len(v) < 16 or len(v) > 1024 or _PLACEHOLDER.match(v) or _CODE_VALUE.search(v):
        return False
    if not re.fullmatch(r"[A-Za-z0-9+/=_.~:!@#$%^&*|-]+", v):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", v):
        return len(v) >= 32 and shannon_entropy(v) >= 3.0
    if v.isalpha() or v.isdigit() or re.fullmatch(r"[a-z_.-]+|[A-Z_.-]+", v):
        return False  # a word or a constant name, not random
    return shannon_entropy(v) >= (3.5 if len(v) < 24 else 4.0)


def _name_kind(name: str) -> str | None:
    """``password`` / ``secret`` when a variable or key name says it holds one, else None."""
    parts = [p.lower() for p in _NAME_PARTS.findall(name.strip("\"'").rsplit(".", 1)[-1])]
    if not parts or parts[-1] in _NOT_SECRET_LAST:
        return None
    if any(p in _PASSWORD_WORDS for p in parts):
        return "password"
    if any(p in _SECRET_WORDS for p in parts) or any(pair in _SECRET_PAIRS for pair in zip(parts, parts[1:])):
        return "secret"
    return None


def _assignment_findings(line: str, config_like: bool) -> str | None:
    for m in _ASSIGN.finditer(line):
        name, op, raw = m.group("name"), m.group("op"), m.group("value")
        if op in ("==", "!="):
            continue  # a comparison, not an assignment
        value, quoted = _unquote(raw)
        if not quoted and not config_like:
            continue  # in code, an unquoted value is an expression (a variable, a call), not a literal
        kind = _name_kind(name)
        if kind == "password" and _looks_like_password(value):
            return "password_assignment"
        if kind is not None and _looks_like_token(value):
            return "secret_assignment"
    return None


def _url_password(line: str) -> bool:
    for m in _URL_PASSWORD.finditer(line):
        pw = m.group(2)
        if not _PLACEHOLDER.match(pw) and not re.search(r"[${}%<>*]", pw) and pw.lower() != m.group(1).lower():
            return True
    return False


def _b64_private_key(s: str) -> bool:
    try:
        head = base64.b64decode(s[:120] + "=" * (-len(s[:120]) % 4), validate=False)
    except (binascii.Error, ValueError):
        return False
    return b"PRIVATE KEY" in head


def _private_key_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """Line spans (0-based, inclusive) of private key blocks that hold key material (not a bare header string)."""
    spans = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _PEM_BEGIN.search(line)
        if m is None:
            i += 1
            continue
        rest = line[m.end():]
        if "\\n" in rest:  # a whole key in one string: "-----BEGIN ...-----\nMIIE...\n-----END ...-----\n"
            body = rest.replace("\\r", "").split("\\n")
            if any(_KEY_MATERIAL.fullmatch(b.strip()) for b in body[:4]):
                spans.append((i, i))
            i += 1
            continue
        j, material = i + 1, False
        while j < len(lines) and j - i < 200:
            s = lines[j].strip().strip("\"',")
            if _PEM_END.search(lines[j]):
                break
            if _KEY_MATERIAL.fullmatch(s):
                material = True
            elif s and not _HEADER_LINE.match(s):
                break  # not a key block (prose or code quoting the header)
            j += 1
        if material:
            end = j if j < len(lines) and _PEM_END.search(lines[j]) else j - 1
            spans.append((i, end))
            i = end + 1
        else:
            i += 1
    return spans


def scan_text(text: str, language: str = "text") -> list[SecretFinding]:
    """Every secret in ``text``, in line order. ``language`` (``retrieval.discovery.detect_language``) decides
    whether unquoted values count as literals: yes in config and text files, no in code."""
    lines = text.split("\n")
    out: list[SecretFinding] = []
    covered: set[int] = set()
    if "PRIVATE KEY" in text:
        for a, b in _private_key_blocks(lines):
            out.append(SecretFinding("private_key", a + 1, b + 1))
            covered.update(range(a, b + 1))
    config_like = language in _CONFIG_LANGS
    has_tokens = _TOKEN_PREFILTER.search(text) is not None
    has_b64_key = "LS0tLS1CRUdJTi" in text
    for i, full in enumerate(lines):
        if i in covered or not full.strip():
            continue
        line = full[:_MAX_LINE]
        kind = None
        if has_tokens:
            for k, rx in _TOKEN_RULES:
                if rx.search(line):
                    kind = k
                    break
        if kind is None and has_b64_key:
            for m in _B64_PEM.finditer(line):
                if _b64_private_key(m.group(0)):
                    kind = "private_key"
                    break
        if kind is None and "://" in line and "@" in line and _url_password(line):
            kind = "password_in_url"
        if kind is None and ":$" in line and _SHADOW.match(line):
            kind = "password_hash"
        if kind is None and ("=" in line or ":" in line):
            kind = _assignment_findings(line, config_like)
        if kind is not None:
            out.append(SecretFinding(kind, i + 1, i + 1))
    out.sort(key=lambda f: f.start_line)
    return out


def redact_lines(text: str, findings: list[SecretFinding]) -> str:
    """``text`` with every line of every finding replaced by a marker naming its kind (line numbers unchanged)."""
    if not findings:
        return text
    lines = text.split("\n")
    for f in findings:
        for n in range(f.start_line - 1, min(f.end_line, len(lines))):
            indent = lines[n][: len(lines[n]) - len(lines[n].lstrip())]
            lines[n] = f"{indent}[redacted by agro-mcp: {f.kind}]"
    return "\n".join(lines)
