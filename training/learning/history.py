"""The history miner: a repository's commits as training questions for the reranker.

Each commit's message (subject and body, trailers and ``(#N)`` removed) is a question a user could have asked ("where
do I change X"); its answers are the chunks of **today's** index that hold the lines it changed. A changed line is
located in the file as it was at that commit, chunked with the index's own rules; the chunk's symbol (and path)
then names today's chunk (``Client.send`` in ``httpx/_client.py``). Module-level lines (no symbol) are found by
their text in today's chunks of the same file. A chunk that no longer exists is dropped. A file renamed since (git's
rename detection, newer commits first) is looked up under its name of today: a move to ``src/`` keeps the years of
history before it.

Only the local ``.git`` is read: git runs with every transport forbidden (``protocol.allow=never``, which also stops
a partial clone's lazy fetch), and with external diff drivers and text conversions off (a repository's own config
must not run commands). Merges, bots, version bumps, formatting-only, docs-only and very broad commits are skipped,
each with a counted reason.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.types import located_text

__all__ = [
    "Commit",
    "FileChange",
    "HistoryQuestion",
    "HistoryReport",
    "clean_message",
    "is_git_work_tree",
    "is_test_path",
    "map_commit",
    "mine_history",
    "read_commits",
    "skip_reason",
]

logger = logging.getLogger(__name__)

_GIT_SAFE = ["-c", "protocol.allow=never", "-c", "core.fsmonitor=false", "-c", "core.quotePath=false",
             "-c", "diff.noprefix=false", "-c", "log.showSignature=false"]
_REC, _FLD, _END = "\x01", "\x02", "\x03"

_BOT = re.compile(r"\[bot\]|\bbot@|dependabot|renovate|pre-commit-ci|github-actions|greenkeeper|snyk|allcontributors"
                  r"|imgbot|weblate", re.I)
_VERSION = re.compile(
    r"^\s*(?:release|released|releasing|prepare(?:s|d)? (?:for )?release|version\b|bump\b|bumped\b|bumps\b"
    r"|v?\d+(?:\.\d+)+\w*\s*$|update (?:the )?changelog|changelog\b|(?:set|update) version)", re.I)
_FORMAT = re.compile(
    r"\b(?:reformat\w*|formatting|format(?:ted)? (?:with|using|by|code)|black|isort|autopep8|yapf|prettier|ruff"
    r"(?: format)?|flake8|lint(?:ing)?|pre-commit|whitespace|trailing spaces?|typos?|spelling|codespell)\b", re.I)
_TRAILER = re.compile(r"^\s*(?:co-authored-by|signed-off-by|reviewed-by|acked-by|tested-by|reported-by|suggested-by"
                      r"|helped-by|cc|change-id|reviewed-on|approved-by)\s*:.*$", re.I | re.M)
_PR_REF = re.compile(r"\s*\((?:#\d+(?:,\s*)?)+\)")
_DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc", ".rdoc")
_DOC_DIRS = ("docs/", "doc/", "documentation/", "changelog.d/", "changes/", "news/")
_DOC_NAMES = ("changelog", "changes", "history", "news", "readme", "authors", "license")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
_IMPORT = re.compile(r"(?:from\s+\S+\s+)?import\s|#include\b|use\s+\w|require\(")
_TEST_WORD = re.compile(r"(?:^|[/_. -])(?:tests?|testing)(?:[/_. -]|$)", re.I)


@dataclass(slots=True)
class FileChange:
    """One file a commit added or modified: its path after the commit and the changed lines on that side."""

    path: str
    new_lines: list[int] = field(default_factory=list)  # 1-based; a pure deletion is anchored on both sides
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Commit:
    sha: str
    ts: int
    author: str
    message: str  # the raw message (subject + body)
    files: list[FileChange] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path) this commit renamed

    @property
    def subject(self) -> str:
        return self.message.strip().split("\n", 1)[0].strip()


@dataclass(slots=True)
class HistoryQuestion:
    """A mined commit: its cleaned message, its time, and today's chunks that hold its changed lines."""

    sha: str
    ts: int
    query: str
    positives: list[Any]  # today's chunks


@dataclass(slots=True)
class HistoryReport:
    """What the miner read and why commits gave no question (shown by ``agro bootstrap``)."""

    git: bool = True
    reason: str | None = None  # why nothing at all was read (not a git work tree, git missing, ...)
    scanned: int = 0
    mined: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        if not self.git:
            return f"history: not mined ({self.reason})"
        why = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common())
        return f"history: {self.mined} questions from {self.scanned} commits" + (f" (skipped: {why})" if why else "")

    def to_dict(self) -> dict[str, Any]:
        return {"git": self.git, "reason": self.reason, "scanned": self.scanned, "mined": self.mined,
                "skipped": dict(self.skipped)}


