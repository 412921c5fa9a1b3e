"""An evaluation run over the search pipeline: BM25, dense, fused, fused + reranker and fused + candidate on a
dataset, indexing the corpora it needs first."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reranker.manager import LoadedReranker
from reranker.path import RankingPath
from reranker.settings import RerankerSettings
from training.evaluation.datasets import BenchSet, EvalError, EvalQuery, load_dataset, self_paths
from training.evaluation.evaluate import CONFIGS, LEVELS, RUN_TOP_K, EvalReport, RankFn, Ranking, evaluate

__all__ = ["load_reranker", "run_evaluation"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- pipeline


def _ensure_index(backend: Any, corpus: str, root: Path | None, index_settings, retrieval_settings, embedder):
    """The current generation of ``corpus`` in ``backend``, built from ``root`` first when there is none."""
    from retrieval.index import IndexVersionError, NoIndexError

    try:
        gen = backend.load_current(corpus)
    except IndexVersionError:
        if root is None:
            raise
        gen = None  # written by another format: the build rebuilds it from scratch
    except NoIndexError as exc:
        if root is None:
            raise EvalError(
                f"No index for corpus {corpus!r}. Run: agro index /path/to/repo --corpus {corpus}"
            ) from exc
        gen = None
    if gen is not None:
        if root is not None and Path(gen.root).resolve() != root.resolve():
            # An indexed corpus's root is fixed: a dataset found elsewhere never re-roots (or re-indexes) it.
            logger.warning("corpus %s is indexed from %s; the dataset's folder %s is not indexed in its place",
                           corpus, gen.root, root)
        logger.info("Reusing index %s of corpus %s", gen.generation_id, corpus)
        return gen
    logger.info("Indexing %s as corpus %s", root, corpus)
    backend.build(root, corpus, index_settings, retrieval_settings, embedder)
    return backend.load_current(corpus)


def _model_manifest(model_dir: Path) -> dict[str, Any] | None:
    """A release folder's ``manifest.json``, or for a run's ``model/`` folder its ``run.json`` (both may carry the
    calibrated ``blend``); None for any other folder or hub id."""
    for p in (model_dir / "manifest.json", model_dir.parent / "run.json"):
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and (p.name == "manifest.json" or model_dir.name == "model"):
            return m
    return None


def load_reranker(model_ref: str | Path, settings: RerankerSettings, *, release_id: str | None = None,
                  manifest: dict[str, Any] | None = None) -> LoadedReranker:
    """Load a cross-encoder (a candidate run or a release folder) to rank with as it would be served.

    It is blended with the calibrated alpha of ``manifest`` (default: the release's ``manifest.json`` or the run's
    ``run.json``), unless the settings set alpha explicitly.

    Raises:
        reranker.model.RerankerLoadError: when the folder holds no usable cross-encoder.
    """
    from reranker.model import load_scorer

    scorer = load_scorer(
        model_ref, backend=settings.backend, maxlen=settings.maxlen, query_max_tokens=settings.query_max_tokens,
        threads=settings.threads, release_id=release_id,
    )
    # The manifest's ``blend`` (a calibrated alpha) weighs this model as serving would.
    if manifest is None:
        manifest = _model_manifest(Path(model_ref))
    return LoadedReranker(scorer=scorer, model_id=release_id or str(model_ref), release_id=release_id,
                          target=str(model_ref), manifest=manifest)


def run_evaluation(
    dataset: str | Path | Sequence[EvalQuery] | BenchSet,
    home: Path,
    index_settings: Any = None,
    retrieval_settings: Any = None,
    *,
    configs: Sequence[str] = ("bm25", "dense", "fused", "fused+rerank"),
    rerank_path: RankingPath | None = None,
    candidate_model: str | None = None,
    candidate_path: RankingPath | None = None,
    reranker_settings: RerankerSettings | None = None,
    model: str | None = None,
    roots: Mapping[str, Path] | None = None,
    embedder: Any = None,
    levels: Sequence[str] = LEVELS,
    limit: int | None = None,
    k: int = RUN_TOP_K,
    progress: Callable[[int, int], None] | None = None,
    index_backend: Any = None,
    generations: Mapping[str, Any] | None = None,
    use_query_cache: bool = False,
) -> EvalReport:
    """Index what the dataset needs (reusing existing indexes), run the configurations, return the report.

    Args:
        dataset: a golden.json path (or the folder holding it), a bench collection folder, a :class:`BenchSet`, or
            held-out feedback questions (see :func:`queries_from_feedback`).
        home: data home holding ``indexes/``. Bench corpora are indexed there as ``bench-docstring_<name>`` or
            ``bench-swe-<instance_id>``.
        index_settings, retrieval_settings: defaults when None.
        configs: among ``bm25``, ``dense``, ``fused``, ``fused+rerank``; ``fused+candidate`` is added when a
            candidate is given.
        rerank_path: the ranking path with the current reranker (required for ``fused+rerank``). Its second stage
            (reranker, stage settings, cache) ranks this evaluation's fused candidates, exactly as a search does.
        candidate_model: folder of a candidate cross-encoder, loaded with ``reranker_settings`` (see
            :func:`load_reranker`) unless ``candidate_path`` is given.
        candidate_path: the ranking path with the candidate's second stage (``fused+candidate``).
        model: id of the current reranker, recorded in the report.
        roots: corpus id -> folder, for corpora not indexed yet (golden.json's own folder is known).
        limit: score only the first ``limit`` queries (smoke runs).
        k: results kept per query (Recall@50 needs at least 50).
        use_query_cache: reuse query vectors across configurations and calls (training's repeated passes over the
            same questions, where latency is not measured); off by default so every config pays for its own.
        index_backend: where the corpora are indexed (``Engine.indexes``); default: the embedded backend in ``home``.
        generations: corpus -> generation to search instead of the corpus's current one (the gate's views).

    Raises:
        EvalError: on an empty set, an unknown config, a missing reranker or a corpus with no index and no root.
    """
    name, queries, known_roots = load_dataset(dataset, roots)
    excluded = self_paths(dataset, known_roots)
    if limit is not None:
        queries = queries[:limit]
    if not queries:
        raise EvalError(f"The evaluation set {name!r} is empty: no queries to score.")
    configs = list(configs)
    if (candidate_model or candidate_path) and "fused+candidate" not in configs:
        configs.append("fused+candidate")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise EvalError(f"configs expects values among {CONFIGS}, but got {unknown}")
    if "fused+rerank" in configs and rerank_path is None:
        raise EvalError("config 'fused+rerank' needs a reranker (rerank_path); pass one or drop the config")
    if "fused+candidate" in configs and candidate_path is None and candidate_model is None:
        raise EvalError("config 'fused+candidate' needs candidate_model or candidate_path")

    from retrieval.embed import load_embedder
    from retrieval.settings import IndexSettings, RetrievalSettings

    index_settings = index_settings or IndexSettings()
    retrieval_settings = retrieval_settings or RetrievalSettings()
    reranker_settings = reranker_settings or RerankerSettings()
    embedder = embedder or load_embedder(retrieval_settings)
    base = RankingPath(retrieval_settings, reranker_settings, lambda: embedder)
    stages: dict[str, RankingPath] = {}
    if "fused+rerank" in configs:
        stages["fused+rerank"] = base.with_reranker(rerank_path.reranker, rerank_path.settings,  # type: ignore[union-attr]
                                                    rerank_path.cache)  # type: ignore[union-attr]
    if "fused+candidate" in configs:
        if candidate_path is None:
            candidate_path = base.with_reranker(load_reranker(candidate_model, reranker_settings))  # type: ignore[arg-type]
        stages["fused+candidate"] = base.with_reranker(candidate_path.reranker, candidate_path.settings,
                                                       candidate_path.cache)
    if index_backend is None:
        from retrieval.backend import EmbeddedIndexBackend

        index_backend = EmbeddedIndexBackend(home)
    gens = {
        c: (generations or {}).get(c)
        or _ensure_index(index_backend, c, known_roots.get(c), index_settings, retrieval_settings, embedder)
        for c in dict.fromkeys(q.corpus for q in queries)
    }

    def searcher(mode: str) -> RankFn:
        def fn(q: EvalQuery) -> Ranking:
            # No query-vector cache by default: every config pays for its own query embedding, so latencies compare.
            res = base.retrieve(gens[q.corpus], q.query, k, mode, exclude_paths=excluded.get(q.corpus, ()),
                                use_query_cache=use_query_cache)
            return Ranking(res.hits, dict(res.timings))

        return fn

    def ranked(path: RankingPath) -> RankFn:
        def rank(q: EvalQuery) -> Ranking:
            r = path.rank(gens[q.corpus], q.query, k, rerank=True, exclude_paths=excluded.get(q.corpus, ()),
                          use_query_cache=use_query_cache)
            # A query the release keeps in the fused order by design (``long_query_factor``) is scored in that
            # order, as it is served; any other fallback must not be scored as the reranker.
            if r.hits and not r.reranking_used and not r.kept_fused:
                raise EvalError(f"the reranker did not run ({r.fallback_reason}); fix it or drop the config")
            return Ranking(r.hits, r.timings)

        return rank

    table: dict[str, RankFn] = {c: ranked(stages[c]) if c in stages else searcher(c) for c in configs}
    report = evaluate(queries, table, levels, name=name, model=model, progress=progress)
    if candidate_model:
        report.notes.append(f"candidate: {candidate_model}")
    return report
