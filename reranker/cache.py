"""Thread-safe LRU of cross-encoder scores keyed by (model key, query, chunk hash)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable

__all__ = ["ScoreCache"]


class ScoreCache:
    """LRU of scores. ``size`` 0 disables it (every lookup misses, nothing is stored).

    The model key must change whenever the scores would (a new release, another backend or window), so a
    hot-reload never serves the old model's scores.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._data: OrderedDict[tuple[Hashable, str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def get_many(self, model_key: Hashable, query: str, hashes: Iterable[str]) -> list[float | None]:
        """Cached score per hash, None where missing."""
        out: list[float | None] = []
        with self._lock:
            for h in hashes:
                key = (model_key, query, h)
                val = self._data.get(key)
                if val is None:
                    self.misses += 1
                else:
                    self._data.move_to_end(key)
                    self.hits += 1
                out.append(val)
        return out

    def put_many(self, model_key: Hashable, query: str, items: Iterable[tuple[str, float]]) -> None:
        if self.size == 0:
            return
        with self._lock:
            for h, score in items:
                key = (model_key, query, h)
                self._data[key] = float(score)
                self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
