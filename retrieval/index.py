"""Index generations: build, refresh incrementally, publish atomically, load.

Layout under ``AGRO_HOME/indexes/<corpus>/``::

    gens/<generation>/      immutable: manifest.json, chunks_meta.json, chunks_text.bin, chunks_offsets.npy,
                            vectors.npy, bm25_*.{npz,json}
    current -> gens/<generation>   switched by creating a new symlink and os.replace()-ing it over the old one
    .lock                   held (flock) by the one process writing this corpus

A generation is written into ``gens/.tmp-*`` and renamed into place, then ``current`` flips. A crash at any
point leaves the previous generation published and intact; leftover temp folders are removed by the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from retrieval.atomic import fsync_dir, write_json_atomic
from retrieval.chunking import chunk_file
from retrieval.discovery import (
    DiscoveryResult,
    detect_language,
    discover_files,
    read_text,
)
from retrieval.errors import AgroUserError
from retrieval.lexical import BM25Index
from retrieval.settings import IndexSettings, RetrievalSettings
from retrieval.tokenize import code_tokens
from retrieval.types import Chunk, located_text

__all__ = [
    "INDEX_FORMAT",
    "FilePlan",
    "IndexError_",
    "IndexGeneration",
    "IndexLockedError",
    "IndexSummary",
    "IndexVersionError",
    "NoIndexError",
    "build_index",
    "corpus_dir",
    "current_generation_id",
    "document_text",
    "document_tokens",
    "list_corpora",
    "load_current",
    "load_generation",
    "plan_files",
    "save_generation_files",
    "stale_files",
    "validate_corpus_id",
]

logger = logging.getLogger(__name__)

INDEX_FORMAT = 2
_CORPUS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IndexError_(AgroUserError, RuntimeError):
    """Base of index errors; messages say what to run next."""


class NoIndexError(IndexError_):
    pass


class IndexVersionError(IndexError_):
    pass


class IndexLockedError(IndexError_):
    pass


def validate_corpus_id(corpus: str) -> str:
    if not _CORPUS_RE.match(corpus or ""):
        raise ValueError(
            f"corpus id expects letters, digits, '.', '_' or '-' (1-128 chars, not starting with a symbol), "
            f"but got {corpus!r}"
        )
    return corpus


def corpus_dir(home: Path, corpus: str) -> Path:
    return home / "indexes" / validate_corpus_id(corpus)


def document_text(chunk: Chunk) -> str:
    """What the bi-encoder sees for a chunk: its location and symbol, then its code."""
    return located_text(chunk.path, chunk.symbol, chunk.text)


def document_tokens(chunk: Chunk) -> list[str]:
    """What BM25 sees for a chunk: path and symbol tokens, then the code's tokens."""
    return code_tokens(chunk.path.replace("/", " ")) + code_tokens(chunk.symbol or "") + code_tokens(chunk.text)


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

    def to_dict(self) -> dict:
        return asdict(self)


class GenerationManifest:
    """What every backend's generation derives from its ``manifest`` (the embedded and the PostgreSQL one)."""

    manifest: dict

    @property
    def root(self) -> Path:
        return Path(self.manifest["root"])

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]

    @property
    def embed_model(self) -> str:
        return self.manifest["embed_model"]


@dataclass
class IndexGeneration(GenerationManifest):
    """One immutable, fully loaded index generation."""

    corpus: str
    generation_id: str
    path: Path
    manifest: dict
    chunks: list[Chunk]
    vectors: np.ndarray
    lexical: BM25Index
    languages: np.ndarray
    paths: np.ndarray
    _glob_cache: dict = field(default_factory=dict, repr=False)
    _half: object = field(default=None, repr=False)

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def some_chunks(self, limit: int) -> list[Chunk]:
        """The first ``limit`` chunks (as the PostgreSQL view offers them, without loading the rest)."""
        return self.chunks[:limit]

    def half_vectors(self):
        """The vectors as a float16 torch tensor (built on first use, then shared by every search of this
        generation): half the bytes to stream per dense scan, and a single-threaded kernel, where numpy's float32
        product runs OpenBLAS on every core. Measured on 100k x 384 here: 4.0 ms of CPU per scan against 8.0 (10.7
        with 8 processes scanning at once). Scores are screened with it and the best are rescored exactly."""
        half = self._half
        if half is None:
            import torch

            half = torch.from_numpy(np.ascontiguousarray(self.vectors, dtype=np.float32)).to(torch.float16)
            self._half = half  # two threads racing here build the same tensor; either one is kept
        return half

    def path_mask(self, pattern: str) -> np.ndarray:
        from retrieval.search import glob_to_regex  # local: search imports this module

        mask = self._glob_cache.get(pattern)
        if mask is None:
            rx = glob_to_regex(pattern)
            unique = {p: bool(rx.match(p)) for p in set(self.paths.tolist())}
            mask = np.fromiter((unique[p] for p in self.paths), dtype=bool, count=len(self.paths))
            if len(self._glob_cache) > 64:
                self._glob_cache.clear()
            self._glob_cache[pattern] = mask
        return mask


