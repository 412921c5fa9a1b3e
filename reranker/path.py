"""The one ranking path: fused retrieval, then the rerank stage, then the blend.

``rag_search`` (through ``Engine.rank``), the evaluator, the miners, calibration and the promotion gate all rank
through a :class:`RankingPath`, so an evaluation scores exactly what a search serves. No other module composes
retrieval and reranking. A path is cheap to copy: :meth:`RankingPath.with_reranker` gives the same retrieval with
another second stage (a candidate, a release loaded for the gate, a blend weight under calibration).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from reranker.cache import ScoreCache
from reranker.manager import LoadedReranker, RerankerManager
from reranker.settings import RerankerSettings
from reranker.model import clean_text
from reranker.stage import RerankOutcome, long_query_reason, rerank, retrieval_scores
from retrieval.search import Mode, SearchResult, search
from retrieval.settings import RetrievalSettings
from retrieval.types import Hit

__all__ = ["Ranked", "RankingPath", "RetrievalBlend"]


@dataclass(frozen=True, slots=True)
class RetrievalBlend:
    """A second stage without a model: the head ordered by the blend's retrieval side alone,
    ``(1 - w) * minmax(fused) + w * minmax(dense)``. Calibration weighs ``w`` with it before any model is trained."""

    dense_weight: float


SecondStage = RerankerManager | LoadedReranker | RetrievalBlend | None


@dataclass(slots=True)
class Ranked:
    """A ranking and how it came about.

    Attributes:
        hits: best first, at most the ``k`` asked for.
        timings: ms per stage (``lexical``, ``embed_query``, ``dense``, ``fusion``, ``rerank``, ``total``).
        reranking_used: the second stage reordered the head.
        reranker_model: the model that ran (or would have), if any.
        fallback_reason: why the fused order was kept, or None.
        kept_fused: the fused order was kept by design (a query too long for the release), not by a failure.
    """

    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    reranking_used: bool = False
    reranker_model: str | None = None
    fallback_reason: str | None = None
    kept_fused: bool = False


@dataclass(frozen=True)
class RankingPath:
    """Fused retrieval over an index generation, then the rerank stage on its head, then the blend.

    Args:
        retrieval: BM25, dense and fusion settings.
        settings: the rerank stage's settings (enabled, topn, alpha, batch, timeout…).
        embedder: returns the query embedder (called on each ranking, so a server can load it in the background).
        reranker: the second stage: the process's :class:`RerankerManager` (hot-reloaded releases), one loaded
            model, a :class:`RetrievalBlend`, or None (retrieval alone).
        cache: rerank score cache shared by the rankings of this path (optional).
    """

    retrieval: RetrievalSettings
    settings: RerankerSettings
    embedder: Callable[[], Any]
    reranker: SecondStage = None
    cache: ScoreCache | None = None

    def with_reranker(self, reranker: SecondStage, settings: RerankerSettings | None = None,
                      cache: ScoreCache | None = None) -> RankingPath:
        """The same retrieval with another second stage (and, optionally, other stage settings or cache)."""
        return dataclasses.replace(self, reranker=reranker, settings=settings or self.settings, cache=cache)

    def candidates(self, gen: Any, k: int, rerank_on: bool) -> int:
        """How many fused hits to retrieve: the rerank head (``topn``, 0 = every chunk) when reranking, else ``k``."""
        if not rerank_on:
            return k
        return max(k, self.settings.topn if self.settings.topn > 0 else gen.n_chunks)

    def retrieve(self, gen: Any, query: str, k: int, mode: Mode = "fused", *, path_glob: str | None = None,
                 language: str | None = None, exclude_paths: Collection[str] = (),
                 use_query_cache: bool = True) -> SearchResult:
        """The first stage alone: BM25, dense or their fusion, top ``k`` (hits under ``exclude_paths`` dropped)."""
        res = search(gen, self.embedder(), query, k, self.retrieval, mode, path_glob, language,
                     use_query_cache=use_query_cache)
        if exclude_paths:
            res.hits = [h for h in res.hits if h.chunk.path not in exclude_paths]
        return res

    def rank(self, gen: Any, query: str, k: int, *, rerank: bool | None = None, path_glob: str | None = None,
             language: str | None = None, exclude_paths: Collection[str] = (),
             use_query_cache: bool = True) -> Ranked:
        """Retrieve, fuse and (unless ``rerank`` is False, or None with the stage disabled) rerank and blend.

        The stage never fails a ranking: when it cannot run, the fused order comes back with ``fallback_reason``.
        """
        t0 = time.perf_counter()
        rerank_on = self.settings.enabled if rerank is None else bool(rerank)
        n = self.candidates(gen, k, rerank_on)
        early = self._query_ahead(query) if rerank_on else None
        res = self.retrieve(gen, query, n, "fused", path_glob=path_glob, language=language,
                            exclude_paths=exclude_paths, use_query_cache=use_query_cache)
        timings = dict(res.timings)
        if not rerank_on:
            reason = ("disabled for this call (rerank=false)" if rerank is False
                      else "reranker disabled (AGRO_RERANKER_ENABLED=0)")
            out = Ranked(res.hits, timings, fallback_reason=reason)
        elif not res.hits:
            out = Ranked([], timings, fallback_reason="no candidates to rerank")
        else:
            stage, reason = self._stage()
            if stage is None:
                out = Ranked(res.hits, timings, fallback_reason=reason)
            else:
                if early is not None:  # the stage's own deadline still bounds the wait
                    early.join(None if self.settings.timeout_ms is None else self.settings.timeout_ms / 1000.0)
                outcome = self._run(stage, query, res.hits)
                timings["rerank"] = outcome.ms
                out = Ranked(outcome.hits, timings, outcome.used, outcome.model, outcome.fallback_reason,
                             outcome.kept_fused)
        out.hits = out.hits[:k]
        out.timings["total"] = (time.perf_counter() - t0) * 1000
        return out

    def rerank(self, query: str, hits: list[Hit]) -> RerankOutcome:
        """The second stage on ``hits`` (fused, best first; not modified): rerank the head and blend."""
        stage, reason = self._stage()
        if stage is None:
            return RerankOutcome(list(hits), False, None, reason, 0.0, 0)
        return self._run(stage, query, hits)

    def _query_ahead(self, query: str) -> threading.Thread | None:
        """A bi-encoder release embeds the query with its own model: start that beside the retrieval's query
        embedding (it lands in the release embedder's query cache, where its scoring finds it), so a served release
        adds a lookup to the search, not a second forward pass after the first. None when there is nothing to start
        (no model loaded yet, a cross-encoder, a query the release keeps in the fused order)."""
        stage = self.reranker
        loaded = stage.get() if isinstance(stage, RerankerManager) else stage
        embedder = getattr(getattr(loaded, "scorer", None), "embedder", None)
        if embedder is None or not isinstance(loaded, LoadedReranker) or long_query_reason(query, loaded,
                                                                                          self.settings):
            return None
        t = threading.Thread(target=embedder.encode_query, args=(clean_text(query),), name="agro-query-ahead",
                             daemon=True)
        t.start()
        return t

    def _stage(self) -> tuple[LoadedReranker | RetrievalBlend | None, str | None]:
        """The second stage ready to run, or None and why not (waits for a manager's first load)."""
        stage = self.reranker
        if isinstance(stage, RerankerManager):
            stage.start()  # idempotent: a caller that never started the loader still gets a model
            loaded = stage.get(wait=True)
            return (loaded, None) if loaded is not None else (None, stage.none_reason or "no reranker model loaded")
        if stage is None:
            return None, "no reranker model loaded"
        return stage, None

    def _run(self, stage: LoadedReranker | RetrievalBlend, query: str, hits: list[Hit]) -> RerankOutcome:
        if isinstance(stage, RetrievalBlend):
            return _retrieval_order(hits, self.settings.topn, stage.dense_weight)
        return rerank(query, hits, stage, self.settings, self.cache)


def _retrieval_order(hits: list[Hit], topn: int, dense_weight: float) -> RerankOutcome:
    t0 = time.perf_counter()
    n = len(hits) if topn == 0 else min(topn, len(hits))
    head = hits[:n]
    s = retrieval_scores([h.fused_score for h in head], [h.dense_score for h in head], dense_weight)
    order = sorted(range(n), key=lambda i: -s[i])  # stable: ties keep fused order
    return RerankOutcome([head[i] for i in order] + list(hits[n:]), True, f"retrieval-blend:{dense_weight:g}", None,
                         (time.perf_counter() - t0) * 1000.0, 0)
