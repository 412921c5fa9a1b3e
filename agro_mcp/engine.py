"""The one pipeline behind every face (MCP tools, CLI, nightly loop).

It composes the library packages: index generations from ``retrieval``, the cross-encoder stage from
``reranker`` and the event store from ``training``. It holds no ranking or training logic of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from agro_mcp.config import Settings
from agro_mcp.schemas import SearchHit, SearchResponse
from retrieval.errors import AgroUserError
from retrieval.index import (
    IndexGeneration,
    NoIndexError,
    stale_files,
    validate_corpus_id,
)
from retrieval.redact import clip, register_secret
from retrieval.globs import InvalidGlobError, path_glob_regex
from retrieval.types import Hit

__all__ = ["Engine", "UserError", "MAX_K"]

logger = logging.getLogger(__name__)

MAX_K = 50
_UNSET = object()


class UserError(AgroUserError, ValueError):
    """Bad input from a caller; the message says how to fix it (surfaces as a ToolError / CLI error)."""


@dataclass
class RankedResult:
    hits: list[Hit]
    generation: IndexGeneration
    timings: dict[str, float]
    reranking_used: bool
    reranker_model: str | None
    fallback_reason: str | None


class Engine:
    """Long-lived state of one server or CLI process: models, loaded generations, the store."""

    def __init__(self, settings: Settings, embedder=None) -> None:
        """``embedder`` may be passed in (already loaded) to share one model between engines."""
        self.settings = settings
        register_secret(settings.server.llm_api_key)  # masked in every log line and message from here on
        register_secret(settings.server.database_url)
        _single_threaded_blas()
        self.home = settings.server.home
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._embedder = None
        self._embedder_error: BaseException | None = None
        self._embedder_ready = threading.Event()
        self._embedder_thread: threading.Thread | None = None
        if embedder is not None:
            self._embedder = embedder
            self._embedder_thread = threading.current_thread()
            self._embedder_ready.set()
        self._gens: dict[str, IndexGeneration] = {}
        self._stale: dict[str, tuple[float, str, dict]] = {}
        self._stale_renewing: set[str] = set()
        self._store = None
        self._index_backend = None
        self._releases = _UNSET
        self._reranker = None
        self._score_cache = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start_background(self, warm: bool = False) -> None:
        """Load the embedding model and the reranker in the background (the MCP handshake must not wait).

        ``warm`` (a long-running server): each bi-encoder release that loads embeds the indexed chunks in the
        background (``AGRO_RERANKER_PREWARM``). A one-shot command leaves it off: it would only compete with its search.
        """
        # transformers resolves its names lazily and that is not thread-safe: two loader threads importing at once
        # failed with "cannot import name 'AutoConfig'". Resolve them here, once, before the threads start.
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
        if self._embedder_thread is None:
            self._embedder_thread = threading.Thread(target=self._load_embedder, args=(warm,), name="agro-embedder",
                                                     daemon=True)
            self._embedder_thread.start()
        if warm:
            _responsive_gil()
            self.reranker.set_warm_source(self._chunk_texts)
        self.reranker.start()

    def _load_embedder(self, warm: bool = False) -> None:
        """``warm`` (a long-running server): once the model serves, embed a query of each padded length once
        (:meth:`retrieval.embed.Embedder.warm_query_lengths`), so no search pays a new shape's kernel set-up."""
        try:
            from retrieval.embed import load_embedder

            self._embedder = load_embedder(self.settings.retrieval, batch=self.settings.index.embed_batch)
            logger.info("embedding model ready: %s (%s)", self._embedder.model_id, self._embedder.dtype)
        except Exception as exc:  # top-level handler of a background thread: recorded, raised on use
            logger.exception("embedding model failed to load")
            self._embedder_error = exc
        finally:
            self._embedder_ready.set()
        if warm and self._embedder is not None:
            try:
                t0 = time.perf_counter()
                n = self._embedder.warm_query_lengths()
                logger.info("%d query lengths warmed in %.1f s", n, time.perf_counter() - t0)
            except Exception:  # top-level handler of a background thread: warming is an optimisation only
                logger.warning("warming the query lengths failed", exc_info=True)

    def embedder(self):
        if self._embedder_thread is None:
            with self._lock:
                if self._embedder_thread is None:
                    self._embedder_thread = threading.Thread(target=self._load_embedder, daemon=True)
                    self._embedder_thread.start()
        self._embedder_ready.wait()
        if self._embedder is None:
            raise RuntimeError(
                f"The embedding model {self.settings.retrieval.embed_model!r} could not be loaded: "
                f"{self._embedder_error}. Set AGRO_RETRIEVAL_EMBED_MODEL to a local model folder."
            )
        return self._embedder

    @property
    def store(self):
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from training.events.store import open_event_store

                    sv = self.settings.server
                    self._store = open_event_store(self.home, sv.backend, sv.database_url, sv.db_pool_size)
        return self._store

    @property
    def releases(self):
        """The shared reranker release registry of a team backend, or None (embedded: local files only)."""
        if self._releases is _UNSET:
            with self._lock:
                if self._releases is _UNSET:
                    from training.releases.registry import open_release_registry

                    sv = self.settings.server
                    self._releases = open_release_registry(sv.backend, sv.database_url, sv.db_pool_size)
        return self._releases

    @property
    def indexes(self):
        """The index storage backend (embedded files or PostgreSQL), opened on first use."""
        if self._index_backend is None:
            with self._lock:
                if self._index_backend is None:
                    from retrieval.backend import open_index_backend

                    sv = self.settings.server
                    self._index_backend = open_index_backend(self.home, sv.backend, sv.database_url, sv.db_pool_size)
        return self._index_backend

    @property
    def reranker(self):
        if self._reranker is None:
            with self._lock:
                if self._reranker is None:
                    from reranker.cache import ScoreCache
                    from reranker.manager import RerankerManager

                    sync = None
                    registry = self.releases
                    if registry is not None:
                        models_dir = self.home / "models"

                        def sync() -> None:  # the shared current release, before each reload check
                            registry.sync(models_dir)

                    self._reranker = RerankerManager(self.settings.reranker, self.home / "models", sync=sync)
                    self._score_cache = ScoreCache(self.settings.reranker.cache_size)
        return self._reranker

    @property
    def ranking_path(self):
        """The one ranking path (fused retrieval, the rerank stage, the blend) with this process's hot-reloaded
        reranker and score cache: what ``rag_search`` serves and what the learning loop evaluates against."""
        from reranker.path import RankingPath

        manager = self.reranker
        return RankingPath(self.settings.retrieval, self.settings.reranker, self.embedder, manager, self._score_cache)

    @property
    def workspace(self):
        """This data home as the learning loop takes it (:class:`training.workspace.Workspace`): the settings, the
        store, the indexes, the ranking path with the served reranker, the release registry, and a reload."""
        from training.workspace import LearningSettings, Workspace

        s = self.settings
        return Workspace(self.home, LearningSettings(s.index, s.retrieval, s.reranker, s.training), self.store,
                         self.indexes, self.ranking_path, self.generation, self.releases, self.reranker.reload,
                         retention_days=s.server.events_retention_days)

    def _chunk_texts(self, limit: int = 20_000):
        """The indexed chunks' located texts (what a reranker sees), corpus by corpus, at most ``limit`` in all (a
        bi-encoder's vector cache): a new bi-encoder release embeds these ahead of the searches that rank them."""
        from retrieval.types import located_text

        try:
            corpora = self.corpora()
        except Exception as exc:  # noqa: BLE001 - warming is optional; the searches embed on demand
            logger.warning("reranker warming: cannot list the corpora: %s", exc)
            return
        for corpus in corpora:
            if limit <= 0:
                return
            try:
                chunks = self.generation(corpus).some_chunks(limit)
            except Exception as exc:  # noqa: BLE001 - a corpus removed or broken meanwhile: warm the others
                logger.warning("reranker warming: skipping corpus %s: %s", corpus, exc)
                continue
            limit -= len(chunks)
            for c in chunks:
                yield located_text(c.path, c.symbol, c.text)

    def close(self) -> None:
        if self._reranker is not None:
            self._reranker.close()
        if self._store is not None:
            self._store.close()

    # -- corpora and generations --------------------------------------------------------------------------
    def corpora(self) -> list[str]:
        return self.indexes.list_corpora()

    def resolve_corpus(self, corpus: str | None) -> str:
        if corpus:
            try:
                validate_corpus_id(corpus)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            # A corpus already served needs no listing: generation() reads its current id anyway, and reports
            # one that has since been removed. (One database round trip less per search on PostgreSQL.)
            if corpus not in self._gens and corpus not in self.corpora():
                known = self.corpora()
                listing = ", ".join(known) if known else "none yet"
                raise UserError(
                    f"Unknown corpus {corpus!r}. Known corpora: {listing}. "
                    f"Index it with: agro index /path/to/repo --corpus {corpus}"
                )
            return corpus
        if self.settings.server.default_corpus:
            return self.resolve_corpus(self.settings.server.default_corpus)
        known = self.corpora()
        if len(known) == 1:
            return known[0]
        if not known:
            raise UserError("No corpus is indexed yet. Index a repository first: agro index /path/to/repo")
        raise UserError(f"Several corpora are indexed ({', '.join(known)}); pass corpus=<one of them>.")

    def generation(self, corpus: str) -> IndexGeneration:
        """The published generation of ``corpus``, reloaded when ``current`` has moved."""
        gen_id = self.indexes.current_generation_id(corpus)
        cached = self._gens.get(corpus)
        if cached is not None and cached.generation_id == gen_id:
            return cached
        try:
            gen = self.indexes.load_current(corpus)
        except NoIndexError as exc:
            raise UserError(str(exc)) from None
        with self._lock:
            self._gens[corpus] = gen
        if cached is not None and self._reranker is not None:
            # The chunks changed: a served bi-encoder embeds the new ones in the background (and keeps them).
            threading.Thread(target=self._reranker.refresh_warm, name="agro-reranker-rewarm", daemon=True).start()
        return gen

    def stale_count(self, gen: IndexGeneration, max_age: float | None = None, block: bool = True) -> dict:
        """Files added, changed or deleted on disk since ``gen`` was built.

        A count older than ``max_age`` (default: the TTL setting) is recomputed. With ``block=False`` (the search
        path) an expired count of the same generation is returned at once while a background thread renews it,
        so a search never pays for walking the repository; only the first search of a generation waits.
        """
        ttl = self.settings.retrieval.stale_check_ttl_sec if max_age is None else max_age
        entry = self._stale.get(gen.corpus)
        now = time.monotonic()
        if entry and entry[1] == gen.generation_id:
            if now - entry[0] <= ttl:
                return entry[2]
            if not block:
                self._renew_stale(gen)
                return entry[2]
        return self._compute_stale(gen)

    def _compute_stale(self, gen: IndexGeneration) -> dict:
        counts = stale_files(gen, self.settings.index)
        self._stale[gen.corpus] = (time.monotonic(), gen.generation_id, counts)
        return counts

    def _renew_stale(self, gen: IndexGeneration) -> None:
        with self._lock:
            if gen.corpus in self._stale_renewing:
                return
            self._stale_renewing.add(gen.corpus)

        def work() -> None:
            try:
                self._compute_stale(gen)
            except OSError:
                logger.warning("stale-file check of %s failed", gen.corpus, exc_info=True)
            finally:
                self._stale_renewing.discard(gen.corpus)

        threading.Thread(target=work, name=f"agro-stale-{gen.corpus}", daemon=True).start()

    # -- the pipeline -------------------------------------------------------------------------------------
    def validate_query(self, query: str, k: int) -> str:
        if isinstance(query, str):
            query = query.replace("\x00", "")  # a NUL byte means nothing to search, and no store can keep it
        if not isinstance(query, str) or not query.strip():
            raise UserError("query is empty: pass a question or some code terms, e.g. 'where is the OAuth token validated'")
        limit = self.settings.retrieval.max_query_chars
        if len(query) > limit:
            raise UserError(
                f"query has {len(query)} characters; the limit is {limit}. Pass the essential part "
                "(the error message, the identifiers, the question), or raise AGRO_RETRIEVAL_MAX_QUERY_CHARS."
            )
        if not 1 <= k <= MAX_K:
            raise UserError(f"k expects 1..{MAX_K}, but got {k}")
        return query.strip()

    def rank(
        self,
        query: str,
        corpus: str,
        k: int,
        rerank: bool | None = None,
        path_glob: str | None = None,
        language: str | None = None,
    ) -> RankedResult:
        """Retrieve, fuse and (optionally) rerank: :class:`reranker.path.RankingPath`, the ranking every face shares."""
        t0 = time.perf_counter()
        gen = self.generation(corpus)
        embedder = self.embedder()
        if gen.embed_model != embedder.model_id:
            raise UserError(
                f"The index of corpus {corpus!r} was built with embedding model {gen.embed_model!r}, but the "
                f"server uses {embedder.model_id!r}. Rebuild it: agro index {gen.root} --corpus {corpus} --full"
            )
        if path_glob:
            try:
                path_glob_regex(path_glob)
            except InvalidGlobError:
                raise UserError(f"path_glob {clip(path_glob)} is not a valid glob; e.g. 'src/**/*.py'") from None
        ranked = self.ranking_path.rank(gen, query, k, rerank=rerank, path_glob=path_glob, language=language)
        ranked.timings["total"] = (time.perf_counter() - t0) * 1000
        return RankedResult(ranked.hits, gen, ranked.timings, ranked.reranking_used, ranked.reranker_model,
                            ranked.fallback_reason)

    def search(
        self,
        query: str,
        corpus: str | None = None,
        k: int = 10,
        rerank: bool | None = None,
        path_glob: str | None = None,
        language: str | None = None,
        source: str = "search",
    ) -> SearchResponse:
        query = self.validate_query(query, k)
        corpus = self.resolve_corpus(corpus)
        ranked = self.rank(query, corpus, k, rerank, path_glob, language)
        stale = self.stale_count(ranked.generation, block=False)
        event_id = self.store.log_query(
            corpus,
            query,
            k,
            ranked.hits,
            reranker_model=ranked.reranker_model,
            reranking_used=ranked.reranking_used,
            fallback_reason=ranked.fallback_reason,
            latency_ms=ranked.timings["total"],
            index_generation=ranked.generation.generation_id,
            source=source,
        )
        note = None
        if stale["total"]:
            note = f"{stale['total']} file(s) changed on disk since indexing; refresh with rag_index(action='refresh')."
        elif stale.get("root_missing"):
            note = (f"The indexed folder {ranked.generation.root} is not on this machine, so staleness is unknown; "
                    "refresh from a machine that has the checkout.")
        if not ranked.hits:
            note = (note + " " if note else "") + "No match; try other terms, drop filters, or check the corpus."
        return SearchResponse(
            event_id=event_id,
            corpus=corpus,
            query=query,
            results=[_hit_out(h) for h in ranked.hits],
            reranking_used=ranked.reranking_used,
            reranker_model=ranked.reranker_model,
            reranker_fallback_reason=ranked.fallback_reason,
            index_generation=ranked.generation.generation_id,
            index_stale_files=stale["total"],
            timings_ms={k_: round(v, 2) for k_, v in ranked.timings.items()},
            note=note,
        )

    def corpus_root(self, corpus: str) -> Path | None:
        """Root folder of an indexed corpus (for validating feedback locations), or None."""
        try:
            return self.generation(corpus).root
        except (UserError, ValueError):
            return None

    def indexed_files(self, corpus: str) -> Collection[str]:
        """Relative paths of the files in the corpus's current index (empty when it has none)."""
        try:
            return self.generation(corpus).files.keys()
        except (UserError, ValueError):
            return ()

    # -- admin ----------------------------------------------------------------------------------------------
    def admin(self, action: str, run_id: str | None = None, dataset: str | None = None, force: bool = False) -> dict:
        """``reranker_admin`` actions: ``info`` and ``reload`` are this process's own; the others act on the data
        home (:func:`training.releases.admin.run_admin_action`, a table of handlers)."""
        own = {"info": self._admin_info, "reload": lambda: dict(self.reranker.reload())}
        if action in own:
            return own[action]()
        from training.releases.admin import run_admin_action  # training is optional for search-only use

        return run_admin_action(self.workspace, action, run_id=run_id, dataset=dataset, force=force)

    def _admin_info(self) -> dict:
        info = dict(self.reranker.info())
        latest = self._latest_eval()
        if latest is not None:
            info["latest_eval"] = latest
        return info

    def _latest_eval(self) -> dict | None:
        try:
            return self.store.latest_evaluation()
        except Exception:  # info must answer even if the store is unavailable
            logger.debug("no latest evaluation", exc_info=True)
            return None

    # -- indexing -----------------------------------------------------------------------------------------
    def index(self, path: str | Path, corpus: str | None = None, full: bool = False, progress=None, *,
              face: str = "cli", root_change: bool = False):
        """Index ``path`` as ``corpus``. ``face`` says who asks (``mcp``: a tool call, held to AGRO_INDEX_ROOTS;
        ``cli``: a person); ``root_change`` lets the CLI move a corpus to another folder (``retrieval.reach``)."""
        try:
            root = Path(path).expanduser()
            resolved = root.resolve()
        except (ValueError, RuntimeError, OSError) as exc:  # NUL byte, ~unknownuser, a name too long
            raise UserError(f"Cannot index {clip(str(path))}: {exc}. Pass an existing folder, e.g. ~/src/myrepo") from None
        corpus = corpus or resolved.name or "root"
        try:
            validate_corpus_id(corpus)
        except ValueError as exc:
            raise UserError(f"{exc}. Pass --corpus with a valid id.") from None
        try:
            summary = self.indexes.build(
                root, corpus, self.settings.index, self.settings.retrieval, self.embedder(), progress, full,
                previous=self._gens.get(corpus), face=face, root_change=root_change,
            )
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:  # e.g. ENAMETOOLONG, EACCES on the root itself
            raise UserError(f"Cannot index {clip(str(path))}: {exc.strerror or exc}") from None
        self._stale.pop(corpus, None)
        return summary

    def refresh(self, corpus: str | None = None, progress=None, *, face: str = "cli"):
        corpus = self.resolve_corpus(corpus)
        gen = self.generation(corpus)
        return self.index(gen.root, corpus, progress=progress, face=face)

    def status(self, corpus: str | None = None) -> dict:
        corpus = self.resolve_corpus(corpus)
        gen = self.generation(corpus)
        stale = self.stale_count(gen, max_age=0)
        m = gen.manifest
        languages: dict[str, int] = {}
        for rec in m["files"].values():
            languages[rec["language"]] = languages.get(rec["language"], 0) + 1
        return {
            "corpus": corpus,
            "root": m["root"],
            "generation": gen.generation_id,
            "files": m["n_files"],
            "chunks": m["n_chunks"],
            "languages": dict(sorted(languages.items(), key=lambda kv: -kv[1])),
            "stale_files": stale,
            "last_indexed": m["created_at"],
            "skipped": m.get("skipped", {}),
            "embed_model": m["embed_model"],
        }