# ------------------------------------------------------------------------------------------------- git


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_NO_LAZY_FETCH="1", LC_ALL="C")
    return env


def _git(root: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *_GIT_SAFE, "-C", str(root), *args], env=_git_env(), capture_output=True,
                          check=False, **kw)


def is_git_work_tree(root: Path) -> tuple[bool, str]:
    """(True, prefix) when ``root`` is in a git work tree with at least one commit (``prefix``: the path of
    ``root`` inside it, ``""`` at its top, else ending in ``/``), else (False, why)."""
    root = Path(root)
    if not root.is_dir():
        return False, f"{root} is not a folder"
    try:
        r = _git(root, "rev-parse", "--is-inside-work-tree", "--show-prefix", text=True, timeout=30)
        head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD", text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"git could not be run ({exc})"
    lines = r.stdout.split("\n")
    if r.returncode != 0 or not lines or lines[0].strip() != "true":
        return False, f"{root} is not in a git work tree"
    if head.returncode != 0:
        return False, f"{root} has no commits yet"
    return True, lines[1].strip() if len(lines) > 1 else ""


def read_commits(root: Path, *, max_commits: int, since_days: int = 0, prefix: str = "") -> Iterator[Commit]:
    """Non-merge commits of ``HEAD``, newest first, with their changed lines (``git log -p -U0``, renames followed).

    Args:
        max_commits: walk at most this many commits.
        since_days: only commits younger than this many days (0 = any age).
        prefix: ``root``'s path inside the work tree (:func:`is_git_work_tree`): only files under it are read,
            and their paths are given relative to ``root``.
    """
    args = ["log", "--no-merges", "--no-color", "--no-ext-diff", "--no-textconv", "-M", "-p", "-U0",
            "--diff-filter=AMR", "--src-prefix=a/", "--dst-prefix=b/", f"-n{int(max_commits)}",
            f"--format={_REC}%H{_FLD}%ct{_FLD}%an <%ae>{_FLD}%B{_END}"]
    if since_days > 0:
        args.append(f"--since={int(since_days)}.days.ago")
    proc = subprocess.Popen(["git", *_GIT_SAFE, "-C", str(root), *args, "--", "."], env=_git_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        buf: list[str] = []
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if line.startswith(_REC) and buf:
                yield _parse_record("".join(buf), prefix)
                buf = []
            buf.append(line)
        if buf:
            yield _parse_record("".join(buf), prefix)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _parse_record(rec: str, prefix: str = "") -> Commit:
    head, _, diff = rec[1:].partition(_END)
    sha, ts, author, message = (head.split(_FLD, 3) + ["", "", ""])[:4]
    commit = Commit(sha.strip(), int(ts or 0), author, message.strip("\n"))
    cur: FileChange | None = None
    moved_from: str | None = None
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            cur, moved_from = None, None
        elif cur is None and line.startswith("rename from "):
            moved_from = line[len("rename from "):]
        elif cur is None and line.startswith("rename to ") and moved_from is not None:
            new = line[len("rename to "):]
            if moved_from.startswith(prefix) and new.startswith(prefix) and '"' not in moved_from + new:
                commit.renames.append((moved_from[len(prefix):], new[len(prefix):]))
            moved_from = None
        elif line.startswith("+++ "):
            target = line[4:].rstrip("\t")
            target = target[2:] if target.startswith("b/") else target
            cur = None if target == "/dev/null" or not target.startswith(prefix) else FileChange(target[len(prefix):])
            if cur is not None:
                commit.files.append(cur)
        elif cur is None:
            continue
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            if m:
                start, count = int(m.group(1)), int(m.group(2) if m.group(2) is not None else 1)
                if count == 0:  # a pure deletion after line `start`: anchor on the lines around it
                    cur.new_lines.extend(x for x in (start, start + 1) if x >= 1)
                else:
                    cur.new_lines.extend(range(start, start + count))
        elif line.startswith("+"):
            cur.added.append(line[1:])
        elif line.startswith("-") and not line.startswith("---"):
            cur.removed.append(line[1:])
    return commit


class _Blobs:
    """``git cat-file --batch``: the text of ``sha:path``, one long-lived process for a mining run."""

    def __init__(self, root: Path) -> None:
        self._p = subprocess.Popen(["git", *_GIT_SAFE, "-C", str(root), "cat-file", "--batch"], env=_git_env(),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, sha: str, path: str, limit: int = 2_000_000) -> str | None:
        """The text of ``path`` (relative to the work tree's top) in commit ``sha``, or None (missing, binary)."""
        assert self._p.stdin is not None and self._p.stdout is not None
        self._p.stdin.write(f"{sha}:{path}\n".encode("utf-8", "surrogateescape"))
        self._p.stdin.flush()
        header = self._p.stdout.readline().decode("utf-8", "replace").split()
        if len(header) != 3 or header[1] != "blob":
            return None
        data = self._p.stdout.read(int(header[2]) + 1)[:-1]
        if len(data) > limit or b"\x00" in data[:8000]:
            return None
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        for stream in (self._p.stdin, self._p.stdout):
            if stream is not None:
                stream.close()
        self._p.kill()
        self._p.wait()


# ------------------------------------------------------------------------------------------------- rules


def clean_message(message: str, max_chars: int = 1000) -> str:
    """Subject and body with trailers (``Co-authored-by:``...), ``(#N)`` references and extra blank lines removed."""
    text = _TRAILER.sub("", message)
    text = _PR_REF.sub("", text)
    lines = [ln.rstrip() for ln in text.strip().split("\n")]
    out: list[str] = []
    for ln in lines:
        if ln == "" and (not out or out[-1] == ""):
            continue
        out.append(ln)
    return "\n".join(out).strip()[:max_chars].strip()


def is_test_path(path: str) -> bool:
    """A path with a ``test``/``tests``/``testing`` word (split on ``/ _ . -`` and space), or a ``conftest.py``."""
    return bool(_TEST_WORD.search(path)) or path.rsplit("/", 1)[-1] == "conftest.py"


def _is_doc_path(path: str) -> bool:
    low = path.lower()
    name = low.rsplit("/", 1)[-1]
    return (low.endswith(_DOC_SUFFIXES) or low.startswith(_DOC_DIRS) or "/docs/" in low
            or ("." not in name and name in _DOC_NAMES))


def _squash(lines: Iterable[str]) -> list[str]:
    return sorted(s for s in ("".join(ln.split()) for ln in lines) if s)


def skip_reason(commit: Commit, *, max_files: int, min_words: int = 2) -> str | None:
    """Why a commit gives no question (``None``: it may give one). Reasons are short counted labels."""
    if _BOT.search(commit.author):
        return "bot"
    subject = commit.subject
    if _VERSION.search(subject):
        return "version bump"
    if _FORMAT.search(subject):
        return "formatting"
    if not commit.files:
        return "no added or modified file"
    code = [f for f in commit.files if not _is_doc_path(f.path)]
    if not code:
        return "docs only"
    if len(commit.files) > max_files:
        return "too broad"
    if all(_squash(f.added) == _squash(f.removed) for f in code):
        return "formatting"
    if len(clean_message(commit.message).split()) < min_words:
        return "message too short"
    return None


# ------------------------------------------------------------------------------------------------- mapping


def map_commit(
    commit: Commit,
    file_text: Callable[[str], str | None],
    today: Mapping[str, Sequence[Any]],
    chunker: Callable[[str, str], Sequence[Any]],
    *,
    max_positives: int = 8,
) -> list[Any]:
    """Today's chunks that hold the commit's changed lines.

    Args:
        file_text: path -> the file's text as the commit left it (None when unreadable).
        today: path -> today's chunks of that file (files no longer indexed give nothing).
        chunker: ``(path, text) -> chunks`` with the index's rules, for the file at the commit.
        max_positives: keep at most this many, the chunks with the most changed lines first.

    Returns:
        Chunks of ``today`` (each at most once). When the commit touched non-test files, chunks of test files are
        left out: a message describes the change, its tests follow it.
    """
    weight: Counter = Counter()
    order: dict[str, Any] = {}
    for fc in commit.files:
        current = today.get(fc.path)
        if not current or not fc.new_lines:
            continue
        text = file_text(fc.path)
        if text is None:
            continue
        then = chunker(fc.path, text)
        by_symbol: dict[str, list[Any]] = {}
        for c in current:
            if c.symbol:
                by_symbol.setdefault(c.symbol, []).append(c)
        loose: list[int] = []
        for line in fc.new_lines:
            owner = next((c for c in then if c.start_line <= line <= c.end_line), None)
            if owner is not None and owner.symbol and owner.symbol in by_symbol:
                for c in by_symbol[owner.symbol]:
                    weight[c.doc_id] += 1
                    order.setdefault(c.doc_id, c)
            else:
                loose.append(line)
        if loose:  # module-level lines, or a symbol gone today: find the lines' text in today's chunks of the file
            lines = text.split("\n")
            wanted = {lines[i - 1].strip() for i in loose if 0 < i <= len(lines)}
            wanted = {w for w in wanted if len(w) >= 8 and not _IMPORT.match(w)}
            for c in current:
                got = sum(1 for ln in c.text.split("\n") if ln.strip() in wanted)
                if got:
                    weight[c.doc_id] += got
                    order.setdefault(c.doc_id, c)
    chunks = [order[d] for d, _ in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))]
    if any(not is_test_path(c.path) for c in chunks):
        chunks = [c for c in chunks if not is_test_path(c.path)]
    return chunks[:max_positives]


