"""Settings for the server and the loader that reads every concern from env and agro.toml once.

Environment names are ``AGRO_<SECTION>_<FIELD>`` (``AGRO_RERANKER_ALPHA``), except the server's, which are
``AGRO_<FIELD>`` (``AGRO_HOME``). ``agro.toml`` (``AGRO_CONFIG`` or ``./agro.toml``) has one table per section.
Environment wins over the file.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reranker.settings import RerankerSettings
from retrieval.settings import IndexSettings, RetrievalSettings
from training.settings import TrainingSettings

__all__ = ["ConsoleSettings", "ServerSettings", "Settings", "load_settings", "ConfigError", "ENV_SECTIONS"]


class ConfigError(ValueError):
    """A setting has a bad value; the message names it and says what is expected."""


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: Path = Field(default_factory=lambda: Path.home() / ".agro", description="Data home (AGRO_HOME).")
    default_corpus: str | None = Field(None, description="Corpus used when a call names none.")
    admin_enabled: bool = True
    admin_wait_timeout_sec: float = Field(
        600.0, gt=0,
        description="Longest a reranker_admin call with wait=true (or action 'wait') stays open for its job.",
    )
    log_level: str = "INFO"
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = Field(None, repr=False)
    llm_timeout_sec: float = Field(60.0, gt=0)
    answer_context_tokens: int = Field(3000, ge=200)
    backend: Literal["embedded", "postgres"] = Field(
        "embedded", description="Where indexes and events live: files + SQLite in AGRO_HOME, or PostgreSQL."
    )
    database_url: str | None = Field(None, repr=False, description="PostgreSQL URL for AGRO_BACKEND=postgres.")
    db_pool_size: int = Field(8, ge=1, le=256, description="Connections per server process (postgres backend).")

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser().resolve()


class ConsoleSettings(BaseModel):
    """The web console (``agro console``, or mounted in the daemon): ``AGRO_CONSOLE_*``."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address the console binds to; keep it on loopback.")
    port: int = Field(8765, ge=0, le=65535, description="TCP port (0 = any free port).")
    editor_url: str = Field(
        "vscode://file/{abs_path}:{line}",
        description="'Open in editor' link of a hit; {abs_path}, {path} and {line} are filled in.",
    )

    @field_validator("editor_url")
    @classmethod
    def _editor_fields(cls, v: str) -> str:
        try:
            v.format(abs_path="/x", path="x", line=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"editor_url may use only {{abs_path}}, {{path}} and {{line}} ({exc})") from None
        return v


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    reranker: RerankerSettings = Field(default_factory=RerankerSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)


# section -> env prefix
ENV_SECTIONS: dict[str, str] = {
    "server": "AGRO_",
    "index": "AGRO_INDEX_",
    "retrieval": "AGRO_RETRIEVAL_",
    "reranker": "AGRO_RERANKER_",
    "training": "AGRO_TRAINING_",
    "console": "AGRO_CONSOLE_",
}


def _coerce_env(raw: str):
    """Env values are strings; lists may be given as JSON or comma-separated."""
    s = raw.strip()
    if s.startswith("["):
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return s
    return s


def load_settings(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Build every settings object once, from agro.toml then the environment.

    Raises:
        ConfigError: naming the bad variable and what it expects.
    """
    env = os.environ if env is None else env
    data: dict[str, dict] = {name: {} for name in ENV_SECTIONS}
    path = config_file or (Path(env["AGRO_CONFIG"]) if env.get("AGRO_CONFIG") else Path("agro.toml"))
    if path.is_file():
        try:
            file_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        for section, values in file_data.items():
            if section not in data or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown table [{section}]; expected one of {sorted(data)}")
            data[section].update(values)
    models = {name: Settings.model_fields[name].annotation for name in ENV_SECTIONS}
    for section, prefix in ENV_SECTIONS.items():
        fields = models[section].model_fields
        for fname in fields:
            key = prefix + fname.upper()
            if key in env and env[key] != "":
                data[section][fname] = _coerce_env(env[key])
    if isinstance(data["index"].get("extra_ignores"), str):
        data["index"]["extra_ignores"] = [p.strip() for p in data["index"]["extra_ignores"].split(",") if p.strip()]
    built, msgs = {}, []
    for section, values in data.items():
        try:
            built[section] = models[section](**values)
        except ValidationError as exc:
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else ""
                env_name = ENV_SECTIONS[section] + field.upper() if field else section
                msgs.append(f"{env_name} ({section}.{field}): {err['msg']} (got {err.get('input')!r})")
    if msgs:
        raise ConfigError("Invalid settings: " + "; ".join(msgs))
    return Settings(**built)
