from __future__ import annotations

import threading
import time

import pytest

from reranker.cache import ScoreCache
from reranker.manager import NO_MODEL_REASON, RerankerManager
from reranker.settings import RerankerSettings
from reranker.stage import rerank
from retrieval.types import Chunk, Hit

from .conftest import build_tiny_cross_encoder, make_release, point_current


def fast_settings(**kw) -> RerankerSettings:
    base = dict(backend="fp32", maxlen=64, reload_on_change=False, threads=None)
    base.update(kw)
    return RerankerSettings(**base)


def hits(n: int = 6) -> list[Hit]:
    return [Hit(Chunk.make(f"m{i}.py", 1, 3, "python", None, f"def fn{i}(x):\n    return x + {i}"), 1 - i / 10,
                1 - i / 10) for i in range(n)]


def test_with_nothing_to_load_get_is_none_and_the_reason_says_how_to_fix_it(tmp_path):
    with RerankerManager(fast_settings(), tmp_path / "models") as m:
        m.start()
        assert m.get(wait=True) is None
        assert m.none_reason == NO_MODEL_REASON
        out = rerank("q", hits(), m, m.settings, None)
        assert not out.used and out.fallback_reason == NO_MODEL_REASON
        info = m.info()
        assert info["loaded"] is False and info["none_reason"] == NO_MODEL_REASON and info["last_check"]


def test_disabled_reranker_loads_nothing(models_dir):
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(enabled=False), models_dir) as m:
        assert m.reload()["action"] == "none"
        assert m.get() is None and "disabled" in m.none_reason


def test_current_release_is_loaded_with_its_manifest(models_dir):
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(), models_dir) as m:
        m.start()
        lr = m.get(wait=True)
        assert lr is not None and lr.model_id == "r1" and lr.release_id == "r1"
        info = m.info()
        assert info["loaded"] and info["release_id"] == "r1" and info["manifest"]["metrics"] == {"mrr@10": 0.5}
        assert (info["backend"], info["dtype"], info["device"]) == ("fp32", "float32", "cpu")
        assert info["layers"] == 2  # the tiny model's depth: a layer-cut student shows fewer
        assert info["loaded_at"] and info["last_error"] is None and info["none_reason"] is None
        out = rerank("q", hits(), m, m.settings, None)
        assert out.used and out.model == "r1"


def test_explicit_model_path_wins_over_current(models_dir, tiny_dir_b):
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(model_path=str(tiny_dir_b)), models_dir) as m:
        assert m.reload()["action"] == "loaded"
        lr = m.get()
        assert lr.model_id == str(tiny_dir_b) and lr.target == str(tiny_dir_b.resolve())


def test_explicit_path_that_does_not_exist_is_reported_not_raised(models_dir, tmp_path):
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(model_path=str(tmp_path / "missing")), models_dir) as m:
        res = m.reload()
        assert res["action"] == "failed" and "does not exist" in res["error"]
        assert m.get() is None and "does not exist" in m.none_reason


def test_a_release_without_manifest_is_never_loaded(models_dir, tiny_dir):
    make_release(models_dir, "r3", tiny_dir, manifest=False)
    point_current(models_dir, "r3")
    with RerankerManager(fast_settings(), models_dir) as m:
        assert m.reload()["action"] == "none"
        assert m.get() is None and "r3 has no readable manifest.json" in m.none_reason


def test_reload_follows_a_promotion_and_a_rollback(models_dir):
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(), models_dir) as m:
        assert m.reload()["action"] == "loaded"
        held = m.get()
        assert m.reload()["action"] == "unchanged"
        point_current(models_dir, "r2")
        res = m.reload()
        assert res == {"action": "loaded", "model": "r2", "previous": "r1", "error": None}
        assert m.get().model_id == "r2"
        assert held.model_id == "r1" and held.scorer.score("q", ["x"]).shape == (1,)  # in-flight object still works
        point_current(models_dir, "r1")  # rollback to an older release
        assert m.reload()["model"] == "r1" and m.get().model_id == "r1"


def test_a_bad_release_keeps_the_old_model_serving_and_is_reported(models_dir, tiny_dir, tmp_path):
    point_current(models_dir, "r1")
    make_release(models_dir, "r3", tiny_dir, manifest=False)
    make_release(models_dir, "r4", build_tiny_cross_encoder(tmp_path / "three", num_labels=3))
    with RerankerManager(fast_settings(), models_dir) as m:
        m.reload()
        point_current(models_dir, "r3")
        assert m.reload()["action"] == "none"
        assert m.get().model_id == "r1" and "manifest" in m.info()["last_error"]
        point_current(models_dir, "r4")
        res = m.reload()
        assert res["action"] == "failed" and "1 output label, but got 3" in res["error"]
        assert m.get().model_id == "r1" and "but got 3" in m.info()["last_error"]
        assert m.check()["action"] == "skipped"  # the periodic check does not retry a known-bad release
        (models_dir / "releases" / "r3" / "manifest.json").write_text('{"id": "r3"}')  # writer finished
        point_current(models_dir, "r3")
        assert m.reload()["model"] == "r3" and m.info()["last_error"] is None


