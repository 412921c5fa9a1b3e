"""The console in a real headless Chromium: search and feedback, the guard, and indexed code kept inert.

Each test saves a screenshot of its page to ``.screenshots/`` (gitignored)."""

from __future__ import annotations

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.agro_mcp.web.conftest import login, shot

pytestmark = pytest.mark.slow


def wait(driver, timeout: float = 20):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def status_of(driver, hit) -> str:
    return hit.find_element(By.CSS_SELECTOR, ".fb-status").text


def test_search_expand_thumbs_down_and_correct_location_land_in_the_store_with_the_event_id(console, browser):
    login(browser, console)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("/")  # the keyboard shortcut focuses the query box
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    browser.switch_to.active_element.send_keys("validate the oauth token expiry", Keys.ENTER)
    hits = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
    assert len(hits) >= 3
    event_id = browser.find_element(By.ID, "results").get_attribute("data-event")
    first, second = hits[0], hits[1]
    first_doc, second_doc = first.get_attribute("data-doc"), second.get_attribute("data-doc")
    assert "BM25 #" in first.text and "final" in first.text  # why it ranked

    first.find_element(By.TAG_NAME, "summary").click()  # expanding a hit records a click
    wait(browser).until(lambda d: "recorded" in status_of(d, first))
    assert first.find_element(By.CSS_SELECTOR, ".code").is_displayed()
    second.find_element(By.CSS_SELECTOR, 'button[data-signal="thumbs_down"]').click()
    wait(browser).until(lambda d: "recorded" in status_of(d, second))
    # keyboard: j selects the next hit, u marks it used
    browser.find_element(By.TAG_NAME, "body").send_keys("j")
    browser.switch_to.active_element.send_keys("u")
    wait(browser).until(lambda d: "used" in status_of(d, d.find_elements(By.CSS_SELECTOR, "li.hit")[2]))
    third_doc = browser.find_elements(By.CSS_SELECTOR, "li.hit")[2].get_attribute("data-doc")

    # the answer is at ...: the path completes from the indexed files
    path = browser.find_element(By.ID, "answer-path")
    path.send_keys("utils/re")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-paths option"))
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#answer-paths option")]
    assert options == ["utils/retry.py"]
    path.send_keys("try.py")
    browser.find_element(By.ID, "answer-start").send_keys("4")
    browser.find_element(By.ID, "answer-end").send_keys("7")
    browser.find_element(By.CSS_SELECTOR, "#answer-at button").click()
    answer = browser.find_element(By.ID, "answer-at")
    wait(browser).until(lambda d: "recorded" in answer.find_element(By.CSS_SELECTOR, ".fb-status").text)
    shot(browser, "search_with_results")

    stored = console.engine.store.feedback_for_event(event_id)
    got = [(f.signal, f.doc_id, f.source) for f in stored]
    assert got == [
        ("click", first_doc, "person"),
        ("thumbs_down", second_doc, "person"),
        ("used", third_doc, "person"),
        ("correct_location", "utils/retry.py:4-7", "person"),
    ]
    assert console.engine.store.get_event(event_id).source == "console"


def test_indexed_code_with_script_and_onerror_renders_as_inert_text(console, browser):
    login(browser, console, "/?corpus=demo&q=render+banner+script")
    hit = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, 'li.hit[data-doc^="ui/banner.py"]'))
    hit.find_element(By.TAG_NAME, "summary").click()
    code = hit.find_element(By.CSS_SELECTOR, ".code")
    wait(browser).until(lambda d: code.is_displayed())
    assert "<script>window.__xss = 1; alert('xss')</script>" in code.text
    assert 'onerror="window.__xss=2"' in code.text
    assert code.find_elements(By.CSS_SELECTOR, "script, img, b") == []
    assert browser.execute_script("return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_a_request_without_the_token_is_refused_and_the_token_link_opens_a_session(console, browser):
    browser.get(console.url("/learning"))
    assert "needs its token" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(console.url("/learning") + "?token=not-the-token")
    assert "Wrong token" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(console.url("/learning", with_token=True))
    assert browser.current_url == console.url("/learning")  # the token left the address bar
    assert browser.find_element(By.TAG_NAME, "h1").text == "Learning"
    cookie = browser.get_cookie("agro_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # not readable by scripts


def test_a_post_without_the_csrf_token_is_refused(console, browser):
    login(browser, console, "/?corpus=demo&q=connection+pool")
    event_id = wait(browser).until(lambda d: d.find_element(By.ID, "results")).get_attribute("data-event")
    doc = browser.find_element(By.CSS_SELECTOR, "li.hit").get_attribute("data-doc")
    script = """
        const done = arguments[arguments.length - 1];
        const body = new URLSearchParams({event_id: arguments[0], signal: 'thumbs_up', doc_id: arguments[1]});
        const send = (headers) => fetch('/api/feedback', {method: 'POST', body, headers, credentials: 'same-origin'})
            .then(r => r.status);
        Promise.all([send({}), send({'X-CSRF-Token': 'forged'}),
                     send({'X-CSRF-Token': document.body.dataset.csrf})]).then(done);
    """
    assert browser.execute_async_script(script, event_id, doc) == [403, 403, 200]
    assert [f.signal for f in console.engine.store.feedback_for_event(event_id)] == ["thumbs_up"]
    shot(browser, "csrf")


def test_corpora_shows_the_index_and_a_refresh_streams_to_its_end_without_a_reload(console, browser):
    login(browser, console, "/corpora")
    card = browser.find_element(By.CSS_SELECTOR, 'section.corpus[data-corpus="demo"]')
    assert "6 / " in card.text and "stale files" in card.text
    before = console.engine.generation("demo").generation_id
    (console.repo / "utils" / "retry.py").write_text("def retry_forever():\n    return True\n")
    browser.get(console.url("/corpora"))  # the stale count is computed, not remembered
    card = browser.find_element(By.CSS_SELECTOR, 'section.corpus[data-corpus="demo"]')
    assert "1 (added 0, changed 1, deleted 0)" in card.text
    card.find_element(By.TAG_NAME, "button").click()
    flash = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, ".flash.ok")).text
    run_id = flash.rsplit("(", 1)[1].rstrip(")")
    browser.execute_script("window.__samePage = 1")
    state = f'tr.job[data-job="{run_id}"] .state'
    wait(browser, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, state).text == "succeeded")
    assert browser.execute_script("return window.__samePage") == 1
    assert browser.find_element(By.CSS_SELECTOR, f'tr.job[data-job="{run_id}"] progress').get_attribute("value") == "1"
    message = browser.find_element(By.CSS_SELECTOR, f'tr.job[data-job="{run_id}"] .message').text
    assert "reload to see the result" in message
    assert console.engine.generation("demo").generation_id != before
    shot(browser, "corpora_after_refresh")
