"""Cross-encoder backend benchmark: latency, fraction of matmul peak, RSS, score agreement with fp32.

Usage: python bench/bench_reranker.py [--model DIR] [--threads N] [--lengths 128,256,512] [--budget-sec 20]
                                     [--layers 6,2,1]

--layers times layer cuts of the model too (``reranker.model.cut_layers``: the first N transformer layers, what a
student trained with AGRO_TRAINING_STUDENT_LAYERS=N has): rows are labelled ``backend/LN``. A cut of a trained model
is untrained as a student, so its Spearman column says nothing about a trained student's quality; its speed is a
trained student's speed. Measure a trained student's quality with --model <student dir> --quality.

Without --model it builds the MiniLM-L6 cross-encoder from the offline backbone (fresh head, marker removed in a
temp dir): speed is the same as a trained model's; score agreement with an untrained head is a pessimistic proxy
(its logits' spread across candidates is small relative to rounding error), so pass a trained release for the
agreement figure that matters.

Pipeline figures (need --model): --quality docstring_boltons runs training.evaluation.run.run_evaluation per backend
(MRR@10 relative to fp32); --latency-corpus ID --latency-queries FILE times Engine.rank(rerank=True) per backend;
with --warm and a bi-encoder --model (a bi-encoder release, or the embedding model's own folder: same speed) it times
a new release's first searches cold and after the background warming of ``agro serve`` (AGRO_RERANKER_PREWARM).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT.parent / "shared" / "bench"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 4) -> float:
    """GFLOP/s of an n x n x n matmul in the given dtype."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def load_candidates(n: int = 50) -> tuple[str, list[str]]:
    """A real docstring query and n long code windows from the httpx corpus (so every pair fills the window)."""
    coll = BENCH / "docstring_httpx"
    query = json.loads((coll / "queries.jsonl").read_text().splitlines()[0])["query"]
    texts: list[str] = []
    for path in sorted((coll / "corpus_stripped").rglob("*.py")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for start in range(0, max(0, len(lines) - 120), 150):
            texts.append("\n".join(lines[start : start + 120]))
            if len(texts) == n:
                return query, texts
    return query, texts


def encoder_params(scorer) -> int:
    """Parameters that do matmul work per token (everything except the embedding tables)."""
    total = sum(p.numel() for p in scorer.model.parameters())
    emb = sum(p.numel() for name, p in scorer.model.named_parameters() if "embeddings" in name)
    return total - emb


def pipeline_settings(home: Path, model_dir: str | Path, backend: str, *, topn: int, maxlen: int,
                      threads: int | None = None, cache_size: int = 0):
    """The real ``agro_mcp`` settings (``load_settings(env=...)``) with the reranker pinned to one model/backend."""
    from agro_mcp.config import load_settings

    env = {
        "AGRO_HOME": str(home),
        "AGRO_RERANKER_MODEL_PATH": str(model_dir),
        "AGRO_RERANKER_BACKEND": backend,
        "AGRO_RERANKER_TOPN": str(topn),
        "AGRO_RERANKER_MAXLEN": str(maxlen),
        "AGRO_RERANKER_CACHE_SIZE": str(cache_size),
    }
    if threads:
        env["AGRO_RERANKER_THREADS"] = str(threads)
    return load_settings(env=env)


def quality_vs_fp32(
    model_dir: str | Path,
    backends: list[str],
    collections: list[Path],
    home: Path,
    *,
    limit: int | None = 40,
    topn: int = 20,
    maxlen: int = 256,
    threads: int | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """MRR@10 (file and span level) of fused and fused+rerank per backend on ../shared/bench collections.

    Runs ``training.evaluation.run.run_evaluation`` (``reranker.path.RankingPath``: retrieve -> fuse -> rerank) with the model loaded by
    ``CrossEncoderScorer.load(model_dir, backend=be)``; the first ``limit`` queries of each collection, the top
    ``topn`` fused candidates reranked at ``maxlen`` tokens. Returns
    ``{collection: {backend: {"fused/file": mrr, "fused/span": ..., "rerank/file": ..., "rerank/span": ...,
    "rerank/file_rel": mrr / fp32's, "rerank/span_rel": ..., "rerank_p50_ms": ...}}}``.
    """
    from reranker.manager import LoadedReranker
    from reranker.model import CrossEncoderScorer
    from retrieval.embed import load_embedder
    from reranker.path import RankingPath
    from training.evaluation.run import run_evaluation

    base = pipeline_settings(home, model_dir, "fp32", topn=topn, maxlen=maxlen, threads=threads)
    embedder = load_embedder(base.retrieval, batch=base.index.embed_batch)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for coll in collections:
        rows: dict[str, dict[str, float]] = {}
        for be in backends:
            st = pipeline_settings(home, model_dir, be, topn=topn, maxlen=maxlen, threads=threads)
            rs = st.reranker
            scorer = CrossEncoderScorer.load(model_dir, backend=be, maxlen=rs.maxlen,
                                             query_max_tokens=rs.query_max_tokens, threads=rs.threads)
            loaded = LoadedReranker(scorer=scorer, model_id=f"{model_dir}:{be}", target=str(model_dir))
            t = time.perf_counter()
            rep = run_evaluation(coll, home, st.index, st.retrieval, configs=("fused", "fused+rerank"),
                                 rerank_path=RankingPath(st.retrieval, rs, lambda: embedder, loaded), reranker_settings=rs,
                                 embedder=embedder,
                                 limit=limit)
            row = {f"{'fused' if c == 'fused' else 'rerank'}/{lvl}": rep.metrics[c][lvl]["MRR@10"]
                   for c in ("fused", "fused+rerank") for lvl in rep.levels if lvl in rep.metrics[c]}
            row["n"] = rep.n_queries
            row["rerank_p50_ms"] = rep.latency_ms["fused+rerank"].get("rerank", {}).get("p50", float("nan"))
            row["wall_s"] = time.perf_counter() - t
            rows[be] = row
            print(f"  {Path(coll).name} {be}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()), flush=True)
            del scorer, loaded
            gc.collect()
        if "fp32" in rows:
            for be, row in rows.items():
                for lvl in ("file", "span"):
                    ref = rows["fp32"].get(f"rerank/{lvl}")
                    if ref and f"rerank/{lvl}" in row:
                        row[f"rerank/{lvl}_rel"] = row[f"rerank/{lvl}"] / ref
        out[Path(coll).name] = rows
    return out


def _time_ranks(eng, corpus: str, queries: list[str], k: int, label: str) -> dict[str, float]:
    """p50/p95 ms of ``Engine.rank(rerank=True)`` over ``queries`` (total, rerank stage, retrieval); a query the
    reranker falls back on is an error, not a fast sample."""
    totals, reranks = [], []
    for q in queries:
        res = eng.rank(q, corpus, k, rerank=True)
        if not res.reranking_used:
            raise RuntimeError(f"reranker fell back on {q!r} ({label}): {res.fallback_reason}")
        totals.append(res.timings["total"])
        reranks.append(res.timings["rerank"])
    pct = lambda xs, p: float(np.percentile(xs, p))
    return {"total_p50": pct(totals, 50), "total_p95": pct(totals, 95), "rerank_p50": pct(reranks, 50),
            "rerank_p95": pct(reranks, 95), "retrieval_p50": pct([t - r for t, r in zip(totals, reranks)], 50),
            "n": float(len(queries))}


def search_latency(
    model_dir: str | Path,
    backends: list[str],
    home: Path,
    corpus: str,
    queries: list[str],
    *,
    topn: int = 50,
    maxlen: int = 256,
    k: int = 10,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """p50/p95 ms of ``Engine.rank(query, corpus, k, rerank=True)`` (what rag_search runs) per backend.

    One ``agro_mcp.engine.Engine`` per backend (the embedder is shared), reranker pinned with
    ``AGRO_RERANKER_MODEL_PATH``/``BACKEND``/``TOPN``/``MAXLEN`` and the score cache off (``CACHE_SIZE=0``), so every
    query is cold. One untimed warm-up query per backend (model load, first-call allocations); queries are distinct
    so the query-vector cache never hits either. Returns ``{backend: {total_p50, total_p95, rerank_p50, rerank_p95,
    retrieval_p50, n, n_chunks}}``.
    """
    from agro_mcp.engine import Engine
    from retrieval.embed import load_embedder

    base = pipeline_settings(home, model_dir, "fp32", topn=topn, maxlen=maxlen, threads=threads)
    embedder = load_embedder(base.retrieval, batch=base.index.embed_batch)
    out: dict[str, dict[str, float]] = {}
    for be in backends:
        eng = Engine(pipeline_settings(home, model_dir, be, topn=topn, maxlen=maxlen, threads=threads),
                     embedder=embedder)
        try:
            # Engine.rank only waits for a load in progress: start the loader first (as start_background does).
            eng.reranker.start()
            eng.reranker.get(wait=True)
            warm = eng.rank("warm up the reranker " + be, corpus, k, rerank=True)
            if not warm.reranking_used:
                raise RuntimeError(f"reranker did not run on backend {be}: {warm.fallback_reason}")
            out[be] = {**_time_ranks(eng, corpus, queries, k, be), "n_chunks": len(warm.generation.chunks)}
            print(f"  latency {be}: " + ", ".join(f"{k2}={v:.1f}" for k2, v in out[be].items()), flush=True)
        finally:
            eng.close()
            del eng
            gc.collect()
    return out


def warm_latency(model_dir: str | Path, backend: str, home: Path, corpus: str, queries: list[str], *, topn: int = 50,
                 maxlen: int = 256, k: int = 10, threads: int | None = None) -> dict[str, dict[str, float]]:
    """A bi-encoder release's first searches, cold (each unseen candidate embedded by the search that ranks it) and
    after the background warming ``agro serve`` runs (``AGRO_RERANKER_PREWARM``): p50/p95 ms of ``Engine.rank`` and
    of its rerank stage, plus how long warming took for how many chunks. Each side loads the model afresh (an empty
    vector cache); the score cache is off, so only the candidate vectors differ."""
    from agro_mcp.engine import Engine
    from retrieval.embed import load_embedder

    base = pipeline_settings(home, model_dir, backend, topn=topn, maxlen=maxlen, threads=threads)
    embedder = load_embedder(base.retrieval, batch=base.index.embed_batch)
    out: dict[str, dict[str, float]] = {}
    for side in ("cold", "warmed"):
        eng = Engine(base, embedder=embedder)
        try:
            eng.reranker.start()
            loaded = eng.reranker.get(wait=True)
            if loaded is None or getattr(loaded.scorer, "kind", None) != "bi-encoder":
                raise SystemExit(f"--warm needs a bi-encoder --model, got {getattr(loaded, 'model_id', None)}")
            row: dict[str, float] = {}
            if side == "warmed":
                t0 = time.perf_counter()
                eng.reranker.set_warm_source(eng._chunk_texts)
                state = eng.reranker.wait_warm()
                row.update(warm_sec=time.perf_counter() - t0, warmed_chunks=float(state["embedded"]))
            row.update(_time_ranks(eng, corpus, queries, k, side))
            out[side] = row
            print(f"  {side}: " + ", ".join(f"{k2}={v:.1f}" for k2, v in row.items()), flush=True)
        finally:
            eng.close()
            gc.collect()
    return out


def run_pipeline_figures(args) -> None:
    """MRR@10 vs fp32 on bench collections and Engine.rank latency with reranking, from the CLI flags."""
    if not args.model:
        sys.exit("--quality / --latency-corpus need --model (a trained cross-encoder folder)")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="agro-bench-rr-"))
    figures: dict[str, object] = {"model": str(args.model), "threads": args.threads, "maxlen": args.maxlen}
    if args.quality:
        backends = (args.backends or "fp32,int8,bf16").split(",")
        colls = [BENCH / c for c in args.quality.split(",")]
        print(f"MRR@10 on {[c.name for c in colls]}: first {args.quality_limit} queries, top {args.quality_topn} "
              f"fused candidates reranked at {args.maxlen} tokens, backends {backends}", flush=True)
        q = quality_vs_fp32(args.model, backends, colls, home, limit=args.quality_limit, topn=args.quality_topn,
                            maxlen=args.maxlen, threads=args.threads)
        figures["quality"] = q
        for coll, rows in q.items():
            print(f"{coll} (n={int(next(iter(rows.values()))['n'])})")
            print(f"  {'backend':8} {'fused file':>10} {'fused span':>10} {'rr file':>8} {'rr span':>8} "
                  f"{'file/fp32':>9} {'span/fp32':>9} {'rr p50 ms':>9}")
            for be, r in rows.items():
                print(f"  {be:8} {r.get('fused/file', float('nan')):10.4f} {r.get('fused/span', float('nan')):10.4f} "
                      f"{r.get('rerank/file', float('nan')):8.4f} {r.get('rerank/span', float('nan')):8.4f} "
                      f"{r.get('rerank/file_rel', float('nan')):9.4f} {r.get('rerank/span_rel', float('nan')):9.4f} "
                      f"{r['rerank_p50_ms']:9.0f}")
    if args.latency_corpus and args.warm:
        queries = [ln.strip() for ln in Path(args.latency_queries).read_text().splitlines() if ln.strip()]
        be = args.latency_backends.split(",")[0]
        print(f"bi-encoder first searches on corpus {args.latency_corpus}, cold vs warmed: {len(queries)} distinct "
              f"queries, topn 50, maxlen {args.maxlen}, backend {be}", flush=True)
        figures["warm"] = warm_latency(args.model, be, home, args.latency_corpus, queries, maxlen=args.maxlen,
                                       threads=args.threads)
    elif args.latency_corpus:
        queries = [ln.strip() for ln in Path(args.latency_queries).read_text().splitlines() if ln.strip()]
        backends = args.latency_backends.split(",")
        print(f"Engine.rank latency on corpus {args.latency_corpus}: {len(queries)} distinct queries, rerank=True, "
              f"topn 50, maxlen {args.maxlen}, score cache off, backends {backends}", flush=True)
        lat = search_latency(args.model, backends, home, args.latency_corpus, queries, topn=50, maxlen=args.maxlen,
                             threads=args.threads)
        figures["latency"] = lat
        print(f"  {'backend':8} {'chunks':>6} {'total p50':>9} {'total p95':>9} {'rerank p50':>10} "
              f"{'rerank p95':>10} {'retr p50':>8}  (ms)")
        for be, r in lat.items():
            print(f"  {be:8} {int(r['n_chunks']):6d} {r['total_p50']:9.0f} {r['total_p95']:9.0f} "
                  f"{r['rerank_p50']:10.0f} {r['rerank_p95']:10.0f} {r['retrieval_p50']:8.0f}  n={int(r['n'])}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2, default=str))


def main() -> None:
    import torch
    from scipy.stats import spearmanr

    from reranker.model import (
        UNTRAINED_MARKER,
        CrossEncoderScorer,
        cpu_has_native_bf16,
        create_from_backbone,
        cut_layers,
        model_layers,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="trained cross-encoder dir (default: MiniLM backbone + fresh head)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="128,256,512")
    ap.add_argument("--backends", default=None, help="default: fp32,bf16,int8 (+bf16-autocast with native bf16)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", default=None,
                    help="comma-separated layer cuts to time as well, e.g. 6,2,1 (default: the model as it is)")
    ap.add_argument("--budget-sec", type=float, default=10.0, help="time per length, all backends (>= 1 round)")
    ap.add_argument("--skip-micro", action="store_true", help="skip the scorer micro-benchmark")
    ap.add_argument("--home", default=None, help="data home for the pipeline figures (indexes; default: a temp dir)")
    ap.add_argument("--quality", default=None,
                    help="comma-separated ../shared/bench collection names: MRR@10 per backend vs fp32 (needs --model)")
    ap.add_argument("--quality-limit", type=int, default=40, help="first N queries per collection")
    ap.add_argument("--quality-topn", type=int, default=20, help="fused candidates reranked for the quality figure")
    ap.add_argument("--latency-corpus", default=None, help="indexed corpus id in --home for Engine.rank latency")
    ap.add_argument("--latency-queries", default=None, help="file with one query per line")
    ap.add_argument("--latency-backends", default="fp32,int8")
    ap.add_argument("--maxlen", type=int, default=256, help="reranker window for the pipeline figures")
    ap.add_argument("--warm", action="store_true",
                    help="with --latency-corpus and a bi-encoder --model: first searches cold vs after the background "
                    "warming (backend: the first of --latency-backends)")
    ap.add_argument("--json-out", default=None, help="write the pipeline figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quality or args.latency_corpus:
        run_pipeline_figures(args)
        if args.skip_micro:
            return
    lengths = [int(x) for x in args.lengths.split(",")]
    backends = (args.backends or "fp32,bf16,int8" + (",bf16-autocast" if cpu_has_native_bf16() else "")).split(",")

    tmp = None
    model_dir = args.model
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = create_from_backbone(Path(tmp.name) / "ce")
        (Path(model_dir) / UNTRAINED_MARKER).unlink()
    query, texts = load_candidates(50)

    peak = {d: matmul_peak(d) for d in ("fp32", "bf16")}
    print(f"torch {torch.__version__}, {args.threads} threads, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 (amx_bf16/avx512_bf16): {cpu_has_native_bf16()}")
    print(f"matmul peak 2048^3: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"model: {model_dir if args.model else 'MiniLM-L6 backbone + fresh 1-logit head (untrained)'}; "
          f"50 candidates, batch {args.batch}, tokenisation included; each pair fills the window")
    print()
    hdr = f"{'backend':14} {'tokens':>6} {'p50 ms':>8} {'p95 ms':>8} {'pairs/s':>8} {'GFLOP/s':>8} " \
          f"{'%bf16pk':>7} {'%bestpk':>7} {'+RSS MiB':>8} {'spearman':>8}"
    print(hdr + "  (n = timed runs)")
    # All backends are loaded first and timed round-robin per length, so load from other processes on this shared
    # machine hits every backend alike.
    scorers, rss, n_params_of = {}, {}, {}
    cuts = [int(x) for x in args.layers.split(",")] if args.layers else [None]
    variants: list[str] = []
    for n_layers in cuts:
        for be0 in backends:
            be = be0 if n_layers is None else f"{be0}/L{n_layers}"
            gc.collect()
            before = rss_mib()
            sc = CrossEncoderScorer.load(model_dir, backend=be0, maxlen=max(lengths), query_max_tokens=64)
            if n_layers is not None:
                sc.layers = cut_layers(sc.model, n_layers)
            sc.score(query, texts[: args.batch], args.batch)  # warm-up
            scorers[be], rss[be] = sc, rss_mib() - before
            variants.append(be)
        ref = scorers[variants[-len(backends)]]
        fp = next((scorers[v] for v in variants[-len(backends):] if v.split("/")[0] == "fp32"), ref)
        for v in variants[-len(backends):]:
            n_params_of[v] = encoder_params(fp)
    backends = variants
    print(f"layers per variant: { {be: model_layers(sc.model) for be, sc in scorers.items()} }")
    for length in lengths:
        times: dict[str, list[float]] = {be: [] for be in backends}
        scores: dict[str, np.ndarray] = {}
        n_tok = 0
        start = time.perf_counter()
        while not times[backends[0]] or (time.perf_counter() - start < args.budget_sec and len(times[backends[0]]) < 7):
            for be in backends:
                sc = scorers[be]
                sc.maxlen = length
                t = time.perf_counter()
                scores[be] = sc.score(query, texts, args.batch)
                times[be].append(time.perf_counter() - t)
            n_tok = sum(len(e["input_ids"]) for e in scorers[backends[0]].encode(query, texts))
        for be in backends:
            p50, p95 = float(np.percentile(times[be], 50)), float(np.percentile(times[be], 95))
            ref_be = "fp32" + (be[be.index("/"):] if "/" in be else "")
            rho = spearmanr(scores[ref_be], scores[be]).statistic if ref_be in scores else float("nan")
            gflops = 2 * n_params_of[be] * n_tok / p50 / 1e9
            print(f"{be:14} {length:6d} {p50 * 1000:8.0f} {p95 * 1000:8.0f} {len(texts) / p50:8.1f} {gflops:8.1f} "
                  f"{100 * gflops / peak['bf16']:6.1f}% {100 * gflops / max(peak.values()):6.1f}% "
                  f"{rss[be]:8.0f} {rho:8.4f}  n={len(times[be])}", flush=True)
    print(f"RSS column: MiB added by loading + warming that backend; process RSS at the end {rss_mib():.0f} MiB")
    print()
    print("FLOPs estimate: 2 x non-embedding params of each variant ("
          + ", ".join(f"{be} {n / 1e6:.1f}M" for be, n in n_params_of.items())
          + ") x real tokens (attention not counted); Spearman vs fp32 of the same cut")
    print("MRR@10 vs fp32 and rag_search latency: see --quality / --latency-corpus")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
