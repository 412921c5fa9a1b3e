"""README.md: short, in the newcomer's order, and quoting only commands and messages that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SOURCES = ("agro_mcp", "retrieval", "reranker", "training")


def _source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for pkg in SOURCES for p in (ROOT / pkg).rglob("*.py"))


def test_readme_fits_in_12_kb_and_keeps_the_newcomers_order():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 12 * 1024
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == ["Two commands on a fresh machine", "Connect a client", "Your first search", "How it learns",
                        "Troubleshooting", "More"]


def test_every_agro_command_the_docs_quote_exists():
    from agro_mcp.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    quoted = {m for d in docs for m in re.findall(r"`agro ([a-z][a-z-]+)", d.read_text(encoding="utf-8"))}
    assert {"index", "search", "bootstrap", "loop", "feedback", "rollback"} <= quoted
    assert not quoted - set(sub.choices) - {"daemon", "console"}, "docs quote commands agro does not have"


def test_the_troubleshooting_messages_are_the_ones_the_code_prints():
    code, readme = _source_text(), README.read_text(encoding="utf-8")
    for fragment in (
        "No corpus is indexed yet. Index a repository first: agro index /path/to/repo",
        "Known corpora: ",
        "Index it with: agro index /path/to/repo --corpus ",
        "Several corpora are indexed (",
        "no reranker model: set AGRO_RERANKER_MODEL_PATH or train and promote one (agro bootstrap)",
        "failed to load reranker ",
        "cross-encoder path does not exist: ",
        "Cannot use PostgreSQL at ",
        "Check AGRO_DATABASE_URL,",
        "Too few training triplets: ",
        "Rebuild it: agro index ",
        "Invalid settings: ",
        "agro-mcp serving over stdio",
    ):
        assert fragment in code, f"no longer in the code: {fragment!r}"
        assert fragment in readme, f"not in the README: {fragment!r}"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"
