"""A console served by uvicorn on a free loopback port over a real Engine and data home, and a headless Chromium
(Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) to use it. Screenshots go to ``.screenshots/``
(gitignored)."""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.agro_mcp.test_cli_training import make_repo
from tests.conftest import SAMPLE_FILES, write_repo

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[3] / ".screenshots"

# A file whose text, symbol and docstring try to become markup: the console must show it as text.
EVIL_FILE = '''def render_banner(name):
    """Show <script>window.__xss = 1; alert('xss')</script> and <img src=x onerror="window.__xss=2">."""
    return "<b onmouseover=alert(3)>" + name + "</b>"
'''


class Console:
    """A running console: its base URL, token, engine and settings."""

    def __init__(self, engine, settings, token: str, server, thread, port: int) -> None:
        self.engine, self.settings, self.token = engine, settings, token
        self.server, self.thread, self.port = server, thread, port
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str = "/", with_token: bool = False) -> str:
        sep = "&" if "?" in path else "?"
        return self.base + path + (f"{sep}token={self.token}" if with_token else "")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close()


def start_console(settings, embedder=None) -> Console:
    import uvicorn

    from agro_mcp.engine import Engine
    from agro_mcp.web import create_console_app, load_or_create_token

    engine = Engine(settings, embedder=embedder)
    token = load_or_create_token(settings.server.home)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_console_app(engine, settings.console, token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the console did not start")
        time.sleep(0.05)
    return Console(engine, settings, token, server, thread, port)


def console_settings(home: Path, **env: str):
    from agro_mcp.config import load_settings

    base = {"AGRO_HOME": str(home), "AGRO_RERANKER_ENABLED": "0"}
    base.update(env)
    return load_settings(env=base, config_file=home.parent / "none.toml")


@pytest.fixture
def console(tmp_path, embedder):
    """A console over a data home with the sample repository (plus the XSS file) indexed as corpus ``demo``."""
    repo = write_repo(tmp_path / "repo", {**SAMPLE_FILES, "ui/banner.py": EVIL_FILE})
    c = start_console(console_settings(tmp_path / "home"), embedder)
    c.engine.index(repo, "demo")
    c.repo = repo
    yield c
    c.stop()


def learning_env(tmp_path: Path) -> dict[str, str]:
    """Settings for a small, real training run: a tiny base cross-encoder and low thresholds."""
    from tests.reranker.conftest import build_tiny_cross_encoder

    tiny = build_tiny_cross_encoder(tmp_path / "tiny")
    env = {f"AGRO_TRAINING_{k}": v for k, v in {
        "MODEL_KIND": "cross-encoder", "BASE_MODEL": str(tiny), "MIN_TRIPLETS": "5", "PROMOTE_MIN_QUERIES": "5",
        "MAX_LENGTH": "64", "BATCH_SIZE": "8", "HELDOUT_FRACTION": "0.3", "CALIBRATION_MIN_QUERIES": "3",
        "MIN_STEPS": "0", "EPOCHS": "2"}.items()}
    env.update(AGRO_RERANKER_TOPN="10", AGRO_RERANKER_ENABLED="1")
    return env


@pytest.fixture(scope="module")
def learning_console(tmp_path_factory, embedder):
    """A console whose data home has a generated repository indexed as ``demo`` and a tiny trainable base model
    (module-scoped: its runs and releases are shared by the learning tests)."""
    tmp = tmp_path_factory.mktemp("learning")
    repo = make_repo(tmp / "repo")
    c = start_console(console_settings(tmp / "home", **learning_env(tmp)), embedder)
    c.engine.index(repo, "demo")
    c.repo = repo
    yield c
    c.stop()


@pytest.fixture(scope="session")
def chromium_available() -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium and its driver are needed: apt-get install -y chromium chromium-driver "
                    "(scripts/test.sh installs them)")


def new_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="agro-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver._agro_profile = profile  # type: ignore[attr-defined]
    return driver


def close_browser(driver) -> None:
    profile = getattr(driver, "_agro_profile", None)
    driver.quit()
    if profile:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chromium_available, request):
    driver = new_browser()
    yield driver
    try:
        shot(driver, request.node.name)
    finally:
        close_browser(driver)


def shot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    return SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")


def shot(driver, name: str, full: bool = True) -> Path:
    """Save a screenshot of the page (the whole page height when ``full``)."""
    path = shot_path(name)
    if full:
        height = driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
        driver.set_window_size(1280, min(int(height) + 140, 4000))
        driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    return path


def login(driver, console, path: str = "/") -> None:
    driver.get(console.url(path, with_token=True))
