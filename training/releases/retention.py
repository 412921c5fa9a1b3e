"""Retention: what the data home stops keeping.

- Query events older than ``AGRO_EVENTS_RETENTION_DAYS`` (default 90) without feedback are deleted, with their
  results and the chunk texts nothing refers to any more. Events with feedback are training data: always kept.
- Release folders without ``manifest.json`` that ``current`` does not point at (a promote killed mid-copy) and run
  folders without ``run.json`` whose job is not running are removed.

The nightly loop and ``agro db compact`` call :func:`compact`; a promote calls :func:`remove_orphan_folders`
under its lock.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["DAY_SEC", "ORPHAN_MIN_AGE_SEC", "compact", "remove_orphan_folders"]

logger = logging.getLogger(__name__)

DAY_SEC = 86_400.0
# A run folder without run.json may belong to a job that is starting in another process; leave young ones alone.
ORPHAN_MIN_AGE_SEC = 3600.0
_UNFINISHED = ("queued", "running")


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def remove_orphan_folders(models_dir: Path, store: Any = None, *, releases_locked: bool = False,
                          now: float | None = None) -> list[str]:
    """Remove incomplete release and run folders; return their paths relative to ``models_dir``.

    Args:
        models_dir: ``AGRO_HOME/models``.
        store: the event store, to spare the run folder of a job that is still queued or running.
        releases_locked: the caller holds the promote lock, so no release is being written: every incomplete
            one goes, whatever its age. Otherwise only those older than :data:`ORPHAN_MIN_AGE_SEC`.
    """
    now = time.time() if now is None else now
    models_dir = Path(models_dir)
    removed: list[str] = []
    current = models_dir / "current"
    try:
        pointed = current.resolve() if current.is_symlink() or current.exists() else None
    except OSError:
        pointed = None
    releases = models_dir / "releases"
    for d in sorted(releases.iterdir()) if releases.is_dir() else []:
        if not d.is_dir() or d.is_symlink() or (d / "manifest.json").is_file() or d.resolve() == pointed:
            continue
        if not releases_locked and _age(d, now) < ORPHAN_MIN_AGE_SEC:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"releases/{d.name}")
    runs = models_dir / "runs"
    for d in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not d.is_dir() or d.is_symlink() or (d / "run.json").is_file() or _age(d, now) < ORPHAN_MIN_AGE_SEC:
            continue
        job = store.get_job(d.name) if store is not None else None
        if job is not None and job.state in _UNFINISHED:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"runs/{d.name}")
    kept = models_dir / "vectors"  # vectors servers embedded for a release since it shipped (reranker.vectors)
    for f in sorted(kept.glob("*.delta.npz")) if kept.is_dir() else []:
        if not (releases / f.name.removesuffix(".delta.npz") / "manifest.json").is_file():
            f.unlink(missing_ok=True)
            removed.append(f"vectors/{f.name}")
    for rel in removed:
        logger.info("removed incomplete folder models/%s", rel)
    return removed


def compact(store: Any, home: Path, retention_days: float, *, vacuum: bool = False,
            now: float | None = None) -> dict[str, Any]:
    """Apply the retention rules to one data home: old events without feedback, then orphaned model folders.

    Args:
        retention_days: events older than this many days without feedback go; 0 or less keeps every event.
        vacuum: give the freed space back to the file system (SQLite ``VACUUM``): for ``agro db compact``.

    Returns:
        ``{"events": n, "chunk_texts": n, "folders": [...]}``.
    """
    from training.releases.jobs import PROMOTE_LOCK, FileLock, JobBusyError

    now = time.time() if now is None else now
    out: dict[str, Any] = {"events": 0, "chunk_texts": 0}
    if retention_days > 0:
        out.update(store.compact_events(now - retention_days * DAY_SEC, vacuum=vacuum))
    try:
        lock = FileLock(Path(home), PROMOTE_LOCK, "compact").acquire()
    except JobBusyError:  # a promote is running: its own cleanup covers the releases
        out["folders"] = remove_orphan_folders(Path(home) / "models", store, now=now)
    else:
        try:
            out["folders"] = remove_orphan_folders(Path(home) / "models", store, releases_locked=True, now=now)
        finally:
            lock.release()
    logger.info("compacted: %d events, %d chunk texts, %d folders removed", out["events"], out["chunk_texts"],
                len(out["folders"]))
    return out
