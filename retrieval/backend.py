"""The storage interface for indexes: one object the pipeline talks to, whichever backend is live.

``open_index_backend`` returns the embedded backend (generations as files under ``AGRO_HOME/indexes``) or the
PostgreSQL one (``retrieval.pg_index``). Both give the same methods, and their generations the same view:
``corpus``, ``generation_id``, ``manifest`` (root, files, n_chunks, embed_model, ...), ``root``, ``files``,
``embed_model``, ``n_chunks``, ``chunks`` and, through :func:`retrieval.search.search`, the same ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from retrieval import index as _index
from retrieval.index import IndexGeneration, IndexSummary
from retrieval.settings import IndexSettings, RetrievalSettings

__all__ = ["EmbeddedIndexBackend", "IndexBackend", "open_index_backend"]


class IndexBackend(Protocol):
    name: str

    def list_corpora(self) -> list[str]: ...

    def current_generation_id(self, corpus: str) -> str | None: ...

    def load_current(self, corpus: str): ...

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
    ) -> IndexSummary: ...

    def close(self) -> None: ...


class EmbeddedIndexBackend:
    """Generations as immutable folders under ``home/indexes/<corpus>``, published by symlink."""

    name = "embedded"

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    def list_corpora(self) -> list[str]:
        return _index.list_corpora(self.home)

    def current_generation_id(self, corpus: str) -> str | None:
        return _index.current_generation_id(self.home, corpus)

    def load_current(self, corpus: str) -> IndexGeneration:
        return _index.load_current(self.home, corpus)

    def build(self, root, corpus, index_settings, retrieval_settings, embedder, progress=None, full=False,
              previous=None) -> IndexSummary:
        return _index.build_index(root, corpus, self.home, index_settings, retrieval_settings, embedder, progress,
                                  full, previous=previous)

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
