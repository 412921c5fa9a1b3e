"""The server's settings and the loader that reads every concern once, from the environment and one agro.toml.

Environment names are ``AGRO_<SECTION>_<FIELD>`` (``AGRO_RERANKER_ALPHA``), except the server's, which are
``AGRO_<FIELD>`` (``AGRO_HOME``). The one optional file is the one named by ``AGRO_CONFIG`` (an absolute path), else
``AGRO_HOME/agro.toml``; it has one table per section. The working folder is never read. Precedence: environment,
then the file, then defaults. Settings that send data off the machine (``OFF_MACHINE``) are never taken from a file
inside a repository (a git work tree, an indexed corpus) or in the working folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from reranker.settings import RerankerSettings
from retrieval.errors import AgroUserError
from retrieval.settings import AgroSettings, IndexSettings, RetrievalSettings
from training.settings import TrainingSettings

__all__ = [
    "ConfigError", "ConsoleSettings", "ENV_SECTIONS", "OFF_MACHINE", "SECTIONS", "ServerSettings", "Settings", "config_path",
    "load_settings",
]

logger = logging.getLogger(__name__)


class ConfigError(AgroUserError, ValueError):
    """A setting has a bad value; the message names it and says what is expected."""


class ServerSettings(AgroSettings):
    """The faces: data home, admin actions, the answer endpoint, the storage backend."""

    model_config = SettingsConfigDict(env_prefix="AGRO_")
    section: ClassVar[str] = "server"

    home: Path = Field(
        default_factory=lambda: Path.home() / ".agro", description="Data home: database, indexes, models, exports."
    )
    default_corpus: str | None = Field(
        None, description="Corpus used when a call names none (otherwise: the only indexed corpus)."
    )
    admin_enabled: Literal["unattended"] | bool = Field(
        True,
        description="reranker_admin state changes: 1 on (irreversible ones ask), 0 off, 'unattended' never asks.",
    )
    admin_wait_timeout_sec: float = Field(
        600.0, gt=0, description="Longest a reranker_admin wait=true call stays open; then it returns the job's status."
    )
    events_retention_days: float = Field(
        90.0, ge=0, description="Query events without feedback older than this are compacted away (0 keeps all)."
    )
    log_level: str = Field("INFO", description="Log level (logs go to stderr only).")
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint for rag_answer, e.g. http://127.0.0.1:8080/v1."
    )
    llm_model: str | None = Field(None, description="Model name for that endpoint (both must be set to use it).")
    llm_api_key: str | None = Field(None, repr=False, description="Sent as a bearer token; never logged or returned.")
    llm_timeout_sec: float = Field(60.0, gt=0, description="Timeout of the endpoint or sampling request, in seconds.")
    answer_context_tokens: int = Field(3000, ge=200, description="Context budget of rag_answer, in tokens.")
    backend: Literal["embedded", "postgres"] = Field(
        "embedded", description="Where indexes and events live: files + SQLite in AGRO_HOME, or PostgreSQL."
    )
    database_url: str | None = Field(
        None, repr=False,
        description="PostgreSQL URL for AGRO_BACKEND=postgres; never logged (password redacted in errors).",
    )
    db_pool_size: int = Field(8, ge=1, le=256, description="PostgreSQL connections per server process.")
    serve_mode: Literal["proxy", "inprocess"] = Field(
        "proxy", description="agro serve: a thin proxy to the shared daemon, or a self-contained in-process server."
    )
    daemon_idle_exit_sec: float = Field(1800.0, ge=0, description="Daemon exits after this long with no session (0 = never).")
    daemon_http_enabled: bool = Field(True, description="The daemon also serves MCP over Streamable HTTP.")
    daemon_http_host: str = Field("127.0.0.1", description="Address of the daemon's HTTP endpoint (loopback by default).")
    daemon_http_port: int = Field(8767, ge=0, le=65535, description="Port of the daemon's HTTP endpoint (0 = any free port).")
    daemon_start_timeout_sec: float = Field(120.0, gt=0, description="How long agro serve waits for a daemon it starts.")
    daemon_drain_timeout_sec: float = Field(600.0, ge=0, description="How long a draining daemon waits for open sessions.")
    daemon_background_nice: int = Field(10, ge=0, le=19, description="Niceness of the daemon's index and training work.")
    daemon_log_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1000, description="The daemon's log (AGRO_HOME/logs/daemon.log) rotates at this size."
    )
    daemon_log_backups: int = Field(5, ge=1, description="Rotated daemon logs kept (daemon.log.1 ... .N).")
    daemon_search_concurrency: int = Field(
        0, ge=0, description="Searches the daemon ranks at once; more wait their turn (0 = one per core)."
    )
    daemon_background_torch_threads: int = Field(
        0, ge=0, description="Torch threads of the daemon's index and training work (0 = all cores but one)."
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser().resolve()


class ConsoleSettings(AgroSettings):
    """The web console (``agro console``, or mounted in the daemon): ``AGRO_CONSOLE_*``."""

    model_config = SettingsConfigDict(env_prefix="AGRO_CONSOLE_")
    section: ClassVar[str] = "console"

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
    """Every concern's settings, built once by ``load_settings`` and passed down."""

    model_config = ConfigDict(extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    reranker: RerankerSettings = Field(default_factory=RerankerSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)


SECTIONS: dict[str, type[AgroSettings]] = {
    cls.section: cls
    for cls in (ServerSettings, IndexSettings, RetrievalSettings, RerankerSettings, TrainingSettings, ConsoleSettings)
}
# section -> environment prefix
ENV_SECTIONS: dict[str, str] = {name: cls.model_config["env_prefix"] for name, cls in SECTIONS.items()}
# Settings that send code, queries or a key to another machine: environment or a file the user owns only.
OFF_MACHINE: dict[str, tuple[str, ...]] = {"server": ("llm_base_url", "llm_api_key", "database_url")}


def config_path(env: Mapping[str, str]) -> Path:
    """The one agro.toml that may be read: ``AGRO_CONFIG``, else ``AGRO_HOME/agro.toml`` (it need not exist).

    Raises:
        ConfigError: ``AGRO_CONFIG`` is relative (it would depend on the working folder) or names no file.
    """
    named = env.get("AGRO_CONFIG", "")
    if named:
        path = Path(named).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"AGRO_CONFIG expects an absolute path (a relative one depends on the working folder), "
                              f"but got {named!r}")
        if not path.is_file():
            raise ConfigError(f"AGRO_CONFIG names {named!r}, which is not a file")
        return path
    home = Path(env["AGRO_HOME"]).expanduser() if env.get("AGRO_HOME") else Path.home() / ".agro"
    return home / "agro.toml"


