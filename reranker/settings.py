"""Settings for the cross-encoder stage (env prefix AGRO_RERANKER_)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RerankerSettings"]


class RerankerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    model_path: str | None = Field(
        None, description="Local dir or hub id; overrides the promoted release at AGRO_HOME/models/current."
    )
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the cross-encoder score in the blend.")
    dense_weight: float = Field(
        0.5, ge=0, le=1,
        description="Share of the dense (bi-encoder) cosine in the retrieval side of the blend: "
        "(1 - alpha) * ((1 - w) * minmax(fused) + w * minmax(dense)). Unset: the release's (the loop moves it from "
        "this default only when its training questions clearly prefer another), else this. Measured on the "
        "docstring test halves with loop candidates at alpha 0.3 (bench_learning --blend-grid): 0.5 ranked better "
        "than 0 (fused alone) at span level on all three collections (+7%, +2%, +11%) and at file level on two.",
    )
    topn: int = Field(50, ge=0, description="Fused candidates reranked (0 = all).")
    batch: int = Field(
        16, ge=1,
        description="Pairs per forward pass. Pairs are sorted by token length and each batch is padded only to its "
        "longest pair, so short chunks do not pay for the full window.",
    )
    maxlen: int = Field(256, ge=32, le=512, description="Tokens per (query, chunk) pair.")
    query_max_tokens: int = Field(64, ge=8, description="Cap on the query's share of the window.")
    long_query_factor: float = Field(
        2.0, ge=0,
        description="Keep the fused order for a query with more tokens than this factor times the longest question "
        "the release was trained on (at least query_max_tokens): far out of what it learned from. 0 = always rerank. "
        "Measured: corpus-bootstrap releases (docstring questions, at most 21-115 tokens) lowered fused MRR@10 on the "
        "SWE-bench issue texts (159-2,226 tokens) from 0.640 to 0.433 (cross-encoders); bi-encoder bootstrap releases "
        "from 0.679 to 0.562 on 20 of the corpora (0.654 with this rule).",
    )
    long_query_mode: Literal["fused", "windows"] = Field(
        "fused",
        description="What a query past the long-query limit gets: fused = the fused order is kept; windows = the "
        "query is cut into windows of query_max_tokens tokens, each candidate is scored against each window and "
        "the scores are pooled (long_query_pool; costs one pass over the candidates per window).",
    )
    long_query_pool: Literal["mean", "max"] = Field(
        "max",
        description="How a candidate's window scores are pooled: mean (what the whole query says) or max (its best "
        "window decides).",
    )
    long_query_windows: int = Field(
        4, ge=1,
        description="Most windows a long query is read in (long_query_mode windows): the first, and the ones whose "
        "words best single out candidates.",
    )
    backend: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="auto: bf16 when the CPU has native bf16 (AMX or avx512_bf16), else int8 when it has VNNI "
        "(avx512_vnni, avx_vnni), else fp32. int8 = torch dynamic quantisation of the encoder's linear layers "
        "(head kept fp32): ~1.4x faster than fp32 on a 2-core AVX-512 VNNI CPU, MRR@10 within 1% of fp32. bf16 "
        "without native support runs ~4x slower than fp32.",
    )
    timeout_ms: int | None = Field(None, ge=1, description="Fall back to fused order past this.")
    prewarm: bool = Field(
        True,
        description="When a bi-encoder release loads, embed the indexed chunks with it in a background thread (at "
        "most its 20k-vector cache, at about half of one core's time) so first searches on the new release do not "
        "embed each unseen candidate (~15-25 ms apiece on 2 cores). Searches never wait for it.",
    )
    reload_on_change: bool = True
    reload_period_sec: float = Field(60.0, gt=0)
    cache_size: int = Field(50_000, ge=0, description="Cached (release, query, chunk) scores.")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores).")
