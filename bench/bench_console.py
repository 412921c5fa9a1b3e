"""Console page-load benchmark in headless Chromium: the search page with 10 results and the learning page with
50 training runs, p50 / p95 over ``--loads`` loads each.

Usage (from the repository root, venv active; needs Debian's ``chromium`` and ``chromium-driver``)::

    python bench/bench_console.py                 # 20 loads of each page
    python bench/bench_console.py --loads 50 --runs 100

What a load is: ``driver.get(url)`` of a page of a console served by uvicorn on loopback (the same
``create_console_app`` ``agro console`` serves), timed by the browser's Navigation Timing entry: ``ttfb`` (request
start to first byte, i.e. the server's work: for the search page a real ``Engine.search`` with its event logged),
``dom`` (DOMContentLoaded) and ``load`` (the load event: page, CSS, script and SVG charts all in).

The data home is generated under ``--home``: a 12-file Python repository (96 functions) indexed with the real
MiniLM embedder for the search page (reranker off: the figure is the console's cost over retrieval, not the
cross-encoder's); for the learning page ``--runs`` run folders with their ``run.json`` and ``evaluation.json`` in the
shape training writes, as many stored evaluations, 30 jobs and 600 feedback events over 30 days (synthetic records:
the page reads and draws them; how they were made does not change its cost).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["parse", "render", "cache", "merge", "split", "encode", "decode", "validate", "format", "compress"]
NOUNS = ["header", "token", "template", "path", "config", "record", "stream", "buffer", "query", "schema"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_repo(root: Path, files: int = 12) -> Path:
    root.mkdir(parents=True)
    n = 0
    for f in range(files):
        parts = []
        for j in range(8):
            v, o = WORDS[(f + j) % len(WORDS)], NOUNS[(f * 3 + j) % len(NOUNS)]
            body = "\n".join(f"    step_{k} = {o}_{n} + {k}" for k in range(6))
            parts.append(f'def {v}_{o}_{n}({o}_{n}):\n    """{v.title()} the {o} number {n}."""\n{body}\n'
                         "    return step_5\n")
            n += 1
        (root / f"mod{f}.py").write_text("\n\n".join(parts))
    return root


def fill_learning(engine, runs: int, seed: int = 0) -> None:
    """``runs`` run folders (run.json + evaluation.json), evaluations, jobs and feedback in the engine's home."""
    from retrieval.types import Chunk, Hit

    rng = random.Random(seed)
    store = engine.store
    models = Path(engine.home) / "models" / "runs"
    configs = ("bm25", "dense", "fused", "fused+rerank", "fused+candidate")
    for i in range(runs):
        run_id = f"20260101-{i:06d}-train-{i:06x}"
        d = models / run_id
        d.mkdir(parents=True)
        levels = {c: {lv: {m: rng.random() for m in ("MRR@10", "Hit@1", "Hit@3", "Hit@5", "Hit@10")}
                      for lv in ("span", "file")} for c in configs[2:]}
        (d / "run.json").write_text(json.dumps({
            "run_id": run_id, "state": "succeeded", "created_at": f"2026-01-01T00:{i % 60:02d}:00+00:00",
            "model_kind": "cross-encoder", "base_model": {"kind": "base", "ref": "base"},
            "data": {"trained_triplets": 400 + i}, "split": {"sources": {"feedback": 300 + i, "bootstrap:demo": 120}},
            "epochs": [{"epoch": e + 1, "train_loss": 0.7 / (e + 1)} for e in range(3)], "elapsed_sec": 30.0}))
        (d / "evaluation.json").write_text(json.dumps({
            "run_id": run_id, "current_release": None, "notes": [],
            "decision": {"promote": i % 3 == 0, "reasons": ["MRR@10 0.61 >= required 0.60 over retrieval"],
                         "figures": {"n_queries": 40, "levels": levels}}}))
        store.add_evaluation(f"heldout-{run_id}" if i % 2 else "golden", None, {
            "metrics": {c: {lv: {"MRR@10": rng.random(), "Hit@5": rng.random()} for lv in ("file", "span")}
                        for c in configs}, "ci": {}})
    for i in range(30):
        rid = store.create_job("train")
        store.update_job(rid, state="succeeded", progress=1.0, message="done")
    chunk = Chunk.make("mod0.py", 1, 9, "python", "f", "def f():\n    pass\n")
    now = time.time()
    for i in range(60):
        eid = store.log_query("demo", f"q{i}", 10, [Hit(chunk, fused_score=0.1, score=0.5)], reranker_model=None,
                              reranking_used=False, fallback_reason=None, latency_ms=1.0, index_generation=None)
        for j in range(10):
            sig = ("click", "used", "thumbs_up", "thumbs_down")[j % 4]
            store.add_feedback(eid, sig, doc_id=chunk.doc_id, note=str(j), ts=now - rng.random() * 30 * 86400,
                               source=("assistant", "person")[j % 2])