def mine_history(
    root: Path,
    chunks: Sequence[Any],
    chunker: Callable[[str, str], Sequence[Any]],
    *,
    max_questions: int,
    max_commits: int,
    since_days: int = 0,
    max_files: int = 10,
    max_positives: int = 8,
    max_query_chars: int = 1000,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[HistoryQuestion], HistoryReport]:
    """Walk the history of the work tree at ``root`` (newest first) into at most ``max_questions`` questions.

    Args:
        chunks: today's index of the corpus rooted at ``root`` (paths relative to it).
        chunker: ``(path, text) -> chunks`` with the index's chunking rules.
        max_commits: commits walked at most (merges excluded); ``since_days`` > 0 also bounds their age.

    Returns:
        The questions, newest first, and a report of what was read and skipped.
    """
    report = HistoryReport()
    ok, prefix = is_git_work_tree(root)
    if not ok:
        report.git, report.reason = False, prefix
        return [], report
    today: dict[str, list[Any]] = {}
    for c in chunks:
        today.setdefault(c.path, []).append(c)
    out: list[HistoryQuestion] = []
    seen: set[str] = set()
    moved: dict[str, str] = {}  # a path in older commits -> its name today (renames seen in newer commits)
    blobs = _Blobs(root)
    try:
        for commit in read_commits(root, max_commits=max_commits, since_days=since_days, prefix=prefix):
            if cancelled is not None and cancelled():
                break
            report.scanned += 1
            if progress is not None:
                progress(report.scanned, max_commits)
            then: dict[str, str] = {}  # today's name -> the name at this commit, for the files it renamed since
            if moved:
                files = [FileChange(moved.get(f.path, f.path), f.new_lines, f.added, f.removed) for f in commit.files]
                then = {n.path: f.path for n, f in zip(files, commit.files) if n.path != f.path}
                if then:
                    commit = Commit(commit.sha, commit.ts, commit.author, commit.message, files, commit.renames)
            for old, new in commit.renames:  # older commits know the file by its old name
                moved[old] = moved.get(new, new)
            reason = skip_reason(commit, max_files=max_files)
            if reason is None and not any(f.path in today for f in commit.files):
                reason = "changed files not indexed today"
            query = clean_message(commit.message, max_query_chars)
            key = " ".join(query.lower().split())
            if reason is None and key in seen:
                reason = "same message as a newer commit"
            positives: list[Any] = []
            if reason is None:
                positives = map_commit(commit, lambda p, s=commit.sha, n=then: blobs.read(s, prefix + n.get(p, p)),
                                       today, chunker, max_positives=max_positives)
                if not positives:
                    reason = "changed code no longer exists"
            if reason is not None:
                report.skipped[reason] += 1
                continue
            seen.add(key)
            out.append(HistoryQuestion(commit.sha, commit.ts, query, positives))
            if len(out) >= max_questions:
                break
    finally:
        blobs.close()
    report.mined = len(out)
    logger.info("%s in %s", report.summary(), root)
    return out, report


