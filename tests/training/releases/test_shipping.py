"""A promoted bi-encoder release ships its chunk vectors: a server started on it ranks from them at once, embeds
only what an index refresh changed (and keeps it), and refuses a damaged file without serving a wrong score."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import pytest

from agro_mcp.engine import Engine
from reranker.vectors import VECTORS_FILE, delta_path
from retrieval.models import minilm_path
from retrieval.types import located_text
from tests.conftest import write_repo
from tests.training.test_loop import FILES, Ctx
from training.loop import promote_step
from training.releases.promote import current_release, rollback

MORE = {"util/text.py": '''
    def slugify(title):
        """Lower-case words joined by dashes, for URLs."""
        return "-".join(title.lower().split())


    def shout(text):
        return text.upper() + "!"
'''}

QUERY = "distance between two points on the earth"


def _settings(make_settings):
    return make_settings(AGRO_RERANKER_ENABLED="1", AGRO_RERANKER_BACKEND="fp32", AGRO_RERANKER_MAXLEN="128",
                         AGRO_RERANKER_RELOAD_ON_CHANGE="0")


def _run(models, run_id, vectors_from=None):
    """A succeeded bi-encoder run (MiniLM's weights, hard-linked) the gate accepted."""
    d = models / "runs" / run_id
    shutil.copytree(minilm_path(), d / "model", copy_function=os.link)
    if vectors_from is not None:
        shutil.copy2(vectors_from, d / "model" / VECTORS_FILE)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "state": "succeeded"}))
    cur = current_release(models)
    (d / "evaluation.json").write_text(json.dumps({"current_release": cur["id"] if cur else None, "decision": {
        "promote": True, "reasons": ["better"], "figures": {}}}))


def _keys(scorer, gen):
    return {scorer.key(located_text(c.path, c.symbol, c.text)) for c in gen.chunks}


def _serve(settings, embedder):
    srv = Engine(settings, embedder=embedder)
    srv.start_background(warm=True)
    return srv, srv.reranker.get(wait=True).scorer


@pytest.fixture
def promoted(tmp_path, make_settings, embedder):
    """A data home with an indexed corpus and a promoted bi-encoder release that shipped its vectors."""
    settings = _settings(make_settings)
    repo = write_repo(tmp_path / "repo", {**FILES, **MORE})
    eng = Engine(settings, embedder=embedder)
    try:
        eng.index(repo, "trips")
        models = settings.server.home / "models"
        _run(models, "run-1")
        assert promote_step(eng.workspace, Ctx(), "run-1")["decision"] == "promoted"
        n = len(eng.generation("trips").chunks)
    finally:
        eng.close()
    return settings, repo, models, n


@pytest.mark.slow
def test_a_served_release_ranks_from_its_shipped_vectors_and_embeds_only_what_a_refresh_changed(promoted, embedder):
    settings, repo, models, n = promoted
    manifest = current_release(models)
    assert manifest["vectors"]["count"] == n and manifest["vectors"]["dtype"] == "float32"
    assert (models / "releases" / manifest["id"] / VECTORS_FILE).is_file()

    srv, scorer = _serve(settings, embedder)
    try:
        assert scorer.shipped["shipped"] == n
        res = srv.search(QUERY, "trips")
        assert res.reranking_used and res.results[0].path == "geo/distance.py"
        assert scorer.embedded == 0  # the first search after the start: a lookup, no chunk through the model
        assert srv.reranker.wait_warm(60)["embedded"] == 0

        before = _keys(scorer, srv.generation("trips"))
        (repo / "util" / "text.py").write_text('def shout(text):\n    return text.upper() + "!!"\n')
        srv.refresh("trips")
        gen = srv.generation("trips")  # the new generation starts the warm-up again, in the background
        changed = _keys(scorer, gen) - before
        assert changed and all(c.path == "util/text.py" for c in gen.chunks
                               if scorer.key(located_text(c.path, c.symbol, c.text)) in changed)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (srv.reranker.wait_warm(60) or {}).get("persisted"):
            time.sleep(0.2)
        assert scorer.embedded == len(changed)  # only the changed file's chunks
        assert srv.reranker.info()["warm"]["persisted"] == len(changed)
        assert delta_path(models, models / "releases" / manifest["id"]).is_file()
    finally:
        srv.close()

    again, scorer2 = _serve(settings, embedder)  # the next start is warm too
    try:
        assert scorer2.shipped == {"shipped": n, "delta": len(changed), "refused": []}
        assert again.search(QUERY, "trips").reranking_used and scorer2.embedded == 0
    finally:
        again.close()


@pytest.mark.slow
def test_a_rollback_serves_the_vectors_of_the_release_it_returns_to(promoted, embedder):
    settings, _, models, n = promoted
    first = current_release(models)
    _run(models, "run-2", vectors_from=models / "releases" / first["id"] / VECTORS_FILE)
    srv = Engine(settings, embedder=embedder)
    try:
        assert promote_step(srv.workspace, Ctx(), "run-2")["decision"] == "promoted"
        assert current_release(models)["vectors"]["count"] == n
        assert rollback(settings.server.home, srv.store)["release"] == first["id"]
        assert srv.reranker.reload()["model"] == first["id"]
        scorer = srv.reranker.get().scorer
        assert scorer.shipped["shipped"] == n and srv.search(QUERY, "trips").reranking_used
        assert scorer.embedded == 0
    finally:
        srv.close()


@pytest.mark.slow
def test_a_truncated_vectors_file_is_refused_with_a_log_line_and_the_release_still_serves(promoted, embedder, caplog):
    settings, _, models, n = promoted
    rel = models / "releases" / current_release(models)["id"]
    raw = (rel / VECTORS_FILE).read_bytes()
    (rel / VECTORS_FILE).write_bytes(raw[: len(raw) - 100])
    assert not delta_path(models, rel).exists()
    with caplog.at_level(logging.WARNING, logger="reranker.vectors"):
        srv = Engine(settings, embedder=embedder)
        try:
            assert srv.reranker.reload()["action"] == "loaded"
            loaded = srv.reranker.get()
            assert loaded.scorer.shipped["shipped"] == 0 and loaded.scorer.shipped["refused"]
            res = srv.search(QUERY, "trips")
            assert res.reranking_used and res.results[0].path == "geo/distance.py"
            assert loaded.scorer.embedded > 0  # embedded on demand
        finally:
            srv.close()
    assert any("shipped vectors refused" in r.getMessage() for r in caplog.records)
