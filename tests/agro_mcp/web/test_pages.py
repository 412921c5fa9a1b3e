"""Console pages over HTTP on a real engine: the editor link setting, feedback counted by source, errors shown."""

from __future__ import annotations

import html
import re

from starlette.testclient import TestClient

from agro_mcp.web import create_console_app
from tests.agro_mcp.web.conftest import console_settings
from tests.conftest import write_repo

BASE = "http://127.0.0.1:8765"


def open_console(tmp_path, embedder, **env):
    from agro_mcp.engine import Engine

    settings = console_settings(tmp_path / "home", **env)
    engine = Engine(settings, embedder=embedder)
    client = TestClient(create_console_app(engine, settings.console, "t"), base_url=BASE)
    client.get("/?token=t")
    return engine, client


def test_hits_link_to_the_editor_with_the_configured_pattern(tmp_path, embedder):
    repo = write_repo(tmp_path / "repo")
    engine, client = open_console(tmp_path, embedder, AGRO_CONSOLE_EDITOR_URL="idea://open?file={abs_path}&line={line}")
    try:
        engine.index(repo, "demo")
        page = client.get("/?q=connection+pool&corpus=demo").text
        links = [html.unescape(h) for h in re.findall(r'class="editor" href="([^"]+)"', page)]
        assert f"idea://open?file={repo.resolve() / 'db/pool.py'}&line=1" in links
        assert len(links) == len(re.findall(r'<li class="hit"', page))
    finally:
        engine.close()


def test_the_learning_page_counts_feedback_by_source_and_signal(tmp_path, embedder):
    from retrieval.types import Chunk, Hit
    from training.events.feedback import submit_feedback

    engine, client = open_console(tmp_path, embedder)
    try:
        chunk = Chunk.make("a.py", 1, 3, "python", "f", "def f():\n    pass\n")
        eid = engine.store.log_query("demo", "q", 10, [Hit(chunk, fused_score=0.1, score=0.5)], reranker_model=None,
                                     reranking_used=False, fallback_reason=None, latency_ms=1.0,
                                     index_generation=None)
        for signal, source in (("used", "assistant"), ("click", "person"), ("thumbs_down", "person")):
            submit_feedback(engine.store, eid, signal, doc_id=chunk.doc_id, source=source)
        page = client.get("/learning").text
        rows = {m[0]: [int(n) for n in re.findall(r"<td>(?:<b>)?(\d+)", m[1])]
                for m in re.findall(r"<tr><th>(assistant|person|import)</th>(.*?)</tr>", page, re.S)}
        # columns: click, used, thumbs_up, thumbs_down, rating, correct_location, all
        assert rows == {"assistant": [0, 1, 0, 0, 0, 0, 1], "person": [1, 0, 0, 1, 0, 0, 2]}
        bars = re.findall(r'<rect class="s\d+"[^>]*><title>[^<]* (assistant|person|import): (\d+)</title>', page)
        assert sorted(bars) == [("assistant", "1"), ("person", "2")]  # today's bar of the by-source chart
    finally:
        engine.close()


def test_a_search_error_is_shown_on_the_page_with_what_to_do(tmp_path, embedder):
    engine, client = open_console(tmp_path, embedder)
    try:
        r = client.get("/?q=anything&corpus=missing")
        assert r.status_code == 200 and "Unknown corpus &#39;missing&#39;" in r.text and "agro index" in r.text
    finally:
        engine.close()
