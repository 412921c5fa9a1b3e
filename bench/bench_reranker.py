"""Cross-encoder backend benchmark: latency, fraction of matmul peak, RSS, score agreement with fp32.

Usage: python bench/bench_reranker.py [--model DIR] [--threads N] [--lengths 128,256,512] [--budget-sec 20]

Without --model it builds the MiniLM-L6 cross-encoder from the offline backbone (fresh head, marker removed in a
temp dir): speed is the same as a trained model's; score agreement with an untrained head is a pessimistic proxy
(its logits' spread across candidates is small relative to rounding error), so pass a trained release for the
agreement figure that matters.

Not measured here (need the search pipeline, ``retrieval.search``, which is not written yet): MRR@10 per backend on
../shared/bench relative to fp32 and end-to-end rag_search latency. ``quality_vs_fp32`` and ``search_latency`` below
take a callable so they can be wired up once it exists.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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


def quality_vs_fp32(rank_with_backend: Callable[[str], dict[str, float]], backends: list[str]) -> dict[str, float]:
    """MRR@10 on ../shared/bench per backend divided by fp32's.

    TODO(lead): ``rank_with_backend(backend) -> {collection: MRR@10}`` must run retrieval.search with the reranker on
    that backend over the bench collections and score with tools/score.py. Not run: the pipeline does not exist yet.
    """
    base = rank_with_backend("fp32")
    out = {}
    for be in backends:
        got = rank_with_backend(be)
        out[be] = statistics.mean(got[c] / base[c] for c in base if base[c] > 0)
    return out


def search_latency(search: Callable[[str], object], queries: list[str]) -> dict[str, float]:
    """p50/p95 ms of ``search(query)`` (rag_search with reranking on a 10k-chunk corpus). TODO(lead): wire up."""
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def main() -> None:
    import torch
    from scipy.stats import spearmanr

    from reranker.model import UNTRAINED_MARKER, CrossEncoderScorer, cpu_has_native_bf16, create_from_backbone

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="trained cross-encoder dir (default: MiniLM backbone + fresh head)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="128,256,512")
    ap.add_argument("--backends", default=None, help="default: fp32,bf16,int8 (+bf16-autocast with native bf16)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--budget-sec", type=float, default=10.0, help="time per length, all backends (>= 1 round)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
    print(hdr + f"  (n = timed runs)")
    # All backends are loaded first and timed round-robin per length, so load from other processes on this shared
    # machine hits every backend alike.
    scorers, rss = {}, {}
    for be in backends:
        gc.collect()
        before = rss_mib()
        scorers[be] = CrossEncoderScorer.load(model_dir, backend=be, maxlen=max(lengths), query_max_tokens=64)
        scorers[be].score(query, texts[: args.batch], args.batch)  # warm-up
        rss[be] = rss_mib() - before
    n_params = encoder_params(scorers["fp32"] if "fp32" in scorers else next(iter(scorers.values())))
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
            rho = spearmanr(scores["fp32"], scores[be]).statistic if "fp32" in scores else float("nan")
            gflops = 2 * n_params * n_tok / p50 / 1e9
            print(f"{be:14} {length:6d} {p50 * 1000:8.0f} {p95 * 1000:8.0f} {len(texts) / p50:8.1f} {gflops:8.1f} "
                  f"{100 * gflops / peak['bf16']:6.1f}% {100 * gflops / max(peak.values()):6.1f}% "
                  f"{rss[be]:8.0f} {rho:8.4f}  n={len(times[be])}", flush=True)
    print(f"RSS column: MiB added by loading + warming that backend; process RSS at the end {rss_mib():.0f} MiB")
    print()
    print(f"FLOPs estimate: 2 x {n_params / 1e6:.1f}M non-embedding params x real tokens (attention not counted)")
    print("MRR@10 vs fp32 on ../shared/bench and rag_search latency: NOT RUN (needs retrieval.search; see "
          "quality_vs_fp32 / search_latency)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
