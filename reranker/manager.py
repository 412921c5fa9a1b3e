"""Which cross-encoder serves, loading it in the background, and hot-reloading it when ``models/current`` moves.

Resolution order: ``settings.model_path``, else ``models_dir/current`` (a release is identified by its resolved
directory and the hash of its ``manifest.json``; a release without a manifest is still being written and is never
loaded), else none, with a reason. A new model is loaded beside the old one and swapped in under a lock, so searches
in flight finish on the object they grabbed; a failed load keeps the old model serving and is reported by ``info``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from reranker.model import RerankerLoadError, load_scorer
from reranker.settings import RerankerSettings
from reranker.vectors import delta_path, preload
from reranker.warming import Warmer

__all__ = ["NO_MODEL_REASON", "LoadedReranker", "RerankerManager", "Scorer", "effective_alpha", "effective_dense_weight"]

logger = logging.getLogger(__name__)

NO_MODEL_REASON = "no reranker model: set AGRO_RERANKER_MODEL_PATH or train and promote one (agro bootstrap)"


class Scorer(Protocol):
    """What the stage needs from a model (``CrossEncoderScorer`` or ``BiEncoderScorer``)."""

    backend: str
    dtype: str
    device: str

    def score(self, query: str, texts: list[str], batch: int = ..., cancel: threading.Event | None = ...) -> np.ndarray:
        ...


@dataclass(frozen=True)
class LoadedReranker:
    """A model ready to serve, and what identifies it."""

    scorer: Scorer
    model_id: str  # release id, or the explicit path / hub id
    release_id: str | None = None
    target: str | None = None  # resolved directory
    manifest: dict[str, Any] | None = None
    identity: tuple = ()
    loaded_at: float = field(default_factory=time.time)

    @property
    def cache_key(self) -> tuple:
        """Scores from this object are only valid for this key (model identity + backend + window)."""
        return (self.model_id, self.identity, self.scorer.backend, getattr(self.scorer, "maxlen", None),
                getattr(self.scorer, "query_max_tokens", None))


@dataclass(frozen=True)
class _Candidate:
    """What resolution found: something to load (ref set) or a reason there is nothing (reason set)."""

    ref: str | None
    identity: tuple
    model_id: str | None = None
    release_id: str | None = None
    manifest: dict[str, Any] | None = None
    reason: str | None = None


def blend_weight(loaded: LoadedReranker | None, settings: Any, name: str) -> tuple[float, str]:
    """A blend weight of ``RerankerSettings`` (``alpha`` or ``dense_weight``) in force and where it comes from:
    ``setting`` (its ``AGRO_RERANKER_*`` variable set explicitly), ``release`` (the loaded model's manifest
    ``blend.<name>``, calibrated or chosen by the loop) or ``default``."""
    if name in settings.model_fields_set:
        return getattr(settings, name), "setting"
    v = ((loaded.manifest or {}).get("blend") or {}).get(name) if loaded is not None else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0:
        return float(v), "release"
    return getattr(settings, name), "default"


def effective_alpha(loaded: LoadedReranker | None, settings: Any) -> tuple[float, str]:
    """The cross-encoder's weight in the blend in force and its source (:func:`blend_weight`)."""
    return blend_weight(loaded, settings, "alpha")


def effective_dense_weight(loaded: LoadedReranker | None, settings: Any) -> tuple[float, str]:
    """The dense share of the blend's retrieval side in force and its source (:func:`blend_weight`)."""
    return blend_weight(loaded, settings, "dense_weight")


def _manifest_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    keys = ("id", "release_id", "created_at", "promoted_at", "base_model", "parent", "parent_release", "metrics",
            "blend", "vectors")
    return {k: manifest[k] for k in keys if k in manifest}


