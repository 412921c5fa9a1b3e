"""The storage interface for indexes: one object the pipeline talks to, whichever backend is live.

``open_index_backend`` returns the embedded backend (generations as files under ``AGRO_HOME/indexes``) or the
PostgreSQL one (``retrieval.pg_index``). Both build through the one flow of ``retrieval.build`` (each provides its
:class:`retrieval.build.GenerationStore` part) and give generations the same view (:class:`IndexView`), which
ranks itself: :func:`retrieval.search.search` calls ``view.search``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval import index as _index
from retrieval.build import IndexSummary
from retrieval.index import EmbeddedStore, IndexGeneration
from retrieval.settings import IndexSettings, RetrievalSettings
from retrieval.types import Chunk

__all__ = ["EmbeddedIndexBackend", "IndexBackend", "IndexView", "open_index_backend"]


class IndexView(Protocol):
    """A published generation of one corpus, as every backend offers it."""

    corpus: str
    generation_id: str
    manifest: dict  # root, files, n_chunks, embed_model, skipped, excluded, ...

    @property
    def root(self) -> Path: ...

    @property
    def files(self) -> dict[str, dict]: ...

    @property
    def embed_model(self) -> str: ...

    @property
    def n_chunks(self) -> int: ...

    @property
    def chunks(self) -> list[Chunk]: ...

    def some_chunks(self, limit: int) -> list[Chunk]: ...

    def search(self, embedder, query: str, k: int, settings: RetrievalSettings, mode: str = "fused",
               path_glob: str | None = None, language: str | None = None,
               query_vector: np.ndarray | None = None, use_query_cache: bool = True): ...


class IndexBackend(Protocol):
    name: str

    def list_corpora(self) -> list[str]: ...

    def current_generation_id(self, corpus: str) -> str | None: ...

    def load_current(self, corpus: str) -> IndexView: ...

    def build(
        self,
        root: Path,
        corpus: str,
        index_settings: IndexSettings,
        retrieval_settings: RetrievalSettings,
        embedder,
        progress: Callable[[str, int, int], None] | None = None,
        full: bool = False,
        previous=None,
        **reach,
    ) -> IndexSummary:
        """``reach``: ``face`` (``cli`` or ``mcp``), ``root_change`` (see ``retrieval.reach``)."""

    def close(self) -> None: ...


class EmbeddedIndexBackend(EmbeddedStore):
    """Generations as immutable folders under ``home/indexes/<corpus>``, published by symlink."""

    name = "embedded"

    def list_corpora(self) -> list[str]:
        return _index.list_corpora(self.home)

    def load_current(self, corpus: str) -> IndexGeneration:
        return _index.load_current(self.home, corpus)

    def build(self, root, corpus, index_settings, retrieval_settings, embedder, progress=None, full=False,
              previous=None, **reach) -> IndexSummary:
        return _index.build_index(root, corpus, self.home, index_settings, retrieval_settings, embedder, progress,
                                  full, previous=previous, **reach)

    def close(self) -> None:
        pass


def open_index_backend(home: Path, backend: str = "embedded", database_url: str | None = None,
                       pool_size: int = 8) -> IndexBackend:
    """The index backend named by ``AGRO_BACKEND`` (``embedded`` or ``postgres``)."""
    if backend == "embedded":
        return EmbeddedIndexBackend(home)
    if backend == "postgres":
        from retrieval.pg_index import PgIndexBackend
        from retrieval.pgdb import open_database

        return PgIndexBackend(open_database(database_url, pool_size), home)
    raise ValueError(f"AGRO_BACKEND expects 'embedded' or 'postgres', but got {backend!r}")
