"""golden.json: questions about a corpus whose answers we know, validated strictly and appended safely.

Each row is ``{"q", "repo", "expect_paths": [...], "expect_spans": [{"path", "start_line", "end_line"}]}``.
``repo`` is the corpus id. Paths are matched by suffix on ``/`` boundaries (see :mod:`training.evaluation.metrics`).
"""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from retrieval.atomic import write_text_atomic
from retrieval.errors import AgroUserError

__all__ = ["GoldenError", "GoldenItem", "GoldenSpan", "add_golden", "load_golden", "dump_golden_rows"]

logger = logging.getLogger(__name__)


class GoldenError(AgroUserError, ValueError):
    """golden.json is malformed; the message names the row index (0-based) and the key."""


def _clean_path(v: str) -> str:
    p = v.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    if not p or p.startswith("/") or ".." in p.split("/"):
        raise ValueError(f"expects a path relative to the corpus root, but got {v!r}")
    return p


class GoldenSpan(BaseModel):
    """A line range (1-based, inclusive) of one file."""

    model_config = ConfigDict(extra="forbid")

    path: str
    start_line: int = Field(ge=1)
    end_line: int = Field(ge=1)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _clean_path(v)

    @model_validator(mode="after")
    def _order(self) -> "GoldenSpan":
        if self.end_line < self.start_line:
            raise ValueError(f"end_line expects a value >= start_line ({self.start_line}), but got {self.end_line}")
        return self


class GoldenItem(BaseModel):
    """One question with its expected files and, where it matters, line spans."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1)
    repo: str = Field(min_length=1)
    expect_paths: list[str] = Field(default_factory=list)
    expect_spans: list[GoldenSpan] = Field(default_factory=list)

    @field_validator("q", "repo")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expects a non-blank string")
        return v

    @field_validator("expect_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return [_clean_path(p) for p in v]

    @model_validator(mode="after")
    def _has_gold(self) -> "GoldenItem":
        if not self.expect_paths and not self.expect_spans:
            raise ValueError("expect_paths expects at least one path (or give expect_spans), but got none")
        return self

    def to_row(self) -> dict[str, Any]:
        """The JSON row, without an empty ``expect_spans``."""
        row = self.model_dump()
        if not row["expect_spans"]:
            del row["expect_spans"]
        return row


_KEYS = ", ".join(GoldenItem.model_fields)


def _describe(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        where = f" in {'.'.join(loc[:-1])}" if len(loc) > 1 else ""
        expected = _KEYS if len(loc) == 1 else ", ".join(GoldenSpan.model_fields)
        return f"key {key!r}{where} is not allowed (expected {expected})"
    if err["type"] == "missing":
        return f"key {'.'.join(loc)!r} is required"
    key = ".".join(loc) if loc else "(row)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"key {key!r}: {msg} (got {err.get('input')!r})"


def _validate_rows(rows: Any, name: str) -> list[GoldenItem]:
    if not isinstance(rows, list):
        raise GoldenError(f"{name} expects a JSON list of rows, but got {type(rows).__name__}")
    items: list[GoldenItem] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise GoldenError(f"{name} row {i}: expects an object with keys {_KEYS}, but got {type(row).__name__}")
        try:
            items.append(GoldenItem.model_validate(row))
        except ValidationError as exc:
            raise GoldenError(f"{name} row {i}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    return items


def load_golden(path: str | Path) -> list[GoldenItem]:
    """Read and validate golden.json.

    Raises:
        GoldenError: on unreadable JSON or a bad row; the message names the row index (0-based) and the key, e.g.
            ``golden.json row 12: key 'expect_path' is not allowed (expected q, repo, expect_paths, expect_spans)``.
        FileNotFoundError: if the file does not exist.
    """
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path.name} is not valid JSON: {exc}") from None
    return _validate_rows(rows, path.name)


def dump_golden_rows(items: list[GoldenItem]) -> str:
    """golden.json text for these items (2-space indent, trailing newline)."""
    return json.dumps([it.to_row() for it in items], indent=2, ensure_ascii=False) + "\n"


def add_golden(path: str | Path, item: GoldenItem | dict) -> int:
    """Append one question to golden.json, safely against concurrent writers and crashes.

    Under an exclusive ``fcntl`` lock on ``<path>.lock``: read and validate the current file (a malformed file is
    left untouched), append, write a new file beside it, fsync, then ``os.replace``.

    Returns:
        The new row's index.

    Raises:
        GoldenError: if the item or the existing file is invalid, or the same question for the same repo exists.
    """
    path = Path(path)
    if not isinstance(item, GoldenItem):
        item = _validate_rows([item], "new item")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            items = load_golden(path) if path.exists() else []
            key = (item.q.strip().casefold(), item.repo)
            if any((it.q.strip().casefold(), it.repo) == key for it in items):
                raise GoldenError(f"{path.name} already has the question {item.q!r} for repo {item.repo!r}")
            items.append(item)
            write_text_atomic(path, dump_golden_rows(items))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    logger.info("Added golden question %d to %s", len(items) - 1, path)
    return len(items) - 1