# --------------------------------------------------------------------------------------------------------
def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_generation_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _writer_lock(cdir: Path, corpus: str) -> Iterator[None]:
    cdir.mkdir(parents=True, exist_ok=True)
    lock_path = cdir / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise IndexLockedError(
                f"Corpus {corpus!r} is being indexed by another process (pid {holder}). "
                "Searches keep working on the current generation; run the index again when that one finishes."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock; a killed process releases it too


def current_generation_id(home: Path, corpus: str) -> str | None:
    link = corpus_dir(home, corpus) / "current"
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def list_corpora(home: Path) -> list[str]:
    base = home / "indexes"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "current").is_symlink() and (p / "current").exists())


def _publish(cdir: Path, tmp: Path, gen_id: str) -> None:
    gens = cdir / "gens"
    final = gens / gen_id
    os.rename(tmp, final)
    fsync_dir(gens)
    link_tmp = cdir / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(Path("gens") / gen_id, link_tmp)
    os.replace(link_tmp, cdir / "current")
    fsync_dir(cdir)


def _gc(cdir: Path, keep: int) -> None:
    gens = cdir / "gens"
    if not gens.is_dir():
        return
    cur = os.readlink(cdir / "current") if (cdir / "current").is_symlink() else None
    cur_name = Path(cur).name if cur else None
    for p in gens.iterdir():
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
    done = sorted((p for p in gens.iterdir() if not p.name.startswith(".")), key=lambda p: p.name, reverse=True)
    for p in done[keep:]:
        if p.name != cur_name:
            shutil.rmtree(p, ignore_errors=True)
    for p in cdir.iterdir():
        if p.name.startswith(".current-"):
            with contextlib.suppress(OSError):
                p.unlink()


