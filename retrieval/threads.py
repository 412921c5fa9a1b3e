"""Per-thread CPU limits for background work (index builds, training) inside a process that also serves searches.

Two knobs, both per thread on Linux, so a search thread of the same process keeps its own:

* the niceness (``setpriority`` on the thread id): the scheduler gives a waking search thread the CPU first;
* the size of torch's OpenMP team (``omp_set_num_threads`` of the calling thread only). ``torch.set_num_threads``
  would not do: it also sets a process-wide default that every thread started later (the servers' worker threads,
  which come and go) takes up, so searches would lose their threads too.

A thread started by a limited thread inherits its niceness from the kernel but not its OpenMP team size:
:func:`current_limits` taken in the parent and :func:`apply_limits` called first in the child carry it over.
Standard library only; torch is touched only when it is already imported.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ThreadLimits", "apply_limits", "current_limits", "limit_this_thread", "single_threaded"]

logger = logging.getLogger(__name__)

_gomp: ctypes.CDLL | None | bool = None  # None: not looked up yet; False: none loaded


@dataclass(frozen=True)
class ThreadLimits:
    nice: int
    torch_threads: int | None


def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime of torch (its libgomp on Linux), or None. Call only once torch is imported."""
    global _gomp
    if _gomp is None:
        _gomp = False
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                paths = sorted({line.split()[-1] for line in f if "libgomp" in line})
            # torch's own copy: other wheels (scikit-learn) bring theirs, with their own per-thread settings
            torch_dir = os.path.dirname(sys.modules["torch"].__file__) + os.sep
            paths = [p for p in paths if p.startswith(torch_dir)]
            if paths:
                _gomp = ctypes.CDLL(paths[0])
        except OSError:
            pass
    return _gomp or None


def _torch_loaded() -> bool:
    return "torch" in sys.modules


def limit_this_thread(nice: int = 0, torch_threads: int | None = None) -> None:
    """Lower this thread's priority by ``nice`` (Linux; elsewhere it would renice the whole process) and cap the
    OpenMP team that torch work started from this thread uses at ``torch_threads``."""
    if nice and sys.platform.startswith("linux"):
        try:
            current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            if current < nice:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:
            logger.warning("cannot lower the priority of background work: %s", exc)
    if torch_threads and _torch_loaded():
        gomp = _openmp()
        if gomp is None:
            return
        import torch

        torch.get_num_threads()  # torch sets each thread's team size on its first use: let it do so first
        gomp.omp_set_num_threads(int(torch_threads))


def current_limits() -> ThreadLimits:
    """This thread's niceness and OpenMP team size (None when torch is not loaded), to hand to a child thread."""
    nice = 0
    if sys.platform.startswith("linux"):
        try:
            nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        except OSError:
            nice = 0
    threads = None
    if _torch_loaded() and _openmp() is not None:
        import torch

        threads = torch.get_num_threads()
    return ThreadLimits(nice, threads)


def apply_limits(limits: ThreadLimits | None) -> None:
    """Call first in a thread started by one whose :func:`current_limits` were ``limits``."""
    if limits is not None and (limits.nice > 0 or limits.torch_threads):
        limit_this_thread(limits.nice, limits.torch_threads)


@contextmanager
def single_threaded():
    """Torch work inside runs on this thread alone (its OpenMP team size is 1 meanwhile, then restored).

    For one query's embedding: ~70 small kernels, each a parallel region whose second thread must be woken and
    waited for. On 2 shared cores that hand-off dominated: a warm daemon's query embedding took 99-205 ms p50 with
    a team of 2 and 14-15 ms with 1 (load average 11, bench_daemon's 10k-chunk corpus)."""
    gomp = _openmp() if _torch_loaded() else None
    if gomp is None:
        yield
        return
    sys.modules["torch"].get_num_threads()  # a thread's first torch call sets its team size: have it done first
    before = gomp.omp_get_max_threads()
    if before == 1:
        yield
        return
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)
