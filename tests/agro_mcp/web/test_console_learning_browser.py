"""The learning page in a real headless Chromium: a training job's progress streams in without a reload, its
gate table, the evaluation history, and promote / rollback through their confirmation step.

The tests share one data home (module-scoped console) with a small generated repository and a tiny base model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from selenium.webdriver.support.ui import WebDriverWait as _Wait

from tests.agro_mcp.test_cli_training import NOUNS, WORDS
from tests.agro_mcp.web.conftest import login, shot, shot_path

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT = 900


def WebDriverWait(driver, timeout: float):  # noqa: N802 - Selenium's wait, riding out a page being replaced
    return _Wait(driver, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def job_cell(driver, run_id: str, selector: str):
    return driver.find_element(By.CSS_SELECTOR, f'tr.job[data-job="{run_id}"] {selector}')


def succeeded_run(console) -> str:
    """A succeeded training run in the console's home: the newest one, or one trained here (as `agro train`)."""
    from training import loop
    from training.releases.admin import list_runs
    from training.releases.jobs import run_job

    models = Path(console.engine.home) / "models"
    for r in list_runs(models):
        if r.get("state") == "succeeded":
            return r["run_id"]
    run_id, _ = run_job(console.engine.store, Path(console.engine.home), "train",
                        lambda ctx: loop.run_loop(console.engine.workspace, ctx, ("bootstrap",), promote=False))
    return run_id


def test_a_training_job_started_in_the_page_shows_its_progress_without_a_reload(learning_console, browser):
    login(browser, learning_console, "/learning")
    Select(browser.find_element(By.NAME, "dataset")).select_by_value("bootstrap")
    browser.find_element(By.ID, "train").click()
    flash = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".flash.ok")).text
    run_id = flash.split("train job ")[1].split()[0]
    browser.execute_script("window.__samePage = 'still here'")  # gone if the page reloads
    seen: list[float] = []
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while time.monotonic() < deadline:
        value = float(job_cell(browser, run_id, "progress").get_attribute("value"))
        if not seen or value != seen[-1]:
            seen.append(value)
        if job_cell(browser, run_id, ".state").text in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert job_cell(browser, run_id, ".state").text == "succeeded", job_cell(browser, run_id, ".message").text
    assert browser.execute_script("return window.__samePage") == "still here"
    # it advanced in steps, live (the job's own fraction may step back between its stages: not the page's concern)
    assert len(set(seen)) >= 3 and seen[-1] == 1.0 and max(seen[:-1]) < 1.0, seen
    shot(browser, "learning_after_training")

    browser.get(learning_console.url(f"/learning/runs/{run_id}"))
    shot(browser, "training_run_gate_table")
    gate = browser.find_element(By.ID, "gate")
    labels = [th.text for th in gate.find_elements(By.CSS_SELECTOR, "table.gate-table tbody th")]
    assert labels[0] == "candidate" and "retrieval alone" in labels
    assert "Gate decision:" in gate.text and gate.find_elements(By.CSS_SELECTOR, ".reasons li")
    assert "MRR@10" in gate.text and "Hit@5" in gate.text
    run = json.loads((Path(learning_console.engine.home) / "models" / "runs" / run_id / "run.json").read_text())
    mined = run["split"]["sources"]
    assert all(f"{src} {n}" in browser.find_element(By.CSS_SELECTOR, "table.kv").text for src, n in mined.items())