def _responsive_gil(interval: float = 0.0005) -> None:
    """A long-running server hands the GIL between threads every 0.5 ms instead of Python's 5 ms.

    A query embedding is ~70 small torch calls (retrieval/lean.py), each releasing the GIL and taking it back. While
    another thread runs Python (the background stale-file walk, another session's JSON, a training step), each
    take-back waits up to that thread's switch interval. Measured with a probe on 2 heavily shared cores (a directory
    walk in a second thread): 0.5 ms cut the median query embedding by a fifth to a quarter. (The larger part of the
    old ~250 ms tail was torch's second OpenMP thread, woken for every small kernel: queries now embed on one
    thread, see retrieval/threads.py.)
    """
    import sys

    sys.setswitchinterval(min(sys.getswitchinterval(), interval))


def _single_threaded_blas() -> None:
    """numpy/scipy BLAS on one thread for this process.

    Torch (the embedder, the cross-encoder) and OpenBLAS (numpy's dense scoring) each keep a thread pool that
    busy-waits after its work; on a 2-core laptop the two pools steal the cores from each other, which made the
    query embedding 4x slower inside a search than alone (119 ms vs 32 ms p50, measured with bench_search.py).
    Our BLAS work is a memory-bound matrix-vector product that gains nothing from a second thread.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _hit_out(h: Hit) -> SearchHit:
    c = h.chunk
    return SearchHit(
        doc_id=c.doc_id,
        path=c.path,
        start_line=c.start_line,
        end_line=c.end_line,
        language=c.language,
        symbol=c.symbol,
        text=c.text,
        score=round(float(h.score), 6),
        rerank_score=None if h.rerank_score is None else round(float(h.rerank_score), 6),
        fused_score=round(float(h.fused_score), 6),
        bm25_rank=h.bm25_rank,
        dense_rank=h.dense_rank,
    )
