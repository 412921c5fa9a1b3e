"""The background warm-up of a serving bi-encoder: embed the indexed chunks it has no vector for, and keep them.

A release that loads (or an index refresh) starts it; it stops when another starts or the server closes. Searches
never wait for it: a candidate not warmed yet is embedded by the search that ranks it. What it embedded for a release
is kept beside the releases (:func:`reranker.vectors.persist_delta`), so the next start loads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from reranker.settings import RerankerSettings
from reranker.vectors import persist_delta

__all__ = ["Warmer"]

logger = logging.getLogger(__name__)


class Warmer:
    """One warming thread at a time for the manager's serving model.

    Args:
        settings: ``prewarm`` (on/off) and ``batch``.
        stopped: set when the manager closes (no warming starts after it).
        serving: the serving model, and the keys its release shipped with where refreshed vectors are kept
            (None: not a release, nothing is kept).
    """

    def __init__(self, settings: RerankerSettings, stopped: threading.Event,
                 serving: Callable[[], tuple[Any, tuple[set[str], Path] | None]]) -> None:
        self.settings = settings
        self._stopped = stopped
        self._serving = serving
        self._source: Callable[[], Iterable[str]] | None = None
        self._cancel: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] | None = None
        self._lock = threading.Lock()  # one warming thread at a time
        self._state_lock = threading.Lock()

    def set_source(self, texts: Callable[[], Iterable[str]] | None) -> None:
        """Where a bi-encoder that loads from now on finds the texts to embed ahead of use (the indexed chunks'
        located texts); None turns warming off. A model already serving starts warming at once."""
        self._source = texts
        loaded, _ = self._serving()
        warmed = self.state()
        if texts is not None and loaded is not None and (warmed or {}).get("model") != loaded.model_id:
            self.start(loaded)

    def refresh(self) -> None:
        """The indexed chunks changed: warm the serving model again (only chunks without a vector are embedded)."""
        loaded, _ = self._serving()
        if loaded is not None and self._source is not None:
            self.start(loaded)

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def start(self, loaded: Any) -> None:
        """Embed the indexed chunks with a newly loaded bi-encoder in the background (``settings.prewarm``)."""
        with self._lock:
            self._stop_locked()
            warm = getattr(loaded.scorer, "warm", None)
            source = self._source
            if not self.settings.prewarm or warm is None or source is None or self._stopped.is_set():
                return
            self._spawn(loaded, warm, source)

    def _spawn(self, loaded: Any, warm: Callable[..., int], source: Callable[[], Iterable[str]]) -> None:
        cancel = threading.Event()
        state: dict[str, Any] = {"model": loaded.model_id, "state": "running", "embedded": 0, "started": time.time(),
                                 "finished": None, "error": None}
        seen: list[str] = []

        def tap(texts: Iterable[str]) -> Iterator[str]:
            for t in texts:
                seen.append(t)
                yield t

        def run() -> None:
            t0 = time.perf_counter()
            try:
                # the release embeds each query too (reranker.path), padded to the same length buckets as retrieval's
                # embedder: warm those shapes first, so no search pays a shape's first-time kernel set-up
                warm_lengths = getattr(getattr(loaded.scorer, "embedder", None), "warm_query_lengths", None)
                if warm_lengths is not None:
                    warm_lengths()
                state["embedded"] = warm(tap(source()), batch=max(16, self.settings.batch), cancel=cancel,
                                         progress=lambda n: state.__setitem__("embedded", n))
                state["state"] = "cancelled" if cancel.is_set() else "done"
                serving, kept = self._serving()
                if state["state"] == "done" and state["embedded"] and serving is loaded and kept is not None:
                    shipped, delta = kept
                    state["persisted"] = persist_delta(loaded.scorer, loaded.target, delta, seen, shipped)
            except Exception as exc:  # noqa: BLE001 - warming is an optimisation: searches embed on demand
                state.update(state="failed", error=f"{type(exc).__name__}: {exc}")
                logger.warning("reranker %s: warming the candidate cache failed: %s", loaded.model_id, exc)
            state["finished"] = time.time()
            logger.info("reranker %s: warming %s, %d chunks embedded in %.1fs", loaded.model_id, state["state"],
                        state["embedded"], time.perf_counter() - t0)

        with self._state_lock:
            self._state = state
        self._cancel = cancel
        thread = threading.Thread(target=run, name="agro-reranker-warm", daemon=True)
        thread.start()  # before it is published: wait() may join it from another thread at once
        self._thread = thread

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for the current warming to end (tests, benches); returns its state."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.state()

    def state(self) -> dict[str, Any] | None:
        with self._state_lock:
            return dict(self._state) if self._state else None
