"""Settings for indexing and retrieval (env prefixes AGRO_INDEX_ and AGRO_RETRIEVAL_)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DEFAULT_IGNORES", "DEFAULT_SECRET_PATTERNS", "IndexSettings", "RetrievalSettings"]

DEFAULT_IGNORES: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", "node_modules/", "dist/", "build/", ".venv/", "venv/", "env/",
    "__pycache__/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".tox/", ".nox/", "target/",
    "vendor/", "third_party/", ".idea/", ".vscode/", "*.egg-info/", ".next/", "coverage/",
    "*.min.js", "*.min.css", "*.map", "package-lock.json", "yarn.lock", "pnpm-lock.yaml",
    "poetry.lock", "Cargo.lock", "Pipfile.lock", "uv.lock", "composer.lock", "go.sum", "Gemfile.lock",
)

DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    ".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".pgpass", ".npmrc", ".pypirc",
    "credentials", "credentials.json", "*credentials*.json", "secrets.json", "secrets.yaml",
    "secrets.yml", "*.secret", "service-account*.json", ".htpasswd", ".git-credentials",
    "*.tfstate", "*.tfstate.backup", ".dockercfg", "kubeconfig", "*.kubeconfig", "authorized_keys",
    "authorized_keys2", "known_hosts", "shadow", "shadow-", "gshadow", "gshadow-", "*.kdbx", ".*_history",
)


class IndexSettings(BaseModel):
    """How a repository is walked and chunked."""

    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(1_000_000, ge=1_000, description="Files larger than this are skipped.")
    extra_ignores: list[str] = Field(default_factory=list, description="Extra gitignore-style patterns.")
    respect_gitignore: bool = True
    secrets: Literal["skip", "redact"] = Field(
        "skip", description="A file whose content holds a secret is skipped, or indexed with those lines redacted."
    )
    roots: list[Path] = Field(
        default_factory=list,
        description="Folders under which the MCP rag_index tool may index (AGRO_INDEX_ROOTS; the CLI may index any "
        "folder but system and credential folders).",
    )
    max_chunk_lines: int = Field(80, ge=10, description="Symbols longer than this are split, header kept.")
    window_lines: int = Field(40, ge=5, description="Line window for files without a syntax chunker.")
    window_overlap: int = Field(10, ge=0)
    embed_batch: int = Field(32, ge=1)
    keep_generations: int = Field(3, ge=1, description="Index generations kept on disk per corpus.")

    @field_validator("roots", mode="before")
    @classmethod
    def _split_roots(cls, v):
        """``AGRO_INDEX_ROOTS=/a:/b`` (os.pathsep) or comma-separated, or a list."""
        if isinstance(v, str):
            return [p.strip() for p in v.replace(",", os.pathsep).split(os.pathsep) if p.strip()]
        return v

    @model_validator(mode="after")
    def _check_window(self) -> IndexSettings:
        if self.window_overlap >= self.window_lines:
            raise ValueError(
                f"window_overlap expects a value below window_lines ({self.window_lines}), "
                f"but got {self.window_overlap}"
            )
        return self


class RetrievalSettings(BaseModel):
    """How a query is run against an index."""

    model_config = ConfigDict(extra="forbid")

    embed_model: str = Field(
        "auto",
        description="Embedding model: 'auto' (the offline all-MiniLM-L6-v2 wheel), a local dir or a hub id.",
    )
    embed_dtype: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    embed_max_tokens: int = Field(
        128, ge=16, le=512, description="Tokens per chunk for the bi-encoder (MiniLM was trained at 128; measured best)"
    )
    query_windows: int = Field(
        1, ge=1, le=64,
        description="A query longer than one embedding window (a pasted issue) is embedded as at most this many "
        "windows, the first ones, averaged; the lexical side always reads all of it. Measured on the SWE-bench "
        "issues (bench_search --only querywin): 1 window ranked best (fused file MRR@10 0.640 vs 0.561 with 8) and "
        "embeds in a sixth of the time; later windows (tracebacks, pasted code) blur the vector.",
    )
    bm25_k1: float = Field(1.2, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    rrf_k: int = Field(60, ge=1)
    dense_fusion: Literal["coverage", "equal"] = Field(
        "coverage",
        description="Weight of the dense side in RRF (the lexical side's is 1). coverage: the share of the query's "
        "tokens its vector is computed from (query_windows windows of embed_max_tokens), to the power "
        "dense_fusion_exponent: 1 for every query that fits, less for a pasted issue, whose tail only BM25 reads. "
        "equal: plain RRF. Measured on the 22 SWE-bench dev issues (bench_search --only fusion), file / span MRR@10: "
        "plain 0.640 / 0.469, coverage 0.682 / 0.492, BM25 alone 0.672 / 0.412; the docstring questions fit one "
        "window (3 of 403 do not), so they rank as before.",
    )
    dense_fusion_exponent: float = Field(1.0, ge=0, le=4, description="Exponent of the coverage weight.")
    lexical_candidates: int = Field(100, ge=1)
    dense_candidates: int = Field(100, ge=1)
    max_query_chars: int = Field(20_000, ge=100, description="Queries longer than this are rejected.")
    max_query_terms: int = Field(
        64, ge=4, description="Long queries keep at most this many distinct terms (highest IDF) for BM25."
    )
    stale_check_ttl_sec: float = Field(10.0, ge=0, description="How long a stale-file count is reused.")
    lexical_postings_per_term: int = Field(
        2000, ge=0,
        description=(
            "postgres backend: BM25 reads each query term's N highest-weighted postings (impact order; 0 = all). "
            "Exact whenever a term is in at most N chunks; common terms add little and cost the most."
        ),
    )
    lexical_postings_budget: int = Field(
        8000, ge=100,
        description="postgres backend: postings read per query in all (split across its terms, each capped by "
        "lexical_postings_per_term, at least 100 per term). Measured with the bench's 403 docstring questions "
        "hidden in a 105k-chunk corpus (bench_pg --only haystack): 8000 and 24000 rank alike (fused file MRR@10 "
        "0.612 / 0.616, span 0.385 / 0.380; exact BM25 0.617 / 0.389) and 8000 reads a third of the postings.",
    )
    hnsw_ef_search: int = Field(
        0, ge=0, le=1000,
        description=(
            "postgres backend: HNSW candidate list size per dense search (0 = auto: dense_candidates + 40, so 140). "
            "Measured at 100k chunks with the default graph: the bench questions hidden in a 105k-chunk corpus rank "
            "alike at 140 and 200 (fused file / span MRR@10 0.610 / 0.386 and 0.613 / 0.386) and lose ~1% at 100 "
            "(bench_pg --only haystack); 140 takes ~1 ms less SQL per search than 200."
        ),
    )
    hnsw_m: int = Field(
        16, ge=4, le=100,
        description="postgres backend: links per node of the HNSW graph (pgvector's m), used when a corpus is "
        "fully built (agro index --full applies a change).",
    )
    hnsw_ef_construction: int = Field(
        256, ge=16, le=1000,
        description="postgres backend: HNSW build-time candidate list (pgvector's ef_construction), used when a "
        "corpus is fully built. Measured at 100k chunks: 256 instead of pgvector's 64 takes the recall of the "
        "dense top-10 at ef_search 200 from 0.909 to 0.971 and searches faster (a better graph needs fewer "
        "hops); the index builds in 35 s instead of 20 s.",
    )
