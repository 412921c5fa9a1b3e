"""Daemon benchmark: today's in-process `agro serve` vs the shared daemon behind the stdio proxy, 1 and 8 sessions.

Usage (from the repository root, venv active)::

    python bench/bench_daemon.py                        # 10k chunks, 200 searches per configuration
    python bench/bench_daemon.py --chunks 3000 --searches 100

Each session is a real MCP client (the SDK's) speaking to a real `agro serve` process over stdio: with
``AGRO_SERVE_MODE=inprocess`` (one full server per session, as before the daemon) or the default proxy mode (every
session shares one daemon). Per configuration it prints: the handshake time (client start to initialized), the first
search, search p50/p95 over ``--searches`` unseen docstring questions (client-side round trip; with 8 sessions the
searches are spread over the sessions and run concurrently), and the total memory of all agro processes (RSS and
PSS; PSS splits shared library pages between processes, so it is the fair total).

The corpus is ``--chunks`` real chunks of this repository (replicated under ``repN/`` paths) with random unit vectors
on the dense side (latency depends on the number of vectors, not their values; see bench_search.py). No reranker
release exists in the bench home, so searches are fused retrieval without the cross-encoder.

The last row (``--no-busy`` skips it, ``--only-busy`` runs it alone) is one session searching the big corpus in
the warm daemon, first quietly, then while another session's training job runs (``reranker_admin train`` on the
bootstrap pairs of a small real corpus, a copy of this checkout's library packages, measured from its first
training step on) and index refreshes of a changed file follow one another.
Figures go to stdout, logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
# ../shared/bench next to the checkout (a worktree one level deeper finds it one level up)
BENCH = next((p / "shared" / "bench" for p in ROOT.parents if (p / "shared" / "bench").is_dir()),
             ROOT.parent / "shared" / "bench")

import anyio  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402

logger = logging.getLogger("bench_daemon")
CORPUS_PREFIX = "bench-synth-"


def pct(values, q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def build_corpus(home: Path, n_chunks: int, seed: int) -> str:
    """A published generation of ``n_chunks`` real chunks of this repository with random vectors."""
    from bench_search import persist_generation, synthetic_generation
    from retrieval.chunking import chunk_file
    from retrieval.discovery import discover_files, read_text
    from retrieval.embed import load_embedder
    from retrieval.settings import IndexSettings, RetrievalSettings

    rs = RetrievalSettings()
    emb = load_embedder(rs)  # only for its model id and dimension: the index must name the served model
    files = []
    for fe in discover_files(ROOT, IndexSettings()).files:
        try:
            text, _ = read_text(fe.abs_path)
        except OSError:
            continue
        cs = chunk_file(fe.path, text, IndexSettings())
        if cs:
            files.append((fe.path, cs))
    gen, _, reps = synthetic_generation(files, n_chunks, emb.dim, emb.model_id, ROOT, rs, seed)
    persist_generation(gen, home)
    logger.info("corpus %s: %d chunks (%d copies of the repository)", gen.corpus, n_chunks, reps)
    return gen.corpus


def load_queries(seed: int) -> list[str]:
    qs: list[str] = []
    for d in sorted(BENCH.glob("docstring_*")) + sorted(BENCH.glob("history_*")):
        for line in (d / "queries.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                qs.append(json.loads(line)["query"][:2000])
    qs = list(dict.fromkeys(q for q in qs if q.strip()))
    if not qs:
        raise SystemExit(f"no questions found in {BENCH}/docstring_*/queries.jsonl")
    random.Random(seed).shuffle(qs)
    return qs


class QueryPool:
    """Hands out questions no server process of this run has seen (no query-cache hits)."""

    def __init__(self, queries: list[str]) -> None:
        self.queries, self.i = queries, 0

    def take(self, n: int) -> list[str]:
        out = [self.queries[(self.i + j) % len(self.queries)] for j in range(n)]
        self.i += n
        return out


def agro_processes(home: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"AGRO_HOME={home}".encode() in env and b"agro_mcp" in cmd:
            pids.append(int(d.name))
    return pids


def memory_mb(pids: list[int]) -> tuple[float, float]:
    rss = pss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss, pss


def stop_daemon(home: Path) -> None:
    from agro_mcp.daemon_client import stop_daemon as stop

    stop(home)


async def run_config(label: str, home: Path, corpus: str, sessions: int, searches: int, pool: QueryPool,
                     env: dict) -> dict:
    """``sessions`` concurrent clients: handshake, first search, then ``searches`` searches spread over them."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)
    per = [searches // sessions + (1 if i < searches % sessions else 0) for i in range(sessions)]
    firsts = pool.take(sessions)
    batches = [pool.take(n) for n in per]
    handshakes, first_ms, lat, server_ms, mem = [], [], [], [], []
    ready = anyio.Event()
    n_ready = [0]
    done = anyio.Event()
    n_done = [0]

    async def session(i: int) -> None:
        t = time.perf_counter()
        async with Client(params, read_timeout_seconds=600) as client:
            handshakes.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            res = await client.call_tool("rag_search", {"query": firsts[i], "corpus": corpus, "k": 10})
            first_ms.append((time.perf_counter() - t) * 1000)
            if res.is_error:
                raise RuntimeError(" ".join(getattr(c, "text", "") for c in res.content))
            n_ready[0] += 1
            if n_ready[0] == sessions:
                ready.set()
            await ready.wait()  # all sessions warm: the timed searches overlap
            for q in batches[i]:
                t = time.perf_counter()
                res = await client.call_tool("rag_search", {"query": q, "corpus": corpus, "k": 10})
                lat.append((time.perf_counter() - t) * 1000)
                server_ms.append(res.structured_content["timings_ms"]["total"])
            n_done[0] += 1
            if n_done[0] == sessions:
                mem.append(memory_mb(agro_processes(home)))
                done.set()
            await done.wait()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(sessions):
            tg.start_soon(session, i)
    rss, pss = mem[0]
    row = {
        "config": label, "sessions": sessions,
        "handshake_ms": statistics.median(handshakes), "handshake_max_ms": max(handshakes),
        "first_ms": statistics.median(first_ms), "first_max_ms": max(first_ms),
        "p50": pct(lat, 50), "p95": pct(lat, 95), "server_p50": pct(server_ms, 50), "server_p95": pct(server_ms, 95),
        "rss_mb": rss, "pss_mb": pss, "wall_s": time.perf_counter() - t0,
    }
    logger.info("%s: %s", label, row)
    return row


BUSY_CORPUS = "bench-busy"


def busy_source(home: Path) -> Path:
    """A small real repository for the busy row: a copy of this checkout's library packages (fresh each run)."""
    src = Path(f"{home}-src")
    if src.exists():
        shutil.rmtree(src)
    for pkg in ("retrieval", "reranker", "training"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return src


async def run_busy(home: Path, corpus: str, searches: int, pool: QueryPool, env: dict, src: Path) -> dict:
    """One session searching while another session's training job (``reranker_admin train`` on the small corpus's
    bootstrap pairs) and index refreshes (a changed file, again and again) run in the same daemon."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)

    async def call(client, tool: str, args: dict) -> dict:
        res = await client.call_tool(tool, args)
        if res.is_error:
            raise RuntimeError(f"{tool}: " + " ".join(getattr(c, "text", "") for c in res.content))
        return res.structured_content

    async def timed_searches(client, queries: list[str]) -> tuple[list[float], list[float]]:
        lat, server = [], []
        for q in queries:
            t = time.perf_counter()
            out = await call(client, "rag_search", {"query": q, "corpus": corpus, "k": 10})
            lat.append((time.perf_counter() - t) * 1000)
            server.append(out["timings_ms"]["total"])
        return lat, server

    async with Client(params, read_timeout_seconds=600) as searcher, \
            Client(params, read_timeout_seconds=600) as admin:
        await call(admin, "rag_index", {"action": "index", "path": str(src), "corpus": BUSY_CORPUS})
        await call(searcher, "rag_search", {"query": "warm up", "corpus": corpus, "k": 10})
        quiet, quiet_server = await timed_searches(searcher, pool.take(searches))
        started = await call(admin, "reranker_admin", {"action": "train", "dataset": f"bootstrap:{BUSY_CORPUS}"})
        run_id = started["data"]["run_id"] if "data" in started else started["run_id"]
        job: dict = {}

        async def job_state() -> dict:
            out = await call(admin, "reranker_admin", {"action": "status", "run_id": run_id})
            return (out.get("data") or out)["job"]

        deadline = time.monotonic() + 900  # until the job trains (past compaction and mining: progress 0.2)
        while time.monotonic() < deadline:
            job = await job_state()
            if job["state"] != "running" or (job.get("progress") or 0) > 0.2:
                break
            await anyio.sleep(0.5)
        logger.info("busy row: the job is %s (%s)", job.get("state"), job.get("message"))
        stop = anyio.Event()
        refreshes = [0]

        async def refresher() -> None:
            target = src / "retrieval" / "types.py"
            while not stop.is_set():
                with target.open("a", encoding="utf-8") as f:
                    f.write(f"\n\ndef bench_changed_{refreshes[0]}(x):\n    \"\"\"Changed for the busy row.\"\"\"\n"
                            f"    return x + {refreshes[0]}\n")
                await call(admin, "rag_index", {"action": "refresh", "corpus": BUSY_CORPUS})
                refreshes[0] += 1

        busy: list = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresher)

            async def measure() -> None:
                busy.append(await timed_searches(searcher, pool.take(searches)))
                stop.set()

            tg.start_soon(measure)
        job_end = await job_state()
        if job_end["state"] == "running":
            await call(admin, "reranker_admin", {"action": "cancel", "run_id": run_id})
    lat, server = busy[0]
    row = {"quiet_p50": pct(quiet, 50), "quiet_p95": pct(quiet, 95), "quiet_server_p95": pct(quiet_server, 95),
           "busy_p50": pct(lat, 50), "busy_p95": pct(lat, 95), "busy_server_p95": pct(server, 95),
           "refreshes": refreshes[0], "job_state_at_end": job_end["state"],
           "job_progress_at_end": job_end.get("progress"), "job_message_at_end": job_end.get("message")}
    logger.info("busy: %s", row)
    return row


async def main_async(args) -> None:
    home = args.home.resolve()
    pool = QueryPool(load_queries(args.seed))
    env = dict(os.environ)
    src = busy_source(home)
    # The busy row indexes and trains without a person, on a small bootstrap sample (it trains within minutes).
    env.update({"AGRO_HOME": str(home), "PYTHONPATH": str(ROOT), "AGRO_DAEMON_HTTP_PORT": "0",
                "AGRO_DAEMON_IDLE_EXIT_SEC": "300", "AGRO_INDEX_ROOTS": str(src),
                "AGRO_ADMIN_ENABLED": "unattended", "AGRO_TRAINING_BOOTSTRAP_CAP": "240"})
    corpus = f"{CORPUS_PREFIX}{args.chunks}"
    rows = []
    inproc = {**env, "AGRO_SERVE_MODE": "inprocess"}
    daemon = {**env, "AGRO_SERVE_MODE": "proxy"}
    for sessions in [] if args.only_busy or not args.inprocess else args.sessions:
        rows.append(await run_config("in-process", home, corpus, sessions, args.searches, pool, inproc))
    stop_daemon(home)
    for sessions in [] if args.only_busy else args.sessions:
        cold = sessions == args.sessions[0]
        rows.append(await run_config("daemon (cold start)" if cold else "daemon (warm)", home, corpus, sessions,
                                     args.searches, pool, daemon))
        if cold:  # the same, with the daemon already warm: what every later session sees
            rows.append(await run_config("daemon (warm)", home, corpus, sessions, args.searches, pool, daemon))
    busy = None
    if args.busy:
        busy = await run_busy(home, corpus, args.searches, pool, daemon, src)
    from agro_mcp.daemon_client import control

    st = control(home, "status") or {}
    stop_daemon(home)
    print_rows(rows, args, st)
    if busy is not None:
        print_busy(busy, args)


def print_rows(rows: list[dict], args, status: dict) -> None:
    headers = ("mode", "sessions", "handshake ms (max)", "first search ms (max)", "p50 ms", "p95 ms",
               "server p50/p95 ms", "RSS MB", "PSS MB")
    table = [(r["config"], r["sessions"], f"{r['handshake_ms']:.0f} ({r['handshake_max_ms']:.0f})",
              f"{r['first_ms']:.0f} ({r['first_max_ms']:.0f})", f"{r['p50']:.1f}", f"{r['p95']:.1f}",
              f"{r['server_p50']:.1f} / {r['server_p95']:.1f}", f"{r['rss_mb']:.0f}", f"{r['pss_mb']:.0f}")
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
    print(f"\n## in-process vs daemon: {args.chunks:,} chunks, {args.searches} unseen docstring questions per row")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in table:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    load = os.getloadavg()
    print(f"\nnotes: client-side round trips over stdio (p50/p95 across all searches of the row; with 8 sessions they "
          f"run concurrently); 'server' = timings_ms.total inside the server; memory = all agro processes of the "
          f"bench home (proxies + daemon, or the in-process servers) at the end of the row; fused retrieval, no "
          f"reranker release. Daemon at the end: {status.get('rss_mb', '?')} MB RSS, "
          f"{status.get('sessions', {}).get('total_served', '?')} sessions served.")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs (shared machine)")


def print_busy(b: dict, args) -> None:
    print(f"\n## search p95 while a training job and index refreshes run (daemon, {args.searches} searches each)")
    print(f"quiet:  p50 {b['quiet_p50']:.1f} ms  p95 {b['quiet_p95']:.1f} ms  (server p95 {b['quiet_server_p95']:.1f})")
    print(f"busy:   p50 {b['busy_p50']:.1f} ms  p95 {b['busy_p95']:.1f} ms  (server p95 {b['busy_server_p95']:.1f})"
          f"  -> {b['busy_p95'] / b['quiet_p95']:.2f}x the quiet p95 (target <= 2x)")
    print(f"meanwhile: {b['refreshes']} index refreshes of a changed file; the training job was "
          f"{b['job_state_at_end']} at the end ({b['job_message_at_end'] or ''}, progress {b['job_progress_at_end']})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", type=Path, default=Path("/tmp/agro-bench-daemon"))
    p.add_argument("--chunks", type=int, default=10_000)
    p.add_argument("--searches", type=int, default=200)
    p.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-busy", dest="busy", action="store_false",
                   help="skip the row with a training job and index refreshes running")
    p.add_argument("--only-busy", action="store_true", help="only the busy row (and its quiet baseline)")
    p.add_argument("--no-inprocess", dest="inprocess", action="store_false", help="skip the in-process rows")
    p.add_argument("--rebuild", action="store_true", help="rebuild the corpus even if the home has it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    home = args.home.resolve()
    stop_daemon(home) if home.exists() else None
    corpus_dir = home / "indexes" / f"{CORPUS_PREFIX}{args.chunks}"
    if args.rebuild or not corpus_dir.exists():
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        build_corpus(home, args.chunks, args.seed)
    flags = subprocess.run("lscpu | grep -o 'amx[a-z_]*\\|avx512[a-z_]*' | sort -u | tr '\\n' ' '", shell=True,
                           capture_output=True, text=True).stdout.strip()
    print(f"CPU flags: {flags or 'none of amx/avx512'}; {os.cpu_count()} CPUs")
    anyio.run(main_async, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
