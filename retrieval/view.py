"""An in-memory view of an index generation with some chunk texts replaced.

The promotion gate needs one: a corpus-bootstrap question is a chunk's own docstring, and scored against the live
index (where that docstring is still inside the chunk) retrieval finds it almost verbatim, so retrieval alone looks
unbeatable and a reranker that helps real questions is refused. The gate scores such questions on a view in which
the answers' docstrings are gone, as in a real question about code that does not quote it.

A view is built from any backend's chunks and vectors (the embedded generation, or the PostgreSQL corpus read once)
and searched by the embedded code path, which ranks exactly as the PostgreSQL statement does. Only the replaced
chunks are embedded again; BM25 is rebuilt over the corpus. Nothing is written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.build import document_text, document_tokens
from retrieval.index import IndexGeneration
from retrieval.lexical import BM25Index
from retrieval.types import Chunk

__all__ = ["replaced_view"]

logger = logging.getLogger(__name__)


def _source(gen: Any) -> tuple[list[Chunk], np.ndarray]:
    if isinstance(gen, IndexGeneration):
        return gen.chunks, gen.vectors
    chunks = list(gen.chunks)
    vectors = gen.backend.all_vectors(gen.corpus)  # PostgreSQL: in all_chunks order
    if len(vectors) != len(chunks):
        raise RuntimeError(f"corpus {gen.corpus}: {len(chunks)} chunks but {len(vectors)} vectors; reindex it")
    return chunks, vectors


def replaced_view(gen: Any, texts: Mapping[str, str], embedder: Any, retrieval_settings: Any) -> IndexGeneration:
    """``gen`` with the chunk of each doc_id in ``texts`` holding that text instead (unknown doc_ids are ignored).

    Args:
        gen: an embedded :class:`IndexGeneration` or a PostgreSQL view (``.chunks``, ``.backend``, ``.corpus``).
        texts: doc_id (``path:start-end``) -> replacement text; the chunk keeps its location and symbol.
        embedder: the index's embedder (the replaced chunks are embedded with it).
        retrieval_settings: BM25 parameters.
    """
    chunks, vectors = _source(gen)
    chunks = list(chunks)
    rows = [i for i, c in enumerate(chunks) if c.doc_id in texts and texts[c.doc_id] != c.text]
    for i in rows:
        c = chunks[i]
        chunks[i] = Chunk.make(c.path, c.start_line, c.end_line, c.language, c.symbol, texts[c.doc_id])
    vectors = np.array(vectors, dtype=np.float32, copy=True)
    if rows:
        vectors[rows] = embedder.encode_documents([document_text(chunks[i]) for i in rows])
    lexical = BM25Index.from_token_lists((document_tokens(c) for c in chunks), k1=retrieval_settings.bm25_k1,
                                         b=retrieval_settings.bm25_b)
    manifest = dict(gen.manifest)
    logger.info("view of %s: %d of %d chunks replaced", gen.corpus, len(rows), len(chunks))
    return IndexGeneration(
        corpus=gen.corpus, generation_id=f"{gen.generation_id}+view{len(rows)}",
        path=Path(getattr(gen, "path", "") or "."), manifest=manifest, chunks=chunks, vectors=vectors,
        lexical=lexical, languages=np.array([c.language for c in chunks], dtype=object),
        paths=np.array([c.path for c in chunks], dtype=object),
    )