def load_settings(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Build every settings object once, from the environment (``os.environ`` by default) and one agro.toml.

    Args:
        env: the environment to read.
        config_file: read this file instead of the one ``config_path`` names (tests).

    Raises:
        ConfigError: naming the bad variable and what it expects.
    """
    env = dict(os.environ) if env is None else env
    path = config_file if config_file is not None else config_path(env)
    tables = _read_tables(path) if path.is_file() else {}
    if tables and path.resolve() != _home_config(env):
        _drop_off_machine(tables, path, env)
    built, msgs = {}, []
    for section, cls in SECTIONS.items():
        try:
            built[section] = cls.from_sources(env, tables.get(section, {}))
        except ValidationError as exc:
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else ""
                env_name = cls.env_name(field) if field else section
                msgs.append(f"{env_name} ({section}.{field}): {err['msg']} (got {_short(err.get('input'))})")
    if msgs:
        raise ConfigError("Invalid settings: " + "; ".join(msgs))
    return Settings(**built)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _read_tables(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown table [{section}]; expected one of {sorted(SECTIONS)}")
    return data


def _home_config(env: Mapping[str, str]) -> Path:
    home = Path(env["AGRO_HOME"]).expanduser() if env.get("AGRO_HOME") else Path.home() / ".agro"
    return (home / "agro.toml").resolve()


def _drop_off_machine(tables: dict[str, dict[str, Any]], path: Path, env: Mapping[str, str]) -> None:
    """Remove off-machine settings from a file that lies in a repository or in the working folder."""
    where = _repository_holding(path.resolve(), env)
    if where is None:
        return
    for section, keys in OFF_MACHINE.items():
        for key in keys:
            if key in tables.get(section, {}):
                del tables[section][key]
                logger.warning(
                    "%s: %s ignored: the file is in %s, and a setting that sends data off the machine is taken only "
                    "from the environment (%s) or AGRO_HOME/agro.toml", path, key, where,
                    SECTIONS[section].env_name(key),
                )


def _repository_holding(path: Path, env: Mapping[str, str]) -> str | None:
    """Describe the repository or working folder ``path`` lies in, or None when it lies in none."""
    folder = path.parent
    if folder == Path.cwd().resolve():
        return "the working folder"
    for parent in (folder, *folder.parents):
        if (parent / ".git").exists():
            return f"the git work tree {parent}"
    for root in _corpus_roots(env):
        if folder == root or root in folder.parents:
            return f"the indexed corpus at {root}"
    return None


def _corpus_roots(env: Mapping[str, str]) -> list[Path]:
    """Roots of the corpora indexed in the embedded store (read-only; none when there is no store yet)."""
    home = Path(env["AGRO_HOME"]).expanduser() if env.get("AGRO_HOME") else Path.home() / ".agro"
    db = home / "agro.db"
    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute("SELECT root FROM corpora WHERE root IS NOT NULL").fetchall()
    except sqlite3.Error:
        return []
    return [Path(r[0]).resolve() for r in rows]
