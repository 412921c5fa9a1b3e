"""Event-store fixtures run once per backend: SQLite in tmp_path, and PostgreSQL in a fresh database (real server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(params=["embedded", "postgres"])
def store_backend(request) -> str:
    """The event-store backend of this run of the test."""
    return request.param


@pytest.fixture
def open_store(request, store_backend: str, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens an event store of this test's backend; every call opens the same data (``tmp_path/home/agro.db``,
    created with its folder, or the test's database).

    The stores it opened are closed after the test.
    """
    from training.events.store import open_event_store

    url = request.getfixturevalue("pg_url") if store_backend == "postgres" else None
    opened: list[Any] = []

    def _open() -> Any:
        s = open_event_store(tmp_path / "home", store_backend, url, pool_size=4)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store):
    return open_store()