# --------------------------------------------------------------------------------------------------------
def _read_manifest(gen_path: Path, corpus: str) -> dict:
    try:
        manifest = json.loads((gen_path / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NoIndexError(f"Index generation {gen_path.name} of corpus {corpus!r} has no manifest; rebuild it.") from None
    fmt = manifest.get("format")
    if fmt != INDEX_FORMAT:
        raise IndexVersionError(
            f"The index of corpus {corpus!r} was written by another agro-mcp version (format {fmt}, this version "
            f"reads {INDEX_FORMAT}). Rebuild it: agro index {manifest.get('root', 'PATH')} --corpus {corpus} --full"
        )
    return manifest


def save_chunks(folder: Path, chunks: list[Chunk]) -> None:
    """Chunk metadata as one compact JSON array; texts as one UTF-8 blob with byte offsets.

    Loading 40k chunks this way takes a fraction of per-line JSON, which keeps an incremental refresh fast.
    """
    meta = [[c.path, c.start_line, c.end_line, c.language, c.symbol, c.hash] for c in chunks]
    blobs = [c.text.encode("utf-8", "surrogatepass") for c in chunks]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    if blobs:
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
    with open(folder / "chunks_meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, separators=(",", ":"))
    with open(folder / "chunks_text.bin", "wb") as f:
        f.write(b"".join(blobs))
    np.save(folder / "chunks_offsets.npy", offsets)


def load_chunks(folder: Path) -> list[Chunk]:
    meta = json.loads((folder / "chunks_meta.json").read_text(encoding="utf-8"))
    data = (folder / "chunks_text.bin").read_bytes()
    offsets = np.load(folder / "chunks_offsets.npy").tolist()
    if len(offsets) != len(meta) + 1 or offsets[-1] != len(data):
        raise IndexVersionError(f"Index generation {folder.name} has inconsistent chunk files; rebuild it with --full")
    return [
        Chunk(m[0], m[1], m[2], m[3], m[4], data[offsets[i] : offsets[i + 1]].decode("utf-8", "surrogatepass"), m[5])
        for i, m in enumerate(meta)
    ]


def save_generation_files(folder: Path, chunks: list[Chunk], vectors: np.ndarray, lexical: BM25Index) -> None:
    """Every data file of a generation (the manifest is written last, by the caller). fsync'ed before publish."""
    save_chunks(folder, chunks)
    np.save(folder / "vectors.npy", vectors)
    lexical.save(folder)
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def load_generation(gen_path: Path, corpus: str) -> IndexGeneration:
    manifest = _read_manifest(gen_path, corpus)
    chunks = load_chunks(gen_path)
    vectors = np.load(gen_path / "vectors.npy")
    lexical = BM25Index.load(gen_path)
    if len(chunks) != vectors.shape[0] or len(chunks) != lexical.n_docs:
        raise IndexVersionError(
            f"Index generation {gen_path.name} of corpus {corpus!r} is inconsistent "
            f"({len(chunks)} chunks, {vectors.shape[0]} vectors, {lexical.n_docs} BM25 rows); "
            f"rebuild it: agro index {manifest['root']} --corpus {corpus} --full"
        )
    return IndexGeneration(
        corpus=corpus,
        generation_id=gen_path.name,
        path=gen_path,
        manifest=manifest,
        chunks=chunks,
        vectors=vectors,
        lexical=lexical,
        languages=np.array([c.language for c in chunks], dtype=object),
        paths=np.array([c.path for c in chunks], dtype=object),
    )


def load_current(home: Path, corpus: str) -> IndexGeneration:
    """Load the published generation of ``corpus``.

    Raises:
        NoIndexError: no index yet (the message lists known corpora and the command that builds one).
        IndexVersionError: written by another format version (the message says how to rebuild).
    """
    cdir = corpus_dir(home, corpus)
    for _attempt in range(3):
        gen_id = current_generation_id(home, corpus)
        if gen_id is None:
            known = list_corpora(home)
            hint = f" Known corpora: {', '.join(known)}." if known else " No corpus is indexed yet."
            raise NoIndexError(f"No index for corpus {corpus!r}.{hint} Build it with: agro index /path/to/repo --corpus {corpus}")
        try:
            return load_generation(cdir / "gens" / gen_id, corpus)
        except FileNotFoundError:
            continue  # a writer published and collected in between; re-resolve current
    raise NoIndexError(f"Could not load the index of corpus {corpus!r}: it changed while loading; try again.")


# --------------------------------------------------------------------------------------------------------
def stale_files(gen: IndexGeneration, index_settings: IndexSettings, discovered: DiscoveryResult | None = None) -> dict:
    """Files added, changed or deleted on disk since ``gen`` was built (computed now, never remembered)."""
    root = gen.root
    if not root.is_dir():
        # Not checked out here (a shared index built on another machine) or moved away: nothing can be compared,
        # and a refresh from this machine could not run either; say so instead of calling every file stale.
        return {"added": 0, "changed": 0, "deleted": 0, "total": 0, "root_missing": True}
    disc = discovered or discover_files(root, index_settings)
    seen = set()
    added = changed = 0
    for fe in disc.files:
        seen.add(fe.path)
        rec = gen.files.get(fe.path)
        if rec is None:
            added += 1
        elif rec["size"] != fe.size or rec["mtime_ns"] != fe.mtime_ns:
            try:
                if _sha256_file(fe.abs_path) != rec["sha256"]:
                    changed += 1
            except OSError:
                changed += 1
    deleted = sum(1 for p in gen.files if p not in seen)
    return {"added": added, "changed": changed, "deleted": deleted, "total": added + changed + deleted}


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


def plan_files(
    disc: DiscoveryResult,
    prev_files: dict[str, dict],
    index_settings: IndexSettings,
    progress: Callable[[str, int, int], None] | None = None,
) -> FilePlan:
    """Compare discovered files with the previous build's records (size + mtime, then content hash) and chunk
    the added and changed ones. Shared by every storage backend, so they chunk identically."""
    plan = FilePlan(files={}, new_chunks={}, skipped=dict(disc.skipped))
    unreadable = 0
    total = len(disc.files)
    for i, fe in enumerate(disc.files):
        rec = prev_files.get(fe.path)
        if rec is not None and rec["size"] == fe.size and rec["mtime_ns"] == fe.mtime_ns:
            sha = rec["sha256"]
        else:
            try:
                sha = _sha256_file(fe.abs_path)
            except OSError:
                unreadable += 1
                continue
        if rec is not None and rec["sha256"] == sha:
            plan.unchanged += 1
            lang = rec["language"]
            bad = bool(rec.get("non_utf8", False))
        else:
            try:
                text, utf8_ok = read_text(fe.abs_path)
                bad = not utf8_ok
            except OSError:
                unreadable += 1
                continue
            plan.new_chunks[fe.path] = chunk_file(fe.path, text, index_settings)
            lang = detect_language(fe.path)
            if rec is None:
                plan.added += 1
            else:
                plan.changed += 1
        plan.non_utf8 += int(bad)
        plan.files[fe.path] = {
            "sha256": sha, "size": fe.size, "mtime_ns": fe.mtime_ns, "language": lang, "non_utf8": bool(bad),
        }
        if progress and (i % 200 == 0 or i == total - 1):
            progress("chunk", i + 1, total)
    plan.deleted_paths = [p for p in prev_files if p not in plan.files]
    plan.deleted = len(plan.deleted_paths)
    if unreadable:
        plan.skipped["unreadable"] = plan.skipped.get("unreadable", 0) + unreadable
    return plan


def build_index(
    root: Path,
    corpus: str,
    home: Path,
    index_settings: IndexSettings,
    retrieval_settings: RetrievalSettings,
    embedder,
    progress: Callable[[str, int, int], None] | None = None,
    full: bool = False,
    previous: IndexGeneration | None = None,
) -> IndexSummary:
    """Index ``root`` as ``corpus``: only added and changed files are chunked and embedded.

    Publishes a new generation atomically, or none when nothing changed. ``progress(stage, done, total)``.
    ``previous`` is the published generation when the caller already holds it in memory (a running server):
    it is used only if it is still the one ``current`` points at, which saves reloading it from disk.

    Raises:
        FileNotFoundError / NotADirectoryError: bad root.
        IndexLockedError: another process is writing this corpus.
    """
    t0 = time.perf_counter()
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"Cannot index {str(root)!r}: no such directory. Pass the path of a repository.")
    if not root.is_dir():
        raise NotADirectoryError(f"Cannot index {str(root)!r}: it is a file, not a directory. Pass the repository folder.")
    root = root.resolve()
    cdir = corpus_dir(home, corpus)
    timings: dict[str, float] = {}
    with _writer_lock(cdir, corpus):
        _gc(cdir, index_settings.keep_generations)
        prev: IndexGeneration | None = None
        if not full and previous is not None and previous.generation_id == current_generation_id(home, corpus):
            prev = previous
        elif not full:
            try:
                prev = load_current(home, corpus)
            except (NoIndexError, IndexVersionError) as exc:
                logger.info("full build of %s: %s", corpus, exc)
                prev = None
            if prev is not None and (prev.embed_model != embedder.model_id or Path(prev.manifest["root"]) != root):
                logger.info("full build of %s: embedding model or root changed", corpus)
                prev = None
            if prev is not None and prev.manifest.get("index_settings") != _chunk_params(index_settings):
                logger.info("full build of %s: chunking settings changed", corpus)
                prev = None

        t = time.perf_counter()
        disc = discover_files(root, index_settings)
        timings["discover"] = time.perf_counter() - t
        prev_files = prev.files if prev else {}
        t = time.perf_counter()
        plan = plan_files(disc, prev_files, index_settings, progress)
        files_meta: dict[str, dict] = {}
        new_chunks: list[Chunk] = []
        order_spec: list[tuple[str, int]] = []  # ("old", row) or ("new", idx into new_chunks)
        for path, rec in plan.files.items():
            first = len(order_spec)
            fresh = plan.new_chunks.get(path)
            if fresh is None:
                old = prev_files[path]
                order_spec.extend(("old", r) for r in range(old["first_chunk"], old["first_chunk"] + old["n_chunks"]))
            else:
                order_spec.extend(("new", len(new_chunks) + j) for j in range(len(fresh)))
                new_chunks.extend(fresh)
            files_meta[path] = {**rec, "first_chunk": first, "n_chunks": len(order_spec) - first}
        added, changed, deleted, unchanged = plan.added, plan.changed, plan.deleted, plan.unchanged
        non_utf8 = plan.non_utf8
        timings["chunk"] = time.perf_counter() - t
        skipped = plan.skipped

        if prev is not None and not (added or changed or deleted):
            summary = IndexSummary(
                corpus=corpus, generation=prev.generation_id, root=str(root), files=len(files_meta),
                chunks=len(prev.chunks), unchanged=unchanged, skipped=skipped, non_utf8_files=non_utf8,
                published=False, elapsed_sec=time.perf_counter() - t0, timings=timings,
            )
            logger.info("corpus %s unchanged; generation %s stays current", corpus, prev.generation_id)
            return summary

        # Embeddings: reuse by chunk hash from the previous generation, embed the rest.
        t = time.perf_counter()
        old_vec_by_hash: dict[str, int] = {}
        if prev is not None:
            for r, c in enumerate(prev.chunks):
                old_vec_by_hash.setdefault(c.hash, r)
        first_of_hash: dict[str, int] = {}
        for j, c in enumerate(new_chunks):
            if c.hash not in old_vec_by_hash:
                first_of_hash.setdefault(c.hash, j)
        to_embed = list(first_of_hash.values())  # identical chunks (copied code, licence headers) embed once
        dim = embedder.dim
        new_vecs = np.zeros((len(new_chunks), dim), dtype=np.float32)
        if to_embed:
            texts = [document_text(new_chunks[j]) for j in to_embed]
            done = [0]

            def _tick(n: int) -> None:
                done[0] += n
                if progress:
                    progress("embed", done[0], len(texts))

            new_vecs[to_embed] = embedder.encode_documents(texts, progress=_tick)
        for j, c in enumerate(new_chunks):
            r = old_vec_by_hash.get(c.hash)
            if r is not None:
                new_vecs[j] = prev.vectors[r]
            elif first_of_hash[c.hash] != j:
                new_vecs[j] = new_vecs[first_of_hash[c.hash]]
        timings["embed"] = time.perf_counter() - t

        # Assemble rows: old rows first in the stacked arrays, then new ones.
        t = time.perf_counter()
        n_old = len(prev.chunks) if prev is not None else 0
        order = np.fromiter(((r if kind == "old" else n_old + r) for kind, r in order_spec), dtype=np.int64, count=len(order_spec))
        all_chunks = (prev.chunks if prev is not None else []) + new_chunks
        chunks_final = [all_chunks[i] for i in order]
        vec_stack = np.concatenate([prev.vectors, new_vecs]) if prev is not None else new_vecs
        vectors = np.ascontiguousarray(vec_stack[order]) if len(order) else np.zeros((0, dim), np.float32)
        lexical = BM25Index.restack(
            prev.lexical if prev is not None else None,
            [document_tokens(c) for c in new_chunks],
            order,
            k1=retrieval_settings.bm25_k1,
            b=retrieval_settings.bm25_b,
        )
        timings["lexical"] = time.perf_counter() - t

        # Write the generation beside the live one, then publish.
        t = time.perf_counter()
        gen_id = _new_generation_id()
        gens = cdir / "gens"
        gens.mkdir(parents=True, exist_ok=True)
        tmp = gens / f".tmp-{gen_id}"
        tmp.mkdir()
        try:
            save_generation_files(tmp, chunks_final, vectors, lexical)
            manifest = {
                "format": INDEX_FORMAT,
                "corpus": corpus,
                "root": str(root),
                "generation": gen_id,
                "parent": prev.generation_id if prev is not None else None,
                "created_at": _now_iso(),
                "embed_model": embedder.model_id,
                "embed_dim": dim,
                "bm25": lexical.params(),
                "index_settings": _chunk_params(index_settings),
                "versions": _versions(),
                "n_chunks": len(chunks_final),
                "n_files": len(files_meta),
                "skipped": skipped,
                "files": files_meta,
            }
            write_json_atomic(tmp / "manifest.json", manifest, indent=None)
            _publish(cdir, tmp, gen_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        timings["write"] = time.perf_counter() - t
        _gc(cdir, index_settings.keep_generations)
        summary = IndexSummary(
            corpus=corpus, generation=gen_id, root=str(root), files=len(files_meta), chunks=len(chunks_final),
            added=added, changed=changed, deleted=deleted, unchanged=unchanged, embedded=len(to_embed),
            skipped=skipped, non_utf8_files=non_utf8, published=True,
            elapsed_sec=time.perf_counter() - t0, timings=timings,
        )
        logger.info("indexed %s: %s", corpus, {k: v for k, v in summary.to_dict().items() if k != "timings"})
        return summary


def _chunk_params(s: IndexSettings) -> dict:
    """Settings that change which chunks exist; a change forces a full rebuild."""
    return {
        "max_chunk_lines": s.max_chunk_lines,
        "window_lines": s.window_lines,
        "window_overlap": s.window_overlap,
        "tokenizer": _tokenizer_version(),
    }


def _tokenizer_version() -> str:
    from retrieval import tokenize

    return str(getattr(tokenize, "TOKENIZER_VERSION", "1"))


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("agro-mcp", "numpy", "scipy", "sentence-transformers", "torch", "tree-sitter"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
