"""Shared fixtures: the real MiniLM embedder (loaded once), small real repositories, settings in tmp homes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