def test_a_running_job_is_cancelled_from_the_page(learning_console, browser):
    login(browser, learning_console, "/learning")
    Select(browser.find_element(By.NAME, "dataset")).select_by_value("bootstrap")
    browser.find_element(By.ID, "train").click()
    flash = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".flash.ok")).text
    run_id = flash.split("train job ")[1].split()[0]
    job_cell(browser, run_id, "button.cancel").click()
    WebDriverWait(browser, 30).until(lambda d: "cancellation of" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    browser.execute_script("window.__samePage = 1")
    WebDriverWait(browser, 300).until(lambda d: job_cell(d, run_id, ".state").text in ("cancelled", "failed",
                                                                                      "succeeded"))
    assert job_cell(browser, run_id, ".state").text == "cancelled"
    assert browser.execute_script("return window.__samePage") == 1
    assert learning_console.engine.store.get_job(run_id).state == "cancelled"
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.job[data-job="{run_id}"] button.cancel')
    shot(browser, "job_cancelled")


def test_the_evaluation_history_charts_each_configuration_per_level(learning_console, browser):
    from training.releases.admin import run_admin_action
    from training.releases.jobs import run_job

    golden = learning_console.repo / "golden.json"
    items, n = [], 0
    for f in range(6):
        for j in range(8):
            v, o = WORDS[(f * 8 + j) % len(WORDS)], NOUNS[(f * 3 + j) % len(NOUNS)]
            if j % 3 == 0:
                items.append({"q": f"{v} the {o} number {n}", "repo": "demo", "expect_paths": [f"mod{f}.py"]})
            n += 1
    golden.write_text(json.dumps(items))
    engine = learning_console.engine
    for _ in range(2):
        out = run_admin_action(engine.workspace, "evaluate", dataset="golden:demo")  # the corpus's own golden.json
        deadline = time.monotonic() + 300
        while engine.store.get_job(out["run_id"]).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.store.get_job(out["run_id"]).state == "succeeded"
    login(browser, learning_console, "/learning")
    history = browser.find_element(By.ID, "eval-history")
    charts = history.find_elements(By.CSS_SELECTOR, "svg.chart")
    titles = [c.get_attribute("aria-label") for c in charts]
    assert titles == ["MRR@10, file level", "MRR@10, span level", "Hit@5, file level", "Hit@5, span level"]
    legend = charts[0].text
    for name in ("BM25", "dense", "fused"):
        assert name in legend
    assert len(charts[0].find_elements(By.CSS_SELECTOR, "circle.pt.s0")) >= 2  # BM25: one point per evaluation
    assert charts[0].find_elements(By.CSS_SELECTOR, "line.mark")  # the question set changed at least once
    shot(browser, "learning_with_evaluations")
    history = browser.find_element(By.ID, "eval-history")
    history.screenshot(str(shot_path("evaluation_history")))


def test_promote_and_roll_back_through_the_confirmation_step(learning_console, browser):
    run_id = succeeded_run(learning_console)
    models = Path(learning_console.engine.home) / "models"
    store = learning_console.engine.store
    login(browser, learning_console, "/learning")

    def promote_forced() -> str:
        browser.get(learning_console.url("/learning"))
        browser.find_element(By.CSS_SELECTOR, f'tr.run[data-run="{run_id}"] a.promote').click()
        WebDriverWait(browser, 30).until(  # the confirmation step (the click may still be loading it)
            lambda d: "Promote run" in d.find_element(By.TAG_NAME, "h1").text)
        assert browser.find_elements(By.CSS_SELECTOR, ".gate .decision")
        browser.find_element(By.ID, "force").click()
        browser.find_element(By.ID, "confirm").click()
        flash = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".flash")).text
        job = flash.split("promote job ")[1].split()[0]
        deadline = time.monotonic() + 300
        while store.get_job(job).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.get_job(job).state == "succeeded", store.get_job(job).error
        return json.loads((models / "current" / "manifest.json").read_text())["id"]

    first = promote_forced()
    second = promote_forced()
    assert second != first
    browser.get(learning_console.url("/learning"))
    current = browser.find_element(By.CSS_SELECTOR, ".timeline li.current")
    assert second in current.text and "current" in current.text
    browser.find_element(By.ID, "rollback").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Roll back?")
    assert first in browser.find_element(By.TAG_NAME, "main").text
    assert json.loads((models / "current" / "manifest.json").read_text())["id"] == second  # nothing yet
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, 30).until(lambda d: "rolled back" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    assert json.loads((models / "current" / "manifest.json").read_text())["id"] == first
    assert first in browser.find_element(By.CSS_SELECTOR, ".timeline li.current").text
    decisions = [p["decision"] for p in store.list_promotions()]
    assert decisions[0] == "rollback" or "roll" in decisions[0]
    shot(browser, "releases_after_rollback")
    browser.get(learning_console.url("/reranker"))  # the rollback reloaded the serving model
    rows = dict(tuple(tr.find_elements(By.CSS_SELECTOR, "th, td")[i].text for i in (0, 1))
                for tr in browser.find_elements(By.CSS_SELECTOR, "table.reranker tr"))
    assert rows["release"] == first and rows["state"] == "loaded" and rows["kind"] == "cross-encoder"
    assert rows["last error"] == "none" and "UTC" in rows["last reload"]
    shot(browser, "reranker_panel")