def start_console(settings, engine):
    import uvicorn

    from agro_mcp.web import create_console_app, load_or_create_token

    token = load_or_create_token(settings.server.home)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_console_app(engine, settings.console, token),
                                           log_level="warning", access_log=False, lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}", token


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


_TIMING = """const n = performance.getEntriesByType('navigation')[0];
return {ttfb: n.responseStart - n.requestStart, dom: n.domContentLoadedEventEnd - n.startTime,
        load: n.loadEventEnd - n.startTime, bytes: n.transferSize};"""


def measure(driver, url: str, loads: int, check) -> dict:
    rows = []
    for _ in range(loads + 1):  # the first load warms caches and is dropped
        driver.get(url)
        check(driver)
        rows.append(driver.execute_script(_TIMING))
    rows = rows[1:]

    def pct(key: str, q: float) -> float:
        xs = sorted(r[key] for r in rows)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)

    return {"loads": loads, **{f"{k}_p50_ms": round(statistics.median(r[k] for r in rows), 1)
                               for k in ("ttfb", "dom", "load")},
            "load_p95_ms": pct("load", 0.95), "html_kb": round(statistics.median(r["bytes"] for r in rows) / 1024, 1)}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    return " ".join(sorted(f for f in flags if f.startswith(("amx", "avx512")))) or "no avx512/amx"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loads", type=int, default=20)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--home", default=None, help="work folder (default: a temporary one, removed after)")
    args = p.parse_args()
    from selenium.webdriver.common.by import By

    from agro_mcp.config import load_settings
    from agro_mcp.engine import Engine

    work = Path(args.home or tempfile.mkdtemp(prefix="agro-bench-console-"))
    profile = tempfile.mkdtemp(prefix="agro-bench-chromium-")
    settings = load_settings(env={"AGRO_HOME": str(work / "home"), "AGRO_RERANKER_ENABLED": "0"},
                             config_file=work / "none.toml")
    engine = Engine(settings)
    log("indexing the generated repository")
    engine.index(make_repo(work / "repo"), "demo")
    log(f"writing {args.runs} runs, evaluations, jobs and feedback")
    fill_learning(engine, args.runs)
    server, base, token = start_console(settings, engine)
    driver = browser(profile)
    try:
        driver.get(f"{base}/?token={token}")

        def ten_hits(d):
            assert len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 10

        def runs_shown(d):
            assert len(d.find_elements(By.CSS_SELECTOR, "tr.run")) == args.runs

        out = {
            "cpu": cpu_flags(), "cores": os.cpu_count(),
            "search_page_10_results": measure(driver, f"{base}/?corpus=demo&k=10&q=validate+the+token+number",
                                              args.loads, ten_hits),
            f"learning_page_{args.runs}_runs": measure(driver, f"{base}/learning", args.loads, runs_shown),
        }
    finally:
        driver.quit()
        server.should_exit = True
        engine.close()
        shutil.rmtree(profile, ignore_errors=True)
        if not args.home:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
