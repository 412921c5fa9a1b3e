"""The history miner on real git repositories made in tmp_path: which commits become questions, and which of
today's chunks answer them."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from retrieval.chunking import chunk_file
from retrieval.settings import IndexSettings
from training.learning.history import clean_message, is_test_path, mine_history, read_commits

SETTINGS = IndexSettings()


def chunker(path: str, text: str):
    return chunk_file(path, text, SETTINGS)


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.t = 1_600_000_000

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_DATE": f"@{getattr(self, 't', 0)} +0000",
               "GIT_COMMITTER_DATE": f"@{getattr(self, 't', 0)} +0000"}
        return subprocess.run(["git", "-C", str(self.root), "-c", "user.name=Dev", "-c", "user.email=dev@example.org",
                               *args], check=True, capture_output=True, text=True, env=env).stdout

    def commit(self, message: str, files: dict[str, str | None], author: str | None = None) -> None:
        for rel, text in files.items():
            p = self.root / rel
            if text is None:
                p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        self.git("add", "-A")
        self.t += 3600
        extra = ["--author", author] if author else []
        self.git("commit", "-q", "-m", message, *extra)

    def chunks(self, under: str = ""):
        base = self.root / under if under else self.root
        out = []
        for p in sorted(base.rglob("*")):
            if p.is_file() and ".git" not in p.relative_to(base).parts:
                rel = p.relative_to(base).as_posix()
                out += chunker(rel, p.read_text(encoding="utf-8"))
        return out


V1 = '''
import json


def parse_header(value):
    parts = value.split(";")
    return [p.strip() for p in parts]


def render_token(token):
    return json.dumps({"token": token})
'''

V2 = '''
import json


def parse_header(value):
    parts = value.split(";")
    return [p.strip().lower() for p in parts if p]


def render_token(token):
    return json.dumps({"token": token})
'''

V3 = '''
import json

TIMEOUT_SECONDS = 30


def helper_added_later(x):
    return x * 2


def parse_header(value):
    parts = value.split(";")
    return [p.strip().lower() for p in parts if p]


def render_token(token):
    return json.dumps({"token": token, "ttl": TIMEOUT_SECONDS})
'''


def make_history(root: Path) -> Repo:
    repo = Repo(root)
    repo.commit("Initial import of the header tools", {"pkg/headers.py": V1, "README.md": "# demo\n"})
    repo.commit("Skip empty header parts and lower-case them\n\nEmpty parts broke the cookie jar.\n\n"
                "Co-authored-by: Someone <s@example.org>", {"pkg/headers.py": V2})
    repo.commit("Bump version to 1.2.0", {"pkg/version.py": "VERSION = '1.2.0'\n"})
    repo.commit("Update the README with usage examples", {"README.md": "# demo\n\nUse it well.\n"})
    repo.commit("Update pre-commit hooks", {"pkg/version.py": "VERSION = '1.2.0'\n\n"},
                author="pre-commit-ci[bot] <bot@example.org>")
    repo.commit("Tokens carry their time to live (#42)", {"pkg/headers.py": V3})
    return repo


def test_commit_messages_become_questions_answered_by_todays_chunks_of_the_changed_functions(tmp_path):
    repo = make_history(tmp_path / "repo")
    today = repo.chunks()
    qs, report = mine_history(repo.root, today, chunker, max_questions=50, max_commits=100)
    by_query = {q.query: q for q in qs}
    # newest first; trailers and the PR reference are gone
    assert [q.query for q in qs] == ["Tokens carry their time to live",
                                     "Skip empty header parts and lower-case them\n\nEmpty parts broke the cookie jar.",
                                     "Initial import of the header tools"]
    assert qs[0].ts > qs[1].ts > qs[2].ts
    # the function changed two commits ago is found by its symbol although today it sits lower in the file
    lower = by_query["Skip empty header parts and lower-case them\n\nEmpty parts broke the cookie jar."]
    assert [(c.symbol, c.path) for c in lower.positives] == [("parse_header", "pkg/headers.py")]
    assert lower.positives[0].start_line > 5 and "lower()" in lower.positives[0].text
    # a module-level constant is found by its text; the new helper and the changed function by their symbols
    ttl = {c.symbol for c in by_query["Tokens carry their time to live"].positives}
    assert {"render_token", "helper_added_later", None} <= ttl
    assert report.skipped == {"version bump": 1, "docs only": 1, "bot": 1}
    assert report.scanned == 6 and report.mined == 3


def test_a_function_deleted_since_gives_no_answer_and_a_file_renamed_since_answers_by_its_name_of_today(tmp_path):
    repo = Repo(tmp_path / "repo")
    repo.commit("Add the retry policy", {"lib/retry.py": "def backoff(n):\n    return 2 ** n\n\n\n"
                                         "def jitter(n):\n    return n % 3\n"})
    repo.commit("Make jitter depend on the attempt number squared",
                {"lib/retry.py": "def backoff(n):\n    return 2 ** n\n\n\ndef jitter(n):\n    return (n * n) % 3\n"})
    repo.commit("Remove jitter, nobody used it", {"lib/retry.py": "def backoff(n):\n    return 2 ** n\n"})
    repo.commit("Write the old helpers",
                {"lib/old.py": "def legacy(n):\n    return n\n\n\ndef spare(n):\n    return n\n"})
    repo.commit("Legacy helpers count from one", {"lib/old.py": "def legacy(n):\n    return n + 1\n\n\n"
                                                  "def spare(n):\n    return n\n"})
    repo.git("mv", "lib/old.py", "lib/middle.py")
    repo.commit("Move the old helpers aside", {})
    (repo.root / "src" / "lib").mkdir(parents=True)
    repo.git("mv", "lib/middle.py", "src/lib/policy.py")
    repo.commit("Move the helpers into the src layout and drop the spare one",
                {"src/lib/policy.py": "def legacy(n):\n    return n + 1\n"})
    repo.commit("Backoff is capped at one minute of waiting",
                {"lib/retry.py": "def backoff(n):\n    return min(2 ** n, 60)\n"})
    qs, report = mine_history(repo.root, repo.chunks(), chunker, max_questions=50, max_commits=100)
    found = {q.query: [c.doc_id for c in q.positives] for q in qs}
    assert found["Backoff is capped at one minute of waiting"] == ["lib/retry.py:1-2"]
    assert "Make jitter depend on the attempt number squared" not in found  # jitter is gone today
    # lib/old.py is src/lib/policy.py today (two renames, the second with an edit): older commits answer there
    assert found["Legacy helpers count from one"] == ["src/lib/policy.py:1-2"]
    assert found["Write the old helpers"] == ["src/lib/policy.py:1-2"]  # spare() is gone, legacy() is not
    assert report.skipped["changed code no longer exists"] == 1
    assert "changed files not indexed today" not in report.skipped
    assert report.skipped["no added or modified file"] == 1  # the pure rename


def test_test_files_are_answers_only_when_the_commit_changed_nothing_else(tmp_path):
    repo = Repo(tmp_path / "repo")
    repo.commit("Add the slug helper and its test", {"app/slug.py": "def slugify(s):\n    return s.lower()\n",
                                                     "tests/test_slug.py": "def test_slugify():\n    assert 1\n"})
    repo.commit("Strengthen the slugify assertion in the tests",
                {"tests/test_slug.py": "def test_slugify():\n    assert slugify('A') == 'a'\n"})
    qs, _ = mine_history(repo.root, repo.chunks(), chunker, max_questions=50, max_commits=100)
    found = {q.query: [c.path for c in q.positives] for q in qs}
    assert found["Add the slug helper and its test"] == ["app/slug.py"]
    assert found["Strengthen the slugify assertion in the tests"] == ["tests/test_slug.py"]
    assert is_test_path("tests/test_x.py") and is_test_path("pkg/testing/util.py") and is_test_path("conftest.py")
    assert not is_test_path("pkg/contest.py") and not is_test_path("attestation/core.py")


def test_a_corpus_below_the_top_of_the_work_tree_reads_only_its_files_with_paths_relative_to_it(tmp_path):
    repo = Repo(tmp_path / "repo")
    repo.commit("Add the server entry point", {"src/server.py": "def serve(port):\n    return port\n",
                                               "tools/build.py": "def build(target):\n    return target\n"})
    repo.commit("The build script accepts several targets",
                {"tools/build.py": "def build(*targets):\n    return list(targets)\n"})
    qs, report = mine_history(repo.root / "src", repo.chunks("src"), chunker, max_questions=50, max_commits=100)
    assert [(q.query, [c.doc_id for c in q.positives]) for q in qs] == [("Add the server entry point",
                                                                          ["server.py:1-2"])]
    assert report.scanned == 1


def test_a_folder_without_history_says_why_and_formatting_only_commits_are_skipped(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("def f():\n    return 1\n")
    qs, report = mine_history(plain, chunker("a.py", "def f():\n    return 1\n"), chunker, max_questions=5,
                              max_commits=5)
    assert qs == [] and not report.git and "not in a git work tree" in report.summary()

    repo = Repo(tmp_path / "repo")
    repo.commit("Add compute", {"m.py": "def compute(a, b):\n    return a+b\n"})
    repo.commit("Tidy up compute", {"m.py": "def compute(a, b):\n    return a + b\n"})  # whitespace only
    qs, report = mine_history(repo.root, repo.chunks(), chunker, max_questions=5, max_commits=5)
    assert [q.query for q in qs] == ["Add compute"] and report.skipped == {"formatting": 1}


def test_read_commits_reports_changed_lines_and_skips_merges(tmp_path):
    repo = Repo(tmp_path / "repo")
    repo.commit("one", {"a.py": "x = 1\ny = 2\nz = 3\n"})
    repo.git("checkout", "-q", "-b", "side")
    repo.commit("two", {"a.py": "x = 1\ny = 20\nz = 3\n"})
    repo.git("checkout", "-q", "main")
    repo.commit("three", {"b.py": "w = 1\n"})
    repo.git("merge", "-q", "--no-ff", "-m", "merge side", "side")
    commits = list(read_commits(repo.root, max_commits=10))
    assert sorted(c.subject for c in commits) == ["one", "three", "two"]
    two = next(c for c in commits if c.subject == "two")
    assert [(f.path, f.new_lines, f.added, f.removed) for f in two.files] == [("a.py", [2], ["y = 20"], ["y = 2"])]


def test_clean_message_drops_trailers_references_and_extra_blank_lines():
    msg = "Fix the pool (#12)\n\n\n\nIt leaked.\n\nSigned-off-by: A <a@b>\nCo-authored-by: B <b@c>\n"
    assert clean_message(msg) == "Fix the pool\n\nIt leaked."
    assert clean_message("x" * 50, max_chars=10) == "x" * 10
