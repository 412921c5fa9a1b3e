"""Settings for indexing and retrieval, and the base every settings class shares.

Each concern has one pydantic-settings class with its own environment prefix (``AGRO_INDEX_``, ``AGRO_RETRIEVAL_``,
...). A class built directly (``IndexSettings()``) holds its arguments and defaults only: the environment and
``agro.toml`` are read once, by the face's loader (``agro_mcp.config.load_settings``), through ``from_sources``.
Library code never reads ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["AgroSettings", "DEFAULT_IGNORES", "DEFAULT_SECRET_PATTERNS", "IndexSettings", "RetrievalSettings"]

# (environment, this class's agro.toml table) while ``from_sources`` builds a settings object; None otherwise.
_SOURCES: ContextVar[tuple[Mapping[str, str], Mapping[str, Any]] | None] = ContextVar("agro_settings_sources",
                                                                                      default=None)


class _EnvSource(EnvSettingsSource):
    """Environment variables from a given mapping (the loader's), not from ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._env.items() if v != ""}


class _TableSource(PydanticBaseSettingsSource):
    """One table of agro.toml; unknown keys pass through so ``extra="forbid"`` names them."""

    def __init__(self, settings_cls: type[BaseSettings], table: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._table = dict(table)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._table.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._table)


class AgroSettings(BaseSettings):
    """Base of the settings classes. Precedence: arguments, then environment, then agro.toml, then defaults."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, env_ignore_empty=True)

    #: The agro.toml table this class reads (``[index]``); the environment prefix is ``model_config["env_prefix"]``.
    section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        bound = _SOURCES.get()
        if bound is None:
            return (init_settings,)
        env, table = bound
        return (init_settings, _EnvSource(settings_cls, env), _TableSource(settings_cls, table))

    @classmethod
    def from_sources(cls, env: Mapping[str, str], table: Mapping[str, Any] | None = None) -> Self:
        """Build from an environment mapping and this class's agro.toml table (raises pydantic's ValidationError)."""
        with _bound(env, table or {}):
            return cls()

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field`` (``AGRO_INDEX_MAX_FILE_BYTES``)."""
        return (cls.model_config.get("env_prefix", "") + field).upper()


@contextmanager
def _bound(env: Mapping[str, str], table: Mapping[str, Any]) -> Iterator[None]:
    token = _SOURCES.set((env, table))
    try:
        yield
    finally:
        _SOURCES.reset(token)


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
)


class IndexSettings(AgroSettings):
    """How a repository is walked and chunked."""

    model_config = SettingsConfigDict(env_prefix="AGRO_INDEX_")
    section: ClassVar[str] = "index"

    max_file_bytes: int = Field(1_000_000, ge=1_000, description="Larger files are skipped (counted as too_large).")
    extra_ignores: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra gitignore-style patterns (JSON list or comma-separated)."
    )
    respect_gitignore: bool = Field(True, description="Honour .gitignore files.")
    index_secrets: bool = Field(False, description="Index files that look like secrets. Leave it off.")
    max_chunk_lines: int = Field(80, ge=10, description="Longer symbols are split, header kept.")
    window_lines: int = Field(40, ge=5, description="Line window for files without a syntax chunker.")
    window_overlap: int = Field(10, ge=0, description="Overlap of those windows, in lines.")
    embed_batch: int = Field(32, ge=1, description="Embedding batch size.")
    keep_generations: int = Field(3, ge=1, description="Index generations kept on disk per corpus.")

    @field_validator("extra_ignores", mode="before")
    @classmethod
    def _split_patterns(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                import json

                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"expects a JSON list or comma-separated patterns, but got {v!r}") from exc
            return [p.strip() for p in text.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _check_window(self) -> IndexSettings:
        if self.window_overlap >= self.window_lines:
            raise ValueError(
                f"window_overlap expects a value below window_lines ({self.window_lines}), "
                f"but got {self.window_overlap}"
            )
        return self


class RetrievalSettings(AgroSettings):
    """How a query is run against an index."""

    model_config = SettingsConfigDict(env_prefix="AGRO_RETRIEVAL_")
    section: ClassVar[str] = "retrieval"

    embed_model: str = Field(
        "auto", description="Bi-encoder: 'auto' (the offline all-MiniLM-L6-v2 wheel), a local folder or a hub id."
    )
    embed_dtype: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="fp32, bf16, int8 (dynamic quantisation); auto = bf16 on native-bf16 CPUs, else fp32."
    )
    embed_max_tokens: int = Field(128, ge=16, le=512, description="Tokens per chunk for the bi-encoder.")
    query_windows: int = Field(
        1, ge=1, le=64, description="Embedding windows read from a long query (averaged); BM25 reads all of it."
    )
    bm25_k1: float = Field(1.2, gt=0, description="BM25 k1.")
    bm25_b: float = Field(0.75, ge=0, le=1, description="BM25 b.")
    rrf_k: int = Field(60, ge=1, description="RRF constant.")
    dense_fusion: Literal["coverage", "equal"] = Field(
        "coverage", description="Dense side's RRF weight: coverage = share of the query's tokens embedded; equal = 1."
    )
    dense_fusion_exponent: float = Field(
        1.0, ge=0, le=4, description="Exponent of the coverage weight (0 = plain RRF)."
    )
    lexical_candidates: int = Field(100, ge=1, description="BM25 candidates fused.")
    dense_candidates: int = Field(100, ge=1, description="Dense candidates fused.")
    max_query_chars: int = Field(20_000, ge=100, description="Longer queries are rejected with a message.")
    max_query_terms: int = Field(64, ge=4, description="Distinct BM25 terms kept from a long query (rarest first).")
    stale_check_ttl_sec: float = Field(10.0, ge=0, description="How long a count of files changed on disk is reused.")
    lexical_postings_per_term: int = Field(
        2000, ge=0, description="postgres: highest-weighted postings read per query term (0 = all)."
    )
    lexical_postings_budget: int = Field(
        8000, ge=100, description="postgres: postings read per query in all, split across its terms."
    )
    hnsw_ef_search: int = Field(
        0, ge=0, le=1000, description="postgres: HNSW candidate list per dense search (0 = dense_candidates + 40)."
    )
    hnsw_m: int = Field(
        16, ge=4, le=100, description="postgres: links per HNSW node (pgvector m); applies at a full build."
    )
    hnsw_ef_construction: int = Field(
        256, ge=16, le=1000, description="postgres: HNSW build-time candidate list; applies at a full build."
    )
