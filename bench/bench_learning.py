"""Simulate use of the learning loop on a ../shared/bench collection and report MRR@10 before and after.

Feedback loop (docstring collections): the queries are split in half by a fixed seed. For each query of the first
half a simulated user searches, marks the gold hits it sees as ``used`` and sends ``correct_location`` with the gold
span when none is shown. Then ``agro loop`` runs once (mine, train, evaluate, promote). The second half is scored
before (BM25, dense, fused) and after (fused + the trained candidate, whether the gate promoted it or not).

Bootstrap (``--bootstrap``): ``agro bootstrap`` alone on the indexed corpus, then fused vs fused + the bootstrapped
candidate on every query of the collection. Neither path reads ``corpus_original``; queries and qrels are read only
to play the user on the training half and to score.

    python bench/bench_learning.py --collection docstring_boltons [--bootstrap] [--home /tmp/agro-bench]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("bench_learning")

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"


def _settings(home: Path, args):
    from agro_mcp.config import load_settings

    env = dict(os.environ)
    env.update({
        "AGRO_HOME": str(home),
        "AGRO_TRAINING_MIN_TRIPLETS": "10",
        "AGRO_TRAINING_PROMOTE_MIN_QUERIES": str(args.gate_min),
        "AGRO_TRAINING_HELDOUT_FRACTION": str(args.heldout_fraction),
        "AGRO_TRAINING_MAX_LENGTH": str(args.max_length),
        "AGRO_TRAINING_MAX_TRAIN_PAIRS": str(args.max_pairs),
        "AGRO_TRAINING_BOOTSTRAP_CAP": str(args.bootstrap_cap),
        "AGRO_TRAINING_EPOCHS": str(args.epochs),
        "AGRO_TRAINING_LEARNING_RATE": str(args.lr),
        "AGRO_RERANKER_TOPN": str(args.topn),
        "AGRO_RERANKER_BACKEND": args.backend,
    })
    if args.calibration_min is not None:
        env["AGRO_TRAINING_CALIBRATION_MIN_QUERIES"] = str(args.calibration_min)
    if args.min_steps is not None:
        env["AGRO_TRAINING_MIN_STEPS"] = str(args.min_steps)
    return load_settings(env)


def _install_base(home: Path, base: str | None) -> None:
    """``home/models/base/current`` -> the given pre-trained base (what ``agro pretrain`` would have left)."""
    if not base:
        return
    src = Path(base).resolve()
    if not (src / "manifest.json").is_file():
        raise SystemExit(f"--base {src} has no manifest.json: pass a models/base/<id> folder made by agro pretrain")
    root = home / "models" / "base"
    root.mkdir(parents=True, exist_ok=True)
    (root / "current").symlink_to(src)


def _overlaps(hit, gold) -> bool:
    return hit.path == gold.path and (gold.start_line is None or (
        hit.start_line <= gold.end_line and gold.start_line <= hit.end_line))


def simulate_user(engine, corpus: str, queries, k: int) -> dict:
    from training.events.feedback import submit_feedback

    n_used = n_loc = 0
    for q in queries:
        resp = engine.search(q.query, corpus, k=k, rerank=False)  # no release yet: what the user saw
        gold = q.span_gold if q.span_gold else q.gold
        seen = [h for h in resp.results if any(_overlaps(h, g) for g in gold)]
        for h in seen:
            submit_feedback(engine.store, resp.event_id, "used", doc_id=h.doc_id, corpus_root=engine.corpus_root)
            n_used += 1
        if not seen:
            g = next((g for g in gold if g.start_line is not None), None)
            if g is not None:
                submit_feedback(engine.store, resp.event_id, "correct_location", path=g.path,
                                start_line=g.start_line, end_line=g.end_line, corpus_root=engine.corpus_root)
                n_loc += 1
    return {"queries": len(queries), "used": n_used, "correct_location": n_loc}


def _score_report(engine, queries, candidate: Path | None, label: str, reranker_settings=None):
    from training.evaluation.report import format_table
    from training.evaluation.run import run_evaluation

    s = engine.settings
    report = run_evaluation(queries, engine.home, s.index, s.retrieval, configs=("bm25", "dense", "fused"),
                            candidate_model=str(candidate) if candidate else None,
                            reranker_settings=reranker_settings or s.reranker,
                            embedder=engine.embedder(), k=50)
    logger.info("%s\n%s", label, format_table(report))
    return report


def score(engine, queries, candidate: Path | None, label: str) -> dict:
    return _score_report(engine, queries, candidate, label).metrics


def blend_grid(engine, queries, candidate: Path, alphas=(0.0, 0.2, 0.3, 0.5, 0.7, 1.0),
               weights=(0.0, 0.5, 1.0)) -> dict:
    """MRR@10 of ``queries`` (file, span) with ``candidate`` at each (alpha, dense weight) of the grid: how the
    defaults AGRO_TRAINING_UNCALIBRATED_ALPHA and AGRO_RERANKER_DENSE_WEIGHT were measured. The cross-encoder
    scores each question once (a shared cache); alpha 0 is retrieval alone, reordered by the weighted head."""
    from reranker.cache import ScoreCache
    from reranker.manager import LoadedReranker
    from reranker.model import load_scorer
    from training.evaluation.run import run_evaluation

    rr = engine.settings.reranker
    scorer = load_scorer(candidate, backend=rr.backend, maxlen=rr.maxlen,
                                     query_max_tokens=rr.query_max_tokens, threads=rr.threads)
    loaded = LoadedReranker(scorer=scorer, model_id=f"grid:{candidate}", target=str(candidate))
    cache = ScoreCache(200_000)
    out = {}
    for a in alphas:
        for w in weights:
            path = engine.ranking_path.with_reranker(
                loaded, rr.model_copy(update={"alpha": float(a), "dense_weight": float(w)}), cache)
            r = run_evaluation(queries, engine.home, engine.settings.index, engine.settings.retrieval,
                               configs=("fused",), candidate_path=path, embedder=engine.embedder(), k=50)
            m = r.metrics["fused+candidate"]
            out[f"alpha {a:.1f} w {w:.1f}"] = {lv: round(m[lv]["MRR@10"], 4) for lv in ("file", "span") if lv in m}
            logger.info("blend grid: alpha %.1f, dense weight %.1f: %s", a, w, out[f"alpha {a:.1f} w {w:.1f}"])
    return out


def _finished_bootstrap(home: Path) -> tuple[str, dict] | None:
    """The bootstrap run an earlier ``--home`` run of this script left in ``home`` (its id and a result with its
    decision: promoted when ``models/current`` is its release), or None when there is none to reuse."""
    runs = sorted((home / "models" / "runs").glob("*-bootstrap-*"))
    done = [r for r in runs if (r / "model").is_dir() and (r / "run.json").is_file()]
    if not done:
        return None
    run = done[-1]
    meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
    if meta.get("state") != "succeeded":
        return None
    decision = "refused"
    try:
        manifest = json.loads((home / "models" / "current" / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("run_id") == run.name:
            decision = "promoted"
    except (OSError, ValueError):
        pass
    return run.name, {"decision": decision, "blend": meta.get("blend"), "reused": True}


def _pooled(rows: list[dict]) -> dict:
    """Macro means of per-query metric rows (several corpora pooled), with the number of queries."""
    from training.evaluation.metrics import aggregate

    return {**aggregate(rows), "n": len(rows)} if rows else {"n": 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--collection", default="docstring_boltons")
    p.add_argument("--home", help="data home (default: a new temp folder)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--k", type=int, default=10, help="results the simulated user sees")
    p.add_argument("--bootstrap", action="store_true", help="also run agro bootstrap alone on a fresh home")
    p.add_argument("--no-feedback", action="store_true", help="skip the feedback simulation")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--max-pairs", type=int, default=4000)
    p.add_argument("--bootstrap-cap", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--min-steps", type=int, help="AGRO_TRAINING_MIN_STEPS (default: the setting's)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--topn", type=int, default=30)
    p.add_argument("--gate-min", type=int, default=15, help="gate's minimum held-out questions")
    p.add_argument("--heldout-fraction", type=float, default=0.3)
    p.add_argument("--calibration-min", type=int, default=None,
                   help="AGRO_TRAINING_CALIBRATION_MIN_QUERIES (default: the setting's)")
    p.add_argument("--backend", default="auto", help="reranker backend for scoring (auto = bf16 on native-bf16 CPUs)")
    p.add_argument("--max-corpora", type=int, default=0, help="bootstrap only the first N corpora (0 = all)")
    p.add_argument("--shard", default=None, help="I/N: bootstrap only every N-th corpus from the I-th (0-based), to "
                   "split a multi-corpus collection over N processes (each pools its own; merge per corpus)")
    p.add_argument("--base", help="a pre-trained base (models/base/<id> of `agro pretrain`): every fresh home of the "
                   "bench gets it as models/base/current, as if the user had run agro pretrain once; the test half "
                   "is also scored with the base alone (no feedback)")
    p.add_argument("--blend-grid", action="store_true",
                   help="also score the test half (with --bootstrap: each corpus's queries, pooled) with the candidate at a "
                   "grid of (alpha, dense weight)")
    p.add_argument("--reuse", action="store_true",
                   help="with --bootstrap and the --home of an earlier run: score each corpus's finished bootstrap "
                   "run again (other AGRO_RERANKER_* settings) instead of indexing and training anew")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from agro_mcp.engine import Engine
    from training.evaluation.datasets import load_bench
    from training.releases.jobs import run_job
    from training.loop import run_bootstrap, run_loop

    bench = load_bench(BENCH / args.collection)
    figures: dict = {"collection": args.collection, "args": vars(args)}
    base_home = Path(args.home or tempfile.mkdtemp(prefix="agro-bench-"))

    if not args.no_feedback:
        home = base_home / "feedback"
        _install_base(home, args.base)
        eng = Engine(_settings(home, args))
        corpora = sorted(bench.roots)
        for c in corpora:
            eng.index(bench.roots[c], c)
        qs = list(bench.queries)
        random.Random(args.seed).shuffle(qs)
        train_q, test_q = qs[: len(qs) // 2], qs[len(qs) // 2:]
        if args.base:
            figures["test_half_base_alone"] = score(eng, test_q, Path(args.base).resolve(),
                                                    "test half (pre-trained base alone, no feedback)")
        t0 = time.time()
        figures["user"] = simulate_user(eng, corpora[0], train_q, args.k) if len(corpora) == 1 else None
        run_id, res = run_job(eng.store, home, "loop", lambda ctx: run_loop(eng.workspace, ctx, ["feedback"]))
        figures["loop"] = {"run_id": run_id, "decision": res.get("decision"), "gate": res.get("gate"),
                           "mined": res.get("mined"), "blend": res.get("blend"),
                           "trained_sec": res.get("trained_sec"), "loop_sec": round(time.time() - t0, 1)}
        cand = home / "models" / "runs" / run_id / "model"
        figures["test_half"] = score(eng, test_q, cand if cand.is_dir() else None, "test half (feedback loop)")
        figures["test_half_n"] = len(test_q)
        if args.blend_grid and cand.is_dir():
            figures["test_half_blend_grid"] = blend_grid(eng, test_q, cand)
        eng.close()

    if args.bootstrap:
        # Each corpus is bootstrapped on its own, in its own data home (a fresh install on that repository), and
        # its candidate is scored on that corpus's queries only; multi-corpus collections are pooled per query.
        per_corpus = {}
        rows: dict[str, dict[str, list[dict]]] = {}
        corpora = sorted(bench.roots)[: args.max_corpora or None]
        if args.shard:
            i, n = (int(x) for x in args.shard.split("/"))
            corpora = corpora[i::n]
        for c in corpora:
            home = base_home / "bootstrap" / c if len(bench.roots) > 1 else base_home / "bootstrap"
            reused = _finished_bootstrap(home) if args.reuse else None
            if reused is None:
                _install_base(home, args.base)
            eng = Engine(_settings(home, args))
            t0 = time.time()
            if reused is not None:  # indexed and bootstrapped by an earlier run of this script: score it again
                run_id, res = reused
            else:
                eng.index(bench.roots[c], c)
                run_id, res = run_job(eng.store, home, "bootstrap",
                                      lambda ctx, c=c: run_bootstrap(eng.workspace, ctx, c, promote=True))
            gate = res.get("gate") or {}
            per_corpus[c] = {"run_id": run_id, "decision": res.get("decision"), "gate": gate.get("reasons"),
                             "mined": res.get("mined"), "alpha": (res.get("blend") or {}).get("alpha"),
                             "sec": round(time.time() - t0, 1)}
            logger.info("bootstrap %s: %s", c, per_corpus[c])
            cand = home / "models" / "runs" / run_id / "model"
            qs = [q for q in bench.queries if q.corpus == c]
            if qs:
                report = _score_report(eng, qs, cand if cand.is_dir() else None, f"{c} (bootstrap alone)")
                promoted = res.get("decision") == "promoted"
                per_query = dict(report.per_query)
                if cand.is_dir() and eng.settings.reranker.long_query_factor:
                    # the same candidate with the long-query rule off: what it does to every question
                    every = _score_report(eng, qs, cand, f"{c} (bootstrap alone, every query reranked)",
                                          eng.settings.reranker.model_copy(update={"long_query_factor": 0}))
                    per_query["fused+candidate, every query"] = every.per_query["fused+candidate"]
                    # and with long queries read in windows instead of kept in the fused order
                    win = _score_report(eng, qs, cand, f"{c} (bootstrap alone, long queries in windows)",
                                        eng.settings.reranker.model_copy(update={"long_query_mode": "windows"}))
                    per_query["fused+candidate, long queries in windows"] = win.per_query["fused+candidate"]
                for cfg, by_level in per_query.items():
                    for level, level_rows in by_level.items():
                        rows.setdefault(cfg, {}).setdefault(level, []).extend(level_rows)
                        if cfg == ("fused+candidate" if promoted else "fused"):
                            rows.setdefault("served", {}).setdefault(level, []).extend(level_rows)
                if args.blend_grid and cand.is_dir():
                    per_corpus[c]["blend_grid"] = blend_grid(eng, qs, cand)
                    per_corpus[c]["queries"] = len(qs)
            eng.close()
        figures["bootstrap_runs"] = per_corpus
        grids = [(r["queries"], r["blend_grid"]) for r in per_corpus.values() if r.get("blend_grid")]
        if grids:  # query-weighted means over the corpora: the pooled MRR@10 at each (alpha, dense weight)
            total = sum(n for n, _ in grids)
            figures["bootstrap_blend_grid"] = {
                key: {lv: round(sum(n * g[key].get(lv, 0.0) for n, g in grids) / total, 4) for lv in grids[0][1][key]}
                for key in grids[0][1]}
        figures["bootstrap_all_queries"] = {
            cfg: {level: _pooled(level_rows) for level, level_rows in by_level.items()} for cfg, by_level in rows.items()
        }
        logger.info("bootstrap alone, pooled over %d corpora: %s", len(corpora),
                    json.dumps(figures["bootstrap_all_queries"], default=str))

    text = json.dumps(figures, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
