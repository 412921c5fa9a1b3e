"""Query an index generation: BM25, dense, and their reciprocal-rank fusion.

:func:`search` asks the generation to rank itself (each storage backend's generation has a ``search`` method);
:func:`rank_in_memory` is the ranking of a generation held in memory (the embedded backend's, and views).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from retrieval.globs import path_glob_regex as glob_to_regex
from retrieval.settings import RetrievalSettings
from retrieval.threads import single_threaded
from retrieval.tokenize import code_tokens
from retrieval.types import Hit

__all__ = ["Mode", "SearchResult", "dense_fusion_weight", "glob_to_regex", "query_terms", "rank_in_memory", "rrf",
           "search", "top_k_indices"]

Mode = Literal["bm25", "dense", "fused"]


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    query_terms: list[str] = field(default_factory=list)
    candidates: dict[str, int] = field(default_factory=dict)
    dense_weight: float = 1.0  # the dense side's weight in the fusion (dense_fusion_weight)


def query_terms(text: str, gen: Any, max_terms: int) -> list[str]:
    """BM25 terms of a query. A long query keeps its ``max_terms`` rarest known terms (highest IDF), with
    their repeat counts, so a pasted issue is matched on its distinctive identifiers rather than on the
    hundreds of common words around them."""
    toks = [t for t in code_tokens(text) if t in gen.lexical.vocab]
    counts = Counter(toks)
    if len(counts) <= max_terms:
        return toks
    keep = set(sorted(counts, key=lambda t: (-gen.lexical.idf_of(t), t))[:max_terms])
    return [t for t in toks if t in keep]


def top_k_indices(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores (descending, ties by index), among ``valid`` ones."""
    if valid is not None:
        idx = np.flatnonzero(valid)
        sub = scores[idx]
    else:
        idx = None
        sub = scores
    if sub.size == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, sub.size)
    part = np.argpartition(-sub, k - 1)[:k] if k < sub.size else np.arange(sub.size)
    part = part[np.lexsort((part, -sub[part]))]
    return idx[part] if idx is not None else part


