"""What the learning loop works on, typed: the data home, the settings, the event store, the indexes and the ranking
path. The faces build one (``Engine.workspace``); ``agro pretrain`` opens a scratch one with :func:`open_workspace`.
Training code takes a :class:`Workspace`, never a face's object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.path import RankingPath
from reranker.settings import RerankerSettings
from retrieval.backend import EmbeddedIndexBackend, IndexBackend
from retrieval.settings import IndexSettings, RetrievalSettings
from training.events.store import EventStore
from training.settings import TrainingSettings

__all__ = ["LearningSettings", "Workspace", "cached_generations", "open_workspace"]


@dataclass(frozen=True)
class LearningSettings:
    """The settings the learning loop reads: how corpora are indexed and retrieved, how the rerank stage serves,
    and how runs are mined, trained and judged."""

    index: IndexSettings
    retrieval: RetrievalSettings
    reranker: RerankerSettings
    training: TrainingSettings


@dataclass
class Workspace:
    """A data home as the learning loop sees it.

    Attributes:
        home: ``AGRO_HOME`` (``models/``, ``exports/`` live under it).
        settings: see :class:`LearningSettings`.
        store: the event store (query events, feedback, jobs, evaluations, promotions).
        indexes: the index storage backend.
        path: the one ranking path, with this process's reranker (what searches serve).
        generation: corpus id -> its current index generation.
        releases: the shared release registry of a team backend, or None (embedded: local files only).
        reload: makes this process serve the release that is current now (None: nothing to reload).
        retention_days: query events older than this without feedback are compacted away (0 keeps all).
    """

    home: Path
    settings: LearningSettings
    store: EventStore
    indexes: IndexBackend
    path: RankingPath
    generation: Callable[[str], Any]
    releases: Any = None
    reload: Callable[[], Any] | None = None
    retention_days: float = 90.0

    @property
    def models_dir(self) -> Path:
        return Path(self.home) / "models"

    def corpora(self) -> list[str]:
        return self.indexes.list_corpora()

    def embedder(self) -> Any:
        return self.path.embedder()


def cached_generations(indexes: IndexBackend) -> Callable[[str], Any]:
    """corpus -> its current generation, loaded once and again only after ``current`` moves."""
    cache: dict[str, Any] = {}
    lock = threading.Lock()

    def generation(corpus: str) -> Any:
        gen_id = indexes.current_generation_id(corpus)
        got = cache.get(corpus)
        if got is None or got.generation_id != gen_id:
            got = indexes.load_current(corpus)
            with lock:
                cache[corpus] = got
        return got

    return generation


def open_workspace(home: Path, settings: LearningSettings, *, embedder: Any = None) -> Workspace:
    """An embedded workspace in ``home`` (SQLite store, index files, retrieval only: no reranker), for work that
    happens beside the served data home (``agro pretrain``'s scratch home). Close its ``store`` when done."""
    from training.events.sqlite import SqliteEventStore

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if embedder is None:
        from retrieval.embed import load_embedder

        embedder = load_embedder(settings.retrieval, batch=settings.index.embed_batch)
    indexes = EmbeddedIndexBackend(home)
    path = RankingPath(settings.retrieval, settings.reranker, lambda: embedder)
    return Workspace(home, settings, SqliteEventStore(home / "agro.db"), indexes, path, cached_generations(indexes))