def _weights_stamp(path: Path) -> tuple:
    """(name, size, mtime_ns) of the weight files, so a model rewritten in place is seen as changed."""
    out = []
    for p in sorted(path.glob("*.safetensors")):
        st = p.stat()
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class RerankerManager:
    """Owns the serving cross-encoder for one process.

    Args:
        settings: reranker settings.
        models_dir: ``AGRO_HOME/models`` (holds ``current``, ``releases/``, ``runs/``).
    """

    def __init__(self, settings: RerankerSettings, models_dir: Path, sync: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.models_dir = Path(models_dir)
        self._sync = sync  # brings models/current in line with a shared registry (team backend) before a check
        self._loaded: LoadedReranker | None = None
        self._lock = threading.Lock()  # guards the fields below
        self._check_lock = threading.Lock()  # one resolution + load at a time
        self._stop = threading.Event()
        self._warmer = Warmer(settings, self._stop, self._serving)
        self._first_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._none_reason: str | None = None
        self._last_error: str | None = None
        self._last_check: float | None = None
        self._failed_identity: tuple | None = None
        self._resolved: _Candidate | None = None
        self._kept: tuple[set[str], Path] | None = None  # serving release's shipped keys, where new ones are kept

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load in a background thread (returns at once), then watch for changes if reload_on_change."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="agro-reranker-loader", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background threads (waits for a load in progress to finish)."""
        self._stop.set()
        self._warmer.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> RerankerManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        self.check()
        if not (self.settings.enabled and self.settings.reload_on_change):
            return
        while not self._stop.wait(self.settings.reload_period_sec):
            self.check()

    # --------------------------------------------------------------------------------------------- access

    def get(self, wait: bool | float = False) -> LoadedReranker | None:
        """The serving model, or None.

        Args:
            wait: after ``start()``, True waits for the first load to finish, a number waits at most that many
                seconds; False returns at once.
        """
        if wait is not False and self._thread is not None and not self._first_done.is_set():
            self._first_done.wait(None if wait is True else float(wait))
        with self._lock:
            return self._loaded

    @property
    def none_reason(self) -> str | None:
        """Why ``get()`` returns None (None when a model is loaded)."""
        with self._lock:
            if self._loaded is not None:
                return None
            if self._none_reason is None and not self._first_done.is_set():
                return "reranker model is still loading"
            return self._none_reason

    def reload(self) -> dict[str, Any]:
        """Check now (synchronously), loading a changed model even if it failed before. Returns what happened."""
        return self.check(force=True)

    # ---------------------------------------------------------------------------------------- resolution

    def _resolve(self) -> _Candidate:
        s = self.settings
        if not s.enabled:
            return _Candidate(None, (), reason="reranker disabled (AGRO_RERANKER_ENABLED=0)")
        if s.model_path:
            p = Path(s.model_path).expanduser()
            if p.is_dir():
                target = p.resolve()
                manifest, mhash = self._read_manifest(target)
                return _Candidate(
                    str(target),
                    ("path", str(target), mhash, _weights_stamp(target)),
                    model_id=(manifest or {}).get("id") or s.model_path,
                    release_id=(manifest or {}).get("id"),
                    manifest=manifest,
                )
            # Missing paths and hub ids go to the loader, which raises a clear error for a missing path.
            return _Candidate(s.model_path, ("ref", s.model_path), model_id=s.model_path)
        current = self.models_dir / "current"
        if not current.exists():
            return _Candidate(None, (), reason=NO_MODEL_REASON)
        target = current.resolve()
        manifest, mhash = self._read_manifest(target)
        if manifest is None:
            return _Candidate(
                None,
                ("release", str(target), None),
                reason=f"release {target.name} has no readable manifest.json (still being written?); not loaded",
            )
        release_id = str(manifest.get("id") or manifest.get("release_id") or target.name)
        return _Candidate(
            str(target), ("release", str(target), mhash), model_id=release_id, release_id=release_id,
            manifest=manifest,
        )

    @staticmethod
    def _read_manifest(target: Path) -> tuple[dict[str, Any] | None, str | None]:
        try:
            raw = (target / "manifest.json").read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError):
            return None, None
        if not isinstance(data, dict):
            return None, None
        return data, hashlib.sha256(raw).hexdigest()

    def check(self, force: bool = False) -> dict[str, Any]:
        """Resolve the model and load it if it differs from the serving one.

        Returns:
            ``{"action": "loaded"|"unchanged"|"failed"|"none"|"skipped", "model": ..., "error": ...}``.
        """
        try:
            return self._check(force)
        finally:
            self._first_done.set()

    def _check(self, force: bool) -> dict[str, Any]:
        with self._check_lock:
            if self._sync is not None and not self.settings.model_path:
                try:
                    self._sync()
                except Exception as exc:  # a registry outage must not stop the serving model
                    logger.warning("reranker: syncing the shared release failed: %s", exc)
                    with self._lock:
                        self._last_error = f"shared release sync failed: {exc}"
            cand = self._resolve()
            now = time.time()
            with self._lock:
                self._last_check = now
                self._resolved = cand
                loaded = self._loaded
            if cand.ref is None:
                with self._lock:
                    if self._loaded is None:
                        self._none_reason = cand.reason
                    else:
                        self._last_error = cand.reason
                if loaded is not None:
                    logger.warning("reranker: %s; %s keeps serving", cand.reason, loaded.model_id)
                return {"action": "none", "model": loaded.model_id if loaded else None, "error": cand.reason}
            if loaded is not None and loaded.identity == cand.identity:
                return {"action": "unchanged", "model": loaded.model_id, "error": None}
            if not force and cand.identity == self._failed_identity:
                return {"action": "skipped", "model": loaded.model_id if loaded else None, "error": self._last_error}
            return self._load(cand, loaded)

    def _load(self, cand: _Candidate, old: LoadedReranker | None) -> dict[str, Any]:
        s = self.settings
        t0 = time.perf_counter()
        try:
            scorer = load_scorer(
                cand.ref,
                backend=s.backend,
                maxlen=s.maxlen,
                query_max_tokens=s.query_max_tokens,
                threads=s.threads,
                release_id=cand.release_id,
                model_id=cand.model_id,
            )
        except (RerankerLoadError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            msg = f"failed to load reranker {cand.model_id}: {exc}"
            logger.warning("%s%s", msg, f"; {old.model_id} keeps serving" if old else "")
            with self._lock:
                self._last_error = msg
                self._failed_identity = cand.identity
                if self._loaded is None:
                    self._none_reason = msg
            return {"action": "failed", "model": old.model_id if old else None, "error": msg}
        shipped = self._preload(scorer, cand)
        new = LoadedReranker(
            scorer=scorer,
            model_id=cand.model_id or str(cand.ref),
            release_id=cand.release_id,
            target=cand.ref,
            manifest=cand.manifest,
            identity=cand.identity,
        )
        with self._lock:
            self._loaded = new
            self._kept = shipped
            self._none_reason = None
            self._last_error = None
            self._failed_identity = None
        logger.info(
            "reranker %s loaded in %.1fs (was %s)", new.model_id, time.perf_counter() - t0,
            old.model_id if old else "none",
        )
        self._warmer.start(new)
        return {"action": "loaded", "model": new.model_id, "previous": old.model_id if old else None, "error": None}

    def _preload(self, scorer: Any, cand: _Candidate) -> tuple[set[str], Path] | None:
        """Put a release's shipped (and since refreshed) chunk vectors in a bi-encoder's cache before it serves
        (``settings.shipped_vectors``): the keys it shipped and where refreshed ones are kept, or None when this is
        not a release or it is off."""
        if not self.settings.shipped_vectors or cand.identity[:1] != ("release",) or cand.ref is None:
            return None
        try:
            delta = delta_path(self.models_dir, cand.ref)
            state = preload(scorer, cand.ref, cand.manifest, delta)
        except OSError as exc:  # weights unreadable for hashing: the model loaded, so it serves without them
            logger.warning("reranker %s: cannot read its shipped vectors: %s", cand.model_id, exc)
            return None
        return (set() if state is None else state["keys"]), delta

    # --------------------------------------------------------------------------------------------- warming

    def refresh_warm(self) -> None:
        """The indexed chunks changed (an index refresh): warm the serving bi-encoder again (:class:`Warmer`)."""
        self._warmer.refresh()

    def set_warm_source(self, texts: Callable[[], Iterable[str]] | None) -> None:
        """Where a bi-encoder finds the texts to embed ahead of use (:meth:`Warmer.set_source`)."""
        self._warmer.set_source(texts)

    def wait_warm(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for the current warming to end (tests, benches); returns its state."""
        return self._warmer.wait(timeout)

    def _serving(self) -> tuple[LoadedReranker | None, tuple[set[str], Path] | None]:
        with self._lock:
            return self._loaded, self._kept

    # ----------------------------------------------------------------------------------------------- info

    def info(self) -> dict[str, Any]:
        s = self.settings
        with self._lock:
            loaded, cand = self._loaded, self._resolved
            last_check, last_error = self._last_check, self._last_error
        scorer = loaded.scorer if loaded else None
        alpha, alpha_source = effective_alpha(loaded, s)
        dense_weight, dense_weight_source = effective_dense_weight(loaded, s)
        return {
            "enabled": s.enabled,
            "model_path": s.model_path,
            "models_dir": str(self.models_dir),
            "resolved": cand.ref if cand else None,
            "resolved_release": cand.release_id if cand else None,
            "loaded": loaded is not None,
            "model": loaded.model_id if loaded else None,
            "release_id": loaded.release_id if loaded else None,
            "loaded_target": loaded.target if loaded else None,
            "manifest": _manifest_summary(loaded.manifest if loaded else None),
            "kind": getattr(scorer, "kind", None),
            "backend": getattr(scorer, "backend", None),
            "dtype": getattr(scorer, "dtype", None),
            "device": getattr(scorer, "device", None),
            "layers": getattr(scorer, "layers", None),
            "alpha": alpha,
            "alpha_source": alpha_source,
            "dense_weight": dense_weight,
            "dense_weight_source": dense_weight_source,
            "topn": s.topn,
            "batch": s.batch,
            "maxlen": s.maxlen,
            "query_max_tokens": s.query_max_tokens,
            "timeout_ms": s.timeout_ms,
            "reload_on_change": s.reload_on_change,
            "reload_period_sec": s.reload_period_sec,
            "loaded_at": loaded.loaded_at if loaded else None,
            "last_check": last_check,
            "last_error": last_error,
            "none_reason": self.none_reason,
            "prewarm": s.prewarm,
            "warm": self._warmer.state(),
            "vectors": getattr(scorer, "shipped", None),  # shipped chunk vectors loaded (or refused) for this release
        }
