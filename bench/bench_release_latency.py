"""rag_search latency from the first search after a start: fused alone vs a served bi-encoder release with its
shipped chunk vectors vs the same release without them (embedding on demand while the background warm-up runs).

Usage: python bench/bench_release_latency.py [--collection docstring_httpx] [--searches 200] [--home DIR]
                                            [--model DIR]

The corpus is the collection's ``corpus_stripped`` folder, indexed into ``--home`` (reused on later runs). The release
is ``--model`` (a trained bi-encoder run's ``model/`` folder) or, by default, the embedding model's own folder
(MiniLM: a fine-tuned release has the same architecture, so the same speed), promoted through
``training.loop.promote_step``, which embeds the indexed chunks and ships them (timed). Each configuration runs in a
fresh process that starts like ``agro serve`` (embedder and reranker loaded in the background, warm-up on), waits
until both are ready, then times ``Engine.search`` (what ``rag_search`` runs) on ``--searches`` distinct queries:
the collection's own, then other collections' to make up the count.

It also measures what float16 storage does to the ranking: each query's fused head (``AGRO_RERANKER_TOPN``) ordered
by the cosine with float32 vectors vs with float16-rounded ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = next((p for p in (ROOT.parent / "shared" / "bench", ROOT.parents[1] / "shared" / "bench") if p.is_dir()),
             ROOT.parent / "shared" / "bench")  # ../shared/bench beside the checkout (or a worktree's)
CORPUS = "bench-release"
CONFIGS = {
    "fused": {"AGRO_RERANKER_ENABLED": "0"},
    "release+vectors": {"AGRO_RERANKER_ENABLED": "1"},
    "release, no vectors": {"AGRO_RERANKER_ENABLED": "1", "AGRO_RERANKER_SHIPPED_VECTORS": "0"},
}


class Ctx:
    def log(self, line, *args):
        print(line % args if args else line, file=sys.stderr)

    def progress(self, fraction, message=None):
        pass

    def cancelled(self):
        return False


def queries(collection: str, n: int) -> list[str]:
    names = [collection] + sorted(p.name for p in BENCH.glob("docstring_*") if p.name != collection)
    out: list[str] = []
    for name in names:
        for line in (BENCH / name / "queries.jsonl").read_text().splitlines():
            q = json.loads(line).get("text") or json.loads(line).get("query")
            if q and q not in out:
                out.append(q)
    return out[:n]


def env_for(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "AGRO_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "AGRO_RERANKER_RELOAD_ON_CHANGE": "0", **extra}
    env.pop("AGRO_CONFIG", None)
    return env


def prepare(home: Path, collection: str, model: Path | None, reship: bool = False) -> dict:
    """Index the corpus and promote the release (shipping its vectors), unless done by an earlier run."""
    from agro_mcp.config import load_settings
    from agro_mcp.engine import Engine
    from training.loop import promote_step
    from training.releases.promote import current_release

    models = home / "models"
    eng = Engine(load_settings(env=env_for(home, {"AGRO_RERANKER_ENABLED": "1"})))
    try:
        if CORPUS not in eng.corpora():
            t0 = time.perf_counter()
            eng.index(BENCH / collection / "corpus_stripped", CORPUS)
            print(f"indexed {collection} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        n_chunks = len(eng.generation(CORPUS).chunks)
        cur = current_release(models)
        ship_sec = None
        if cur is None or not cur.get("vectors") or reship:
            from retrieval.models import minilm_path

            run = models / "runs" / "bench-run"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(model or minilm_path(), run / "model",
                            ignore=shutil.ignore_patterns("agro_vectors*", "manifest.json"))
            (run / "run.json").write_text(json.dumps({"run_id": "bench-run", "state": "succeeded"}))
            (run / "evaluation.json").write_text(json.dumps({
                "current_release": cur["id"] if cur else None,
                "decision": {"promote": True, "reasons": ["bench"], "figures": {}}}))
            t0 = time.perf_counter()
            promote_step(eng.workspace, Ctx(), "bench-run")
            ship_sec = time.perf_counter() - t0
            cur = current_release(models)
        from reranker.vectors import delta_path

        delta_path(models, models / "releases" / cur["id"]).unlink(missing_ok=True)  # start from what it shipped
        size = (models / "releases" / cur["id"] / cur["vectors"]["file"]).stat().st_size
        return {"release": cur["id"], "chunks": n_chunks, "vectors": cur["vectors"], "ship_sec": ship_sec,
                "file_mib": size / 2**20}
    finally:
        eng.close()


def fp16_agreement(home: Path, qs: list[str]) -> dict:
    """Each query's fused head ordered by float32 vs float16-rounded chunk vectors: how often the top 10 match."""
    from agro_mcp.config import load_settings
    from agro_mcp.engine import Engine
    from retrieval.types import located_text

    eng = Engine(load_settings(env=env_for(home, {"AGRO_RERANKER_ENABLED": "1", "AGRO_RERANKER_SHIPPED_VECTORS": "0"})))
    try:
        scorer = eng.reranker.reload() and eng.reranker.get().scorer
        topn = eng.settings.reranker.topn
        same10 = same_order = 0
        worst = 0.0
        for q in qs:
            hits = eng.rank(q, CORPUS, topn, rerank=False).hits
            texts = [located_text(h.chunk.path, h.chunk.symbol, h.chunk.text) for h in hits]
            v32 = scorer._vectors(texts, 64, None)
            qv = scorer.embedder.encode_query(q)
            s32 = v32 @ qv
            s16 = v32.astype(np.float16).astype(np.float32) @ qv
            o32, o16 = np.argsort(-s32, kind="stable"), np.argsort(-s16, kind="stable")
            same10 += bool((o32[:10] == o16[:10]).all())
            same_order += bool((o32 == o16).all())
            worst = max(worst, float(np.abs(s32 - s16).max()))
        return {"queries": len(qs), "top10_identical": same10, "head_order_identical": same_order,
                "max_abs_cosine_diff": worst}
    finally:
        eng.close()


