"""Structured outputs of the MCP tools (DESIGN.md section 4)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["SearchHit", "SearchResponse", "IndexResponse", "FeedbackResponse", "AnswerResponse", "Citation"]


class SearchHit(BaseModel):
    doc_id: str = Field(description="path:start-end; pass it to submit_feedback")
    path: str
    start_line: int
    end_line: int
    language: str
    symbol: str | None
    text: str
    score: float = Field(description="final ranking score")
    rerank_score: float | None = None
    fused_score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None


class SearchResponse(BaseModel):
    event_id: str = Field(description="Refer to this in submit_feedback")
    corpus: str
    query: str
    results: list[SearchHit]
    reranking_used: bool
    reranker_model: str | None = None
    reranker_fallback_reason: str | None = None
    index_generation: str
    index_stale_files: int = Field(description="files added/changed/deleted on disk since the index was built")
    timings_ms: dict[str, float]
    note: str | None = None


class IndexResponse(BaseModel):
    action: str
    corpus: str | None = None
    data: dict


class FeedbackResponse(BaseModel):
    feedback_id: str
    event_id: str
    signal: str
    created: bool = Field(description="false when this exact feedback was already recorded")
    message: str


class Citation(BaseModel):
    doc_id: str
    path: str
    start_line: int
    end_line: int


class AnswerResponse(BaseModel):
    event_id: str
    answer: str | None
    mode: str = Field(description="'sampling', 'endpoint' or 'context'")
    citations: list[Citation]
    dropped_citations: list[str] = Field(default_factory=list)
    context: str
    note: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
