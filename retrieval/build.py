"""The one index build flow, for every storage backend: check reach, plan, reuse, embed; the backend writes.

1. **Reach** (``retrieval.reach``): the folder must be one this face may index, and the corpus's root is fixed.
2. **Plan** (:func:`plan_files`): discover the files, compare them with the previous generation (size and mtime,
   then content hash), scan each new or changed file for secrets (``retrieval.secrets``) and chunk it.
3. **Reuse**: chunks whose text the corpus already holds keep their vectors (the backend looks them up).
4. **Embed** the rest, each distinct text once.
5. **Write and publish** (:meth:`GenerationStore.write`): the backend's own part, atomic for readers.

A backend provides a :class:`GenerationStore`; nothing else here knows how a generation is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.chunking import chunk_file
from retrieval.discovery import DiscoveryResult, detect_language, discover_files, read_text
from retrieval.errors import IndexVersionError, NoIndexError
from retrieval.reach import Face, ReachPolicy
from retrieval.secrets import SCANNER_VERSION, redact_lines, scan_text
from retrieval.settings import IndexSettings, RetrievalSettings
from retrieval.tokenize import code_tokens
from retrieval.types import Chunk, located_text

__all__ = [
    "INDEX_FORMAT",
    "BuildJob",
    "FilePlan",
    "GenerationStore",
    "IndexSummary",
    "build_generation",
    "chunk_params",
    "document_text",
    "document_tokens",
    "new_generation_id",
    "now_iso",
    "plan_files",
    "sha256_file",
    "versions",
]

logger = logging.getLogger(__name__)

INDEX_FORMAT = 2
Progress = Callable[[str, int, int], None]


def document_text(chunk: Chunk) -> str:
    """What the bi-encoder sees for a chunk: its location and symbol, then its code."""
    return located_text(chunk.path, chunk.symbol, chunk.text)


def document_tokens(chunk: Chunk) -> list[str]:
    """What BM25 sees for a chunk: path and symbol tokens, then the code's tokens."""
    return code_tokens(chunk.path.replace("/", " ")) + code_tokens(chunk.symbol or "") + code_tokens(chunk.text)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_generation_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chunk_params(s: IndexSettings) -> dict:
    """Settings that change which chunks exist (and what they may hold); a change forces a full rebuild."""
    from retrieval import tokenize

    return {
        "max_chunk_lines": s.max_chunk_lines,
        "window_lines": s.window_lines,
        "window_overlap": s.window_overlap,
        "tokenizer": str(getattr(tokenize, "TOKENIZER_VERSION", "1")),
        "secrets": f"{s.secrets}/{SCANNER_VERSION}",
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("agro-mcp", "numpy", "scipy", "sentence-transformers", "torch", "tree-sitter"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


# --------------------------------------------------------------------------------------------------------
@dataclass
class IndexSummary:
    corpus: str
    generation: str
    root: str
    files: int
    chunks: int
    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    embedded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    non_utf8_files: int = 0
    published: bool = True
    elapsed_sec: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    secrets: dict[str, int] = field(default_factory=dict)  # findings by kind in files read by this build
    redacted_files: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FilePlan:
    """What an incremental build does to each discovered file, before anything is embedded or written."""

    files: dict[str, dict]  # path -> sha256, size, mtime_ns, language, non_utf8 (discovery order)
    new_chunks: dict[str, list[Chunk]]  # added and changed files -> their chunks; unchanged files are absent
    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    non_utf8: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    deleted_paths: list[str] = field(default_factory=list)
    excluded: dict[str, dict] = field(default_factory=dict)  # path -> size, mtime_ns, reason (secret content)
    secrets: dict[str, int] = field(default_factory=dict)
    redacted: int = 0


def _skip(plan: FilePlan, reason: str) -> None:
    plan.skipped[reason] = plan.skipped.get(reason, 0) + 1


def plan_files(
    disc: DiscoveryResult,
    prev_files: dict[str, dict],
    index_settings: IndexSettings,
    progress: Progress | None = None,
    prev_excluded: dict[str, dict] | None = None,
) -> FilePlan:
    """Compare discovered files with the previous build's records (size + mtime, then content hash), scan the
    added and changed ones for secrets, and chunk them. Shared by every storage backend, so they chunk identically.

    A file with a secret is skipped (reason ``secret_content``) or, with ``secrets="redact"``, chunked with the
    secret's lines replaced. Skipped files are remembered in ``excluded`` (size and mtime, never content), so an
    unchanged one is neither read again nor reported stale."""
    plan = FilePlan(files={}, new_chunks={}, skipped=dict(disc.skipped))
    prev_excluded = prev_excluded or {}
    total = len(disc.files)
    for i, fe in enumerate(disc.files):
        if progress and (i % 200 == 0 or i == total - 1):
            progress("chunk", i + 1, total)
        ex = prev_excluded.get(fe.path)
        if ex is not None and ex["size"] == fe.size and ex["mtime_ns"] == fe.mtime_ns:
            plan.excluded[fe.path] = ex
            _skip(plan, ex["reason"])
            continue
        rec = prev_files.get(fe.path)
        if rec is not None and rec["size"] == fe.size and rec["mtime_ns"] == fe.mtime_ns:
            sha = rec["sha256"]
        else:
            try:
                sha = sha256_file(fe.abs_path)
            except OSError:
                _skip(plan, "unreadable")
                continue
        if rec is not None and rec["sha256"] == sha:
            plan.unchanged += 1
            lang = rec["language"]
            bad = bool(rec.get("non_utf8", False))
            redacted = rec.get("redacted")
        else:
            try:
                text, utf8_ok = read_text(fe.abs_path)
                bad = not utf8_ok
            except OSError:
                _skip(plan, "unreadable")
                continue
            lang = detect_language(fe.path)
            redacted = None
            findings = scan_text(text, lang)
            if findings:
                for f in findings:
                    plan.secrets[f.kind] = plan.secrets.get(f.kind, 0) + 1
                if index_settings.secrets != "redact":
                    plan.excluded[fe.path] = {"size": fe.size, "mtime_ns": fe.mtime_ns, "reason": "secret_content"}
                    _skip(plan, "secret_content")
                    continue
                text = redact_lines(text, findings)
                redacted = sorted({f.kind for f in findings})
                plan.redacted += 1
            plan.new_chunks[fe.path] = chunk_file(fe.path, text, index_settings)
            if rec is None:
                plan.added += 1
            else:
                plan.changed += 1
        plan.non_utf8 += int(bad)
        plan.files[fe.path] = {
            "sha256": sha, "size": fe.size, "mtime_ns": fe.mtime_ns, "language": lang, "non_utf8": bool(bad),
        }
        if redacted:
            plan.files[fe.path]["redacted"] = redacted
    plan.deleted_paths = [p for p in prev_files if p not in plan.files]
    plan.deleted = len(plan.deleted_paths)
    return plan


# --------------------------------------------------------------------------------------------------------
@dataclass
class BuildJob:
    """Everything a backend needs to write and publish one generation."""

    corpus: str
    root: Path
    generation_id: str
    prev: Any  # the previous generation (None for a full build)
    plan: FilePlan
    new_chunks: list[Chunk]  # in plan order
    new_vectors: np.ndarray  # one row per new chunk
    manifest: dict  # the fields every backend writes; the backend adds its own and n_chunks
    index_settings: IndexSettings
    retrieval_settings: RetrievalSettings
    dim: int
    purge_older: bool = False  # the older generations were scanned by other rules: keep none of them


class GenerationStore(Protocol):
    """A storage backend's part of a build."""

    def lock(self, corpus: str) -> AbstractContextManager[None]:
        """Held for the whole build: one writer per corpus (raises IndexLockedError when taken)."""

    def before_build(self, corpus: str, index_settings: IndexSettings) -> None:
        """Housekeeping under the lock (temp folders of killed builds, old generations)."""

    def current_manifest(self, corpus: str) -> dict | None:
        """The published generation's manifest, whatever its format, or None."""

    def current_generation_id(self, corpus: str) -> str | None: ...

    def load_current(self, corpus: str) -> Any: ...

    def reuse_vectors(self, corpus: str, prev: Any, hashes: list[str]) -> dict[str, np.ndarray]:
        """Vectors the corpus already holds for these chunk hashes."""

    def write(self, job: BuildJob) -> int:
        """Write the generation and publish it atomically; return its chunk count."""


def _resolve_dir(root: Path) -> Path:
    root = Path(root).expanduser()
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as exc:
        raise FileNotFoundError(f"Cannot index {str(root)!r}: {exc.strerror or exc}.") from None
    if not exists:
        raise FileNotFoundError(f"Cannot index {str(root)!r}: no such directory. Pass the path of a repository.")
    if not is_dir:
        raise NotADirectoryError(f"Cannot index {str(root)!r}: it is a file, not a directory. Pass the repository folder.")
    return root


def build_generation(
    store: GenerationStore,
    root: Path,
    corpus: str,
    index_settings: IndexSettings,
    retrieval_settings: RetrievalSettings,
    embedder,
    progress: Progress | None = None,
    full: bool = False,
    previous=None,
    *,
    face: Face = "cli",
    root_change: bool = False,
    reach: ReachPolicy | None = None,
) -> IndexSummary:
    """Index ``root`` as ``corpus`` in ``store``: only added and changed files are chunked and embedded.

    Publishes a new generation atomically, or none when nothing changed. ``progress(stage, done, total)``.
    ``previous`` is the published generation when the caller already holds it in memory (a running server):
    it is used only if it is still the current one. ``face`` says who asks (``retrieval.reach``).

    Raises:
        FileNotFoundError / NotADirectoryError: bad root.
        ReachError / RootChangeError: a folder this face may not index, or a corpus that lives elsewhere.
        IndexLockedError: another process is writing this corpus.
    """
    t0 = time.perf_counter()
    root = _resolve_dir(root)
    reach = reach or ReachPolicy.from_settings(index_settings)
    timings: dict[str, float] = {}
    reach.check(root, corpus, face, store.current_manifest(corpus), root_change)  # refused before anything is made
    with store.lock(corpus):
        current = store.current_manifest(corpus)  # again under the lock: the check that counts
        root = reach.check(root, corpus, face, current, root_change)
        store.before_build(corpus, index_settings)
        prev = None
        if not full:
            prev = _reusable_previous(store, corpus, previous, embedder, index_settings, root)

        t = time.perf_counter()
        disc = discover_files(root, index_settings)
        timings["discover"] = time.perf_counter() - t
        prev_files = prev.files if prev is not None else {}
        t = time.perf_counter()
        prev_excluded = prev.manifest.get("excluded", {}) if prev is not None else {}
        plan = plan_files(disc, prev_files, index_settings, progress, prev_excluded)
        timings["chunk"] = time.perf_counter() - t
        summary = IndexSummary(
            corpus=corpus, generation="", root=str(root), files=len(plan.files), chunks=0, added=plan.added,
            changed=plan.changed, deleted=plan.deleted, unchanged=plan.unchanged, skipped=plan.skipped,
            non_utf8_files=plan.non_utf8, timings=timings, secrets=plan.secrets,
            redacted_files=sum(1 for r in plan.files.values() if r.get("redacted")),
        )
        cli_indexed = face == "cli" or bool(current and current.get("cli_indexed") and current.get("root") == str(root))
        if prev is not None and not (plan.added or plan.changed or plan.deleted) and (
                plan.excluded == prev_excluded and bool(prev.manifest.get("cli_indexed")) == cli_indexed):
            summary.generation, summary.chunks, summary.published = prev.generation_id, prev.n_chunks, False
            summary.elapsed_sec = time.perf_counter() - t0
            logger.info("corpus %s unchanged; generation %s stays current", corpus, prev.generation_id)
            return summary

        new_chunks = [c for chunks in plan.new_chunks.values() for c in chunks]
        t = time.perf_counter()
        vecs, embedded = _embed(store, corpus, prev, new_chunks, embedder, progress)
        timings["embed"] = time.perf_counter() - t

        gen_id = new_generation_id()
        manifest = {
            "format": INDEX_FORMAT,
            "corpus": corpus,
            "root": str(root),
            "generation": gen_id,
            "parent": prev.generation_id if prev is not None else None,
            "created_at": now_iso(),
            "cli_indexed": cli_indexed,
            "embed_model": embedder.model_id,
            "embed_dim": int(embedder.dim),
            "index_settings": chunk_params(index_settings),
            "versions": versions(),
            "n_files": len(plan.files),
            "skipped": plan.skipped,
            "excluded": plan.excluded,
        }
        scanned_as = (current or {}).get("index_settings", {}).get("secrets")
        job = BuildJob(corpus, root, gen_id, prev, plan, new_chunks, vecs, manifest, index_settings,
                       retrieval_settings, int(embedder.dim),
                       purge_older=current is not None and scanned_as != manifest["index_settings"]["secrets"])
        t = time.perf_counter()
        summary.chunks = store.write(job)
        timings["write"] = time.perf_counter() - t
        summary.generation, summary.embedded = gen_id, embedded
        summary.elapsed_sec = time.perf_counter() - t0
        logger.info("indexed %s: %s", corpus, {k: v for k, v in summary.to_dict().items() if k != "timings"})
        return summary


def _reusable_previous(store: GenerationStore, corpus: str, previous, embedder, index_settings, root: Path):
    """The published generation if an incremental build may start from it, else None (a full build)."""
    if previous is not None and previous.generation_id == store.current_generation_id(corpus):
        prev = previous
    else:
        try:
            prev = store.load_current(corpus)
        except (NoIndexError, IndexVersionError) as exc:
            logger.debug("full build of %s: %s", corpus, exc)
            return None
    if prev.manifest.get("format") != INDEX_FORMAT:
        return None
    if prev.embed_model != embedder.model_id or Path(prev.manifest["root"]) != root:
        logger.info("full build of %s: embedding model or root changed", corpus)
        return None
    if prev.manifest.get("index_settings") != chunk_params(index_settings):
        logger.info("full build of %s: chunking or secret-scanning settings changed", corpus)
        return None
    return prev


def _embed(store: GenerationStore, corpus: str, prev, new_chunks: list[Chunk], embedder, progress):
    """Vectors for ``new_chunks``: reused by chunk hash from what the corpus holds, the rest embedded (each
    distinct text once: copied code and licence headers embed once). Returns the vectors and how many were
    embedded."""
    dim = int(embedder.dim)
    known = store.reuse_vectors(corpus, prev, list({c.hash for c in new_chunks})) if prev is not None and new_chunks else {}
    first_of_hash: dict[str, int] = {}
    for j, c in enumerate(new_chunks):
        if c.hash not in known:
            first_of_hash.setdefault(c.hash, j)
    to_embed = list(first_of_hash.values())
    vecs = np.zeros((len(new_chunks), dim), dtype=np.float32)
    if to_embed:
        done = [0]

        def _tick(n: int) -> None:
            done[0] += n
            if progress:
                progress("embed", done[0], len(to_embed))

        vecs[to_embed] = embedder.encode_documents([document_text(new_chunks[j]) for j in to_embed], progress=_tick)
    for j, c in enumerate(new_chunks):
        if c.hash in known:
            vecs[j] = known[c.hash]
        elif first_of_hash[c.hash] != j:
            vecs[j] = vecs[first_of_hash[c.hash]]
    return vecs, len(to_embed)