def test_the_background_watcher_picks_up_a_promotion_within_the_period(models_dir):
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(reload_on_change=True, reload_period_sec=0.05), models_dir) as m:
        m.start()
        assert m.get(wait=True).model_id == "r1"
        point_current(models_dir, "r2")
        deadline = time.monotonic() + 30
        seen = threading.Event()
        while time.monotonic() < deadline and not seen.wait(0.02):
            if m.get().model_id == "r2":
                seen.set()
        assert seen.is_set()
    assert m._thread is None  # close() joined the watcher


def test_concurrent_searches_all_succeed_while_reload_swaps_models(models_dir):
    point_current(models_dir, "r1")
    settings = fast_settings()
    cache = ScoreCache(1000)
    with RerankerManager(settings, models_dir) as m:
        m.reload()
        stop = threading.Event()
        results: list = []
        errors: list = []

        def search(worker: int) -> None:
            n = 0
            while not stop.is_set() or n < 3:
                try:
                    out = rerank(f"query {worker} {n % 3}", hits(), m, settings, cache)
                    results.append(out)
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
                n += 1

        threads = [threading.Thread(target=search, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        models = []
        for i in range(6):
            point_current(models_dir, "r2" if i % 2 == 0 else "r1")
            models.append(m.reload()["model"])
        stop.set()
        for t in threads:
            t.join()
    assert models == ["r2", "r1"] * 3
    assert not errors
    assert len(results) >= 24 and all(r.used and r.fallback_reason is None for r in results)
    assert {r.model for r in results} <= {"r1", "r2"}


@pytest.mark.parametrize("wait", [False, 0.0])
def test_get_without_waiting_returns_at_once(models_dir, wait):
    point_current(models_dir, "r1")
    m = RerankerManager(fast_settings(), models_dir)
    try:
        assert m.get(wait=wait) is None
        assert m.none_reason == "reranker model is still loading"
    finally:
        m.close()


def _bi_release(models_dir, release_id: str):
    from retrieval.models import minilm_path

    make_release(models_dir, release_id, minilm_path())
    point_current(models_dir, release_id)


def test_a_bi_encoder_release_warms_its_candidate_cache_from_the_warm_source_in_the_background(models_dir):
    _bi_release(models_dir, "bi1")
    texts = [h.chunk.text for h in hits(5)]
    with RerankerManager(fast_settings(), models_dir) as m:
        m.set_warm_source(lambda: iter(texts))
        assert m.reload()["action"] == "loaded"
        state = m.wait_warm(60)
        assert state["model"] == "bi1" and state["state"] == "done" and state["embedded"] == 5
        assert m.info()["warm"]["embedded"] == 5 and m.info()["prewarm"] is True
        assert m.get().scorer.describe()["cached_vectors"] == 5


def test_warming_is_off_without_a_source_with_prewarm_off_and_for_cross_encoders(models_dir):
    _bi_release(models_dir, "bi1")
    with RerankerManager(fast_settings(prewarm=False), models_dir) as m:
        m.set_warm_source(lambda: iter(["def f(): pass"]))
        m.reload()
        assert m.wait_warm(5) is None and m.get().scorer.describe()["cached_vectors"] == 0
    with RerankerManager(fast_settings(), models_dir) as m:  # no source: a one-shot command
        m.reload()
        assert m.wait_warm(5) is None
    point_current(models_dir, "r1")
    with RerankerManager(fast_settings(), models_dir) as m:
        m.set_warm_source(lambda: iter(["def f(): pass"]))
        m.reload()
        assert m.get().model_id == "r1" and m.wait_warm(5) is None


def test_a_source_set_after_the_load_warms_the_serving_model_and_a_failing_source_is_reported(models_dir):
    _bi_release(models_dir, "bi1")

    def broken():
        yield "def ok(): pass"
        raise OSError("index went away")

    with RerankerManager(fast_settings(), models_dir) as m:
        m.reload()
        m.set_warm_source(broken)
        state = m.wait_warm(60)
        assert state["state"] == "failed" and "index went away" in state["error"]
        assert m.get() is not None  # the model keeps serving