def rrf(rankings: list[list[int]], k: int = 60, weights: list[float] | None = None) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum over lists of weight / (k + rank), rank 1-based (weights default 1).

    Returns (doc, score) by descending score; ties keep the order of first appearance.
    """
    scores: dict[int, float] = {}
    for i, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[i])
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
    first_seen = {}
    for ranking in rankings:
        for pos, doc in enumerate(ranking):
            first_seen.setdefault(doc, (pos, len(first_seen)))
    return sorted(scores.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))


def dense_fusion_weight(embedder, query: str, settings: RetrievalSettings) -> float:
    """The dense side's weight in RRF for ``query`` (the lexical side's is 1).

    ``settings.dense_fusion`` ``coverage``: the share of the query's tokens its vector was computed from, raised to
    ``dense_fusion_exponent``; 1 for any query that fits the embedded windows. A pasted issue of 437 tokens is
    embedded from its first 126, while BM25 reads all of it, so the dense side speaks for part of the question.
    ``equal``: 1 always (plain RRF).
    """
    if settings.dense_fusion == "equal":
        return 1.0
    coverage = getattr(embedder, "query_coverage", None)
    if coverage is None:
        return 1.0
    c = float(coverage(query))
    return 1.0 if c >= 1.0 else c ** settings.dense_fusion_exponent


def _filter_mask(gen: Any, path_glob: str | None, language: str | None) -> np.ndarray | None:
    mask = None
    if path_glob:
        mask = gen.path_mask(path_glob)
    if language:
        lm = gen.languages == language.lower()
        mask = lm if mask is None else (mask & lm)
    return mask


SCREEN_MARGIN = 64  # extra candidates the float16 screen passes on to exact rescoring


class ExactScores(dict):
    """Exact (float32) cosine scores by chunk index: the screened candidates' are stored, any other chunk's is
    computed when asked for (a BM25-only hit)."""

    def __init__(self, vectors: np.ndarray, qv: np.ndarray, known) -> None:
        super().__init__(known)
        self.vectors, self.qv = vectors, qv

    def __missing__(self, d: int) -> float:
        return float(np.dot(self.vectors[d], self.qv))


def dense_top_k(gen: Any, qv: np.ndarray, n: int, mask: np.ndarray | None) -> tuple[np.ndarray, ExactScores]:
    """The ``n`` chunks nearest to ``qv`` (descending, ties by index), exactly as a float32 scan ranks them.

    A float16 product screens every chunk and keeps the best ``n + max(n, SCREEN_MARGIN)``; those are rescored in
    float32 and ranked. The float16 error (~1e-4 on a cosine) is far below the score gap between rank n and rank
    2n, so the result is the exact one; small corpora skip the screen.
    """
    import torch

    qv = np.asarray(qv, dtype=np.float32)
    keep = n + max(n, SCREEN_MARGIN)
    # Exact scores with einsum, not BLAS: OpenBLAS wakes a helper thread per call and lets it spin, which costs
    # more CPU than these small products when several servers share the cores.
    if len(gen.chunks) <= 4 * keep:
        scores = np.einsum("ij,j->i", gen.vectors, qv)
        order = top_k_indices(scores, n, mask)
        return order, ExactScores(gen.vectors, qv, ((int(d), float(scores[d])) for d in order))
    # A copy: cached query vectors are read-only, and torch refuses (with a warning) to wrap a read-only array.
    # One thread: a memory-bound product that waits longer for a second OpenMP thread than it gains from it.
    with single_threaded():
        approx = (gen.half_vectors() @ torch.from_numpy(qv.copy()).to(torch.float16)).float().numpy()
    cand = top_k_indices(approx, keep, mask)
    exact = np.einsum("ij,j->i", gen.vectors[cand], qv)
    order = cand[np.lexsort((cand, -exact))][:n]
    return order, ExactScores(gen.vectors, qv, ((int(d), float(s)) for d, s in zip(cand, exact)))


def search(
    gen: Any,
    embedder,
    query: str,
    k: int,
    settings: RetrievalSettings,
    mode: Mode = "fused",
    path_glob: str | None = None,
    language: str | None = None,
    query_vector: np.ndarray | None = None,
    use_query_cache: bool = True,
) -> SearchResult:
    """Rank ``gen``'s chunks for ``query`` and return the top ``k`` hits; the generation ranks itself (in memory,
    or in its storage engine's own query).

    ``mode`` picks BM25 alone, dense alone, or their RRF fusion (each side contributing its top
    ``lexical_candidates`` / ``dense_candidates``). Filters restrict both sides before ranking.

    Raises:
        retrieval.globs.InvalidGlobError: ``path_glob`` is not a glob.
    """
    return gen.search(embedder, query, k, settings, mode, path_glob, language, query_vector, use_query_cache)


def rank_in_memory(
    gen: Any,
    embedder,
    query: str,
    k: int,
    settings: RetrievalSettings,
    mode: Mode = "fused",
    path_glob: str | None = None,
    language: str | None = None,
    query_vector: np.ndarray | None = None,
    use_query_cache: bool = True,
) -> SearchResult:
    """:func:`search` over a generation held in memory (``chunks``, ``vectors``, ``lexical``, ``languages``,
    ``path_mask``)."""
    timings: dict[str, float] = {}
    mask = _filter_mask(gen, path_glob, language)
    bm25_order: np.ndarray = np.zeros(0, dtype=np.int64)
    dense_order: np.ndarray = np.zeros(0, dtype=np.int64)
    bm25_scores = dense_scores = None
    terms: list[str] = []
    w_dense = 1.0

    if mode in ("bm25", "fused"):
        t = time.perf_counter()
        terms = query_terms(query, gen, settings.max_query_terms)
        bm25_scores = gen.lexical.scores(terms)
        valid = bm25_scores > 0
        if mask is not None:
            valid &= mask
        n = settings.lexical_candidates if mode == "fused" else k
        bm25_order = top_k_indices(bm25_scores, n, valid)
        timings["lexical"] = (time.perf_counter() - t) * 1000

    if mode in ("dense", "fused") and len(gen.chunks):
        t = time.perf_counter()
        qv = query_vector if query_vector is not None else embedder.encode_query(query, cache=use_query_cache)
        timings["embed_query"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        n = settings.dense_candidates if mode == "fused" else k
        dense_order, dense_scores = dense_top_k(gen, qv, n, mask)
        timings["dense"] = (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    bm25_rank = {int(d): r for r, d in enumerate(bm25_order, start=1)}
    dense_rank = {int(d): r for r, d in enumerate(dense_order, start=1)}
    if mode == "bm25":
        ranked = [(int(d), float(bm25_scores[d])) for d in bm25_order[:k]]
    elif mode == "dense":
        ranked = [(int(d), float(dense_scores[d])) for d in dense_order[:k]]
    else:
        w_dense = dense_fusion_weight(embedder, query, settings)
        ranked = rrf([bm25_order.tolist(), dense_order.tolist()], settings.rrf_k, [1.0, w_dense])[:k]
    hits = []
    for d, s in ranked:
        hits.append(
            Hit(
                chunk=gen.chunks[d],
                fused_score=s,
                score=s,
                bm25_rank=bm25_rank.get(d),
                dense_rank=dense_rank.get(d),
                bm25_score=float(bm25_scores[d]) if bm25_scores is not None and d in bm25_rank else None,
                dense_score=dense_scores[d] if dense_scores is not None else None,
            )
        )
    timings["fusion"] = (time.perf_counter() - t) * 1000
    return SearchResult(hits=hits, timings=timings, query_terms=terms,
                        candidates={"bm25": len(bm25_order), "dense": len(dense_order)}, dense_weight=w_dense)
