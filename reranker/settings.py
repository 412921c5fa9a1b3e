"""Settings for the rerank stage (environment prefix AGRO_RERANKER_; agro.toml table [reranker])."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from retrieval.settings import AgroSettings

__all__ = ["RerankerSettings"]


class RerankerSettings(AgroSettings):
    """How the fused head is reranked and blended."""

    model_config = SettingsConfigDict(env_prefix="AGRO_RERANKER_")
    section: ClassVar[str] = "reranker"

    enabled: bool = Field(True, description="Rerank by default (rag_search(rerank=false) skips it per call).")
    model_path: str | None = Field(
        None,
        description="Local folder or hub id (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2); overrides models/current."
    )
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the reranker score in the blend; unset = the release's own weight."
    )
    dense_weight: float = Field(
        0.5, ge=0, le=1,
        description="Share of the dense cosine in the retrieval side of the blend (unset = the release's)."
    )
    topn: int = Field(50, ge=0, description="Fused candidates reranked (0 = all).")
    batch: int = Field(16, ge=1, description="Pairs per forward pass (sorted by length, padded per batch).")
    maxlen: int = Field(256, ge=32, le=512, description="Tokens per (query, chunk) pair.")
    query_max_tokens: int = Field(64, ge=8, description="Cap on the query's share of that window.")
    long_query_factor: float = Field(
        2.0, ge=0, description="Keep the fused order for queries longer than this x the release's longest (0 = never)."
    )
    long_query_mode: Literal["fused", "windows"] = Field(
        "fused", description="A query past that limit: fused = keep the fused order; windows = score it in windows."
    )
    long_query_pool: Literal["mean", "max"] = Field(
        "max", description="How a candidate's window scores are pooled in windows mode."
    )
    long_query_windows: int = Field(4, ge=1, description="Most windows a long query is read in (windows mode).")
    backend: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="Precision; auto = bf16 with native bf16, else int8 with VNNI, else fp32."
    )
    timeout_ms: int | None = Field(None, ge=1, description="Past this, return the fused order (with the reason).")
    prewarm: bool = Field(
        True, description="agro serve: embed the indexed chunks with a new bi-encoder release in the background."
    )
    shipped_vectors: bool = Field(
        True, description="Load a bi-encoder release's shipped chunk vectors before it serves; keep refreshed ones."
    )
    reload_on_change: bool = Field(True, description="Watch models/current and hot-reload a new release.")
    reload_period_sec: float = Field(60.0, gt=0, description="How often to check models/current, in seconds.")
    cache_size: int = Field(50_000, ge=0, description="Cached (release, query, chunk) scores.")
    threads: int | None = Field(None, ge=1, description="torch threads (unset = all cores).")