def child(home: Path, config: str, qs: list[str]) -> dict:
    """One fresh process, started like ``agro serve``: wait for readiness, then time every search."""
    from agro_mcp.config import load_settings
    from agro_mcp.engine import Engine

    t0 = time.perf_counter()
    eng = Engine(load_settings())
    eng.start_background(warm=True)
    eng.embedder()
    loaded = eng.reranker.get(wait=True) if CONFIGS[config]["AGRO_RERANKER_ENABLED"] == "1" else None
    ready = time.perf_counter() - t0
    times, cpu, used = [], [], 0
    for q in qs:
        t, c = time.perf_counter(), time.process_time()
        r = eng.search(q, CORPUS, k=10)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)  # every thread of the process: the warm-up's work counts
        used += bool(r.reranking_used)
    scorer = loaded.scorer if loaded is not None else None
    out = {"config": config, "ready_sec": round(ready, 2), "searches": len(qs), "reranked": used,
           "p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
           "first10_mean": float(np.mean(times[:10])), "cpu_p50": float(np.percentile(cpu, 50)),
           "cpu_p95": float(np.percentile(cpu, 95)), "embedded_by_model": getattr(scorer, "embedded", None),
           "shipped": getattr(scorer, "shipped", None)}
    eng.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="docstring_httpx")
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--home", type=Path, default=Path("/tmp/agro-bench-release"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="runs of every configuration, in alternating order")
    ap.add_argument("--reship", action="store_true", help="promote (and ship) a new release even if one exists")
    ap.add_argument("--no-agreement", dest="agreement", action="store_false",
                    help="skip the float16 vs float32 ranking comparison")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    qs = queries(args.collection, args.searches)
    if args.child:
        print(json.dumps(child(args.home, args.child, qs)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = prepare(args.home, args.collection, args.model, args.reship)
    agree = fp16_agreement(args.home, qs) if args.agreement else None
    rows = []
    order = list(CONFIGS)
    for rnd in range(args.rounds):  # A B C, then C B A, ...: a load that drifts during the run hits each alike
        for config in order if rnd % 2 == 0 else order[::-1]:
            proc = subprocess.run([sys.executable, __file__, "--child", config, "--home", str(args.home),
                                   "--collection", args.collection, "--searches", str(args.searches)],
                                  env=env_for(args.home, CONFIGS[config]), capture_output=True, text=True, check=True)
            rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "round": rnd + 1})
            print(json.dumps(rows[-1]), file=sys.stderr)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    v = info["vectors"]
    print(f"collection {args.collection}: {info['chunks']} chunks; release {info['release']} ships {v['count']} "
          f"{v['dtype']} vectors ({info['file_mib']:.1f} MiB)"
          + (f", shipped in {info['ship_sec']:.1f}s (promote_step)" if info["ship_sec"] else ""))
    if agree:
        print(f"float16 vs float32 over {agree['queries']} queries' fused heads: top-10 identical "
              f"{agree['top10_identical']}/{agree['queries']}, whole head order identical "
              f"{agree['head_order_identical']}/{agree['queries']}, max |cosine diff| "
              f"{agree['max_abs_cosine_diff']:.2e}")
    print(f"{'round':<6}{'config':<22}{'ready s':>8}{'p50 ms':>9}{'p95 ms':>9}{'x fused p50/p95':>17}"
          f"{'cpu p50':>9}{'cpu p95':>9}{'first10':>9}{'reranked':>9}{'embedded':>9}")
    for r in rows:
        fused = next(f for f in rows if f["config"] == "fused" and f["round"] == r["round"])
        ratio = f"{r['p50'] / fused['p50']:.2f} / {r['p95'] / fused['p95']:.2f}"
        print(f"{r['round']:<6}{r['config']:<22}{r['ready_sec']:>8.1f}{r['p50']:>9.1f}{r['p95']:>9.1f}{ratio:>17}"
              f"{r['cpu_p50']:>9.1f}{r['cpu_p95']:>9.1f}{r['first10_mean']:>9.1f}{r['reranked']:>9}"
              f"{str(r['embedded_by_model']):>9}")
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
