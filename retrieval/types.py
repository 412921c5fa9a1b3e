"""Core value types shared by indexing, search, reranking and the event store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["Chunk", "Hit", "chunk_hash", "located_text", "parse_doc_id"]


def chunk_hash(text: str) -> str:
    """Content hash of a chunk's text (sha256, hex)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def located_text(path: str | None, symbol: str | None, text: str) -> str:
    """A chunk's text under a header line with its location: what the bi-encoder and the cross-encoder see.

    ``# boltons/socketutils.py :: BufferedSocket.close`` names what a bare method body does not (its class, its
    module), so models can match a question that names them.
    """
    if not path:
        return text
    return f"# {path}" + (f" :: {symbol}" if symbol else "") + f"\n{text}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrievable unit of code: a line range of one file.

    Lines are 1-based and inclusive. ``path`` is POSIX, relative to the corpus root.
    """

    path: str
    start_line: int
    end_line: int
    language: str
    symbol: str | None
    text: str
    hash: str

    @property
    def doc_id(self) -> str:
        return f"{self.path}:{self.start_line}-{self.end_line}"

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "language": self.language,
            "symbol": self.symbol,
            "text": self.text,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Chunk:
        return cls(
            path=d["path"],
            start_line=int(d["start_line"]),
            end_line=int(d["end_line"]),
            language=d["language"],
            symbol=d.get("symbol"),
            text=d["text"],
            hash=d["hash"],
        )

    @classmethod
    def make(
        cls, path: str, start_line: int, end_line: int, language: str, symbol: str | None, text: str
    ) -> Chunk:
        return cls(path, start_line, end_line, language, symbol, text, chunk_hash(text))


@dataclass(slots=True)
class Hit:
    """A chunk in a ranked list, with the score of every stage that touched it."""

    chunk: Chunk
    fused_score: float
    score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None
    bm25_score: float | None = None
    dense_score: float | None = None
    rerank_score: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return self.chunk.doc_id


def parse_doc_id(doc_id: str) -> tuple[str, int, int]:
    """Split ``path:start-end`` into its parts.

    Raises:
        ValueError: if the string is not of that form.
    """
    path, sep, span = doc_id.rpartition(":")
    if not sep or not path:
        raise ValueError(f"doc_id expects 'path:start-end', but got {doc_id!r}")
    start_s, dash, end_s = span.partition("-")
    if not dash or not start_s.isdigit() or not end_s.isdigit():
        raise ValueError(f"doc_id expects 'path:start-end', but got {doc_id!r}")
    start, end = int(start_s), int(end_s)
    if start < 1 or end < start:
        raise ValueError(f"doc_id line range must satisfy 1 <= start <= end, but got {doc_id!r}")
    return path, start, end