def history_triplets(
    questions: Sequence[HistoryQuestion],
    rank_fn: Callable[[str, str], Sequence[Any]] | None,
    corpus: str,
    *,
    negatives_per_query: int = 4,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[Any]:
    """One triplet per (question, positive). Negatives: today's ranking's hits above the best-placed positive (not
    in a positive's file), then its highest other hits, up to ``negatives_per_query``."""
    from training.learning.miners import Triplet

    out = []
    for i, q in enumerate(questions, 1):
        if cancelled is not None and cancelled():
            break
        pos_files = {c.path for c in q.positives}
        pos_ids = {c.doc_id for c in q.positives}
        hits = [h.chunk for h in rank_fn(q.query, corpus)] if rank_fn is not None else []
        first = next((i for i, c in enumerate(hits) if c.doc_id in pos_ids), len(hits))
        above = [c for c in hits[:first] if c.path not in pos_files]
        below = [c for c in hits[first:] if c.path not in pos_files]
        negs = (above + below)[:negatives_per_query]
        for c in q.positives:
            out.append(Triplet(q.query, located_text(c.path, c.symbol, c.text), c.doc_id,
                               [located_text(n.path, n.symbol, n.text) for n in negs], [n.doc_id for n in negs],
                               "git_history", corpus))
        if progress is not None:
            progress(i, len(questions))
    return out
