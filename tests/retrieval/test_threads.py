"""Per-thread CPU limits: a background thread's niceness and torch team size, kept by the threads it starts, and
one query's embedding on its own thread; the threads around them keep their own settings."""

from __future__ import annotations

import os
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
import sentence_transformers  # noqa: E402,F401 - brings scikit-learn's own libgomp into the process, as in a server

from retrieval.threads import apply_limits, current_limits, limit_this_thread, single_threaded  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def _in_thread(fn):
    out = {}

    def run():
        out["value"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["value"]


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux_only
def test_a_limited_thread_and_the_threads_it_starts_run_nicer_on_one_torch_thread_while_others_keep_theirs():
    if torch.get_num_threads() < 2:
        pytest.skip("torch runs on one thread here already")
    main_threads, main_nice = torch.get_num_threads(), _nice()

    def background():
        limit_this_thread(nice=main_nice + 5, torch_threads=1)
        limits = current_limits()
        child = _in_thread(lambda: (apply_limits(limits), (_nice(), torch.get_num_threads()))[1])
        return _nice(), torch.get_num_threads(), child

    nice, threads, child = _in_thread(background)
    assert (nice, threads) == (main_nice + 5, 1)
    assert child == (main_nice + 5, 1)
    assert (_nice(), torch.get_num_threads()) == (main_nice, main_threads)  # this thread kept its own
    assert _in_thread(torch.get_num_threads) == main_threads  # and so does a thread started later


def test_single_threaded_runs_torch_on_this_thread_alone_then_restores_its_team():
    if torch.get_num_threads() < 2:
        pytest.skip("torch runs on one thread here already")

    def work():
        before = torch.get_num_threads()
        with single_threaded():
            inside = torch.get_num_threads()
            x = torch.randn(64, 64) @ torch.randn(64, 64)
        return before, inside, torch.get_num_threads(), x.shape

    before, inside, after, shape = _in_thread(work)
    assert inside == 1 and after == before >= 2 and shape == (64, 64)


def test_queries_embedded_while_another_thread_embeds_documents_get_the_vectors_they_get_alone(embedder):
    queries = [f"where is the retry delay {i} computed with jitter" for i in range(12)]
    alone = [embedder.encode_query(q, cache=False) for q in queries]
    docs = [f"def handler_{i}(request):\n    return request.json()['value_{i}'] * {i}\n" * 20 for i in range(64)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def index_loop():
        try:
            while not stop.is_set():
                embedder.encode_documents(docs)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    t = threading.Thread(target=index_loop)
    t.start()
    try:
        during = [embedder.encode_query(q, cache=False) for q in queries for _ in range(2)]
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    for i, vec in enumerate(during):
        assert float(vec @ alone[i // 2]) > 0.9999
