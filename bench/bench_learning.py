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

BENCH = Path(os.environ.get("AGRO_BENCH_DIR") or next(
    (p / "shared" / "bench" for p in Path(__file__).resolve().parents if (p / "shared" / "bench").is_dir()),
    Path(__file__).resolve().parents[2] / "shared" / "bench"))


def _settings(home: Path, args):
    from agro_mcp.config import load_settings

    env = dict(os.environ)
    if args.defaults:  # the product's defaults, and only what --env sets on top
        env["AGRO_HOME"] = str(home)
        env.update(kv.split("=", 1) for kv in args.env)
        return load_settings(env)
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


def simulate_user(engine, corpus: str, queries, k: int, *, served: bool = False, thumbs_down: bool = False) -> dict:
    """Play the user on ``queries``: ``used`` on each gold hit seen, ``correct_location`` with the gold span when
    none is shown, and (``thumbs_down``) a thumbs down on the top non-gold hit ranked above the first gold one.
    ``served``: the user sees what is served (the current release, if any); otherwise fused retrieval alone."""
    from training.events.feedback import submit_feedback

    n_used = n_loc = n_down = 0
    for q in queries:
        resp = engine.search(q.query, corpus, k=k, rerank=None if served else False)
        gold = q.span_gold if q.span_gold else q.gold
        is_gold = [any(_overlaps(h, g) for g in gold) for h in resp.results]
        seen = [h for h, ok in zip(resp.results, is_gold) if ok]
        for h in seen:
            submit_feedback(engine.store, resp.event_id, "used", doc_id=h.doc_id, corpus_root=engine.corpus_root)
            n_used += 1
        if thumbs_down and seen and not is_gold[0]:  # the top hit is not gold and a gold one is shown below it
            submit_feedback(engine.store, resp.event_id, "thumbs_down", doc_id=resp.results[0].doc_id,
                            corpus_root=engine.corpus_root)
            n_down += 1
        if not seen:
            g = next((g for g in gold if g.start_line is not None), None)
            if g is not None:
                submit_feedback(engine.store, resp.event_id, "correct_location", path=g.path,
                                start_line=g.start_line, end_line=g.end_line, corpus_root=engine.corpus_root)
                n_loc += 1
    return {"queries": len(queries), "used": n_used, "thumbs_down": n_down, "correct_location": n_loc}


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


def _half_metrics(engine, queries, model: Path | None, label: str) -> dict:
    """File and span MRR@10 / Hit@1 of ``queries`` with fused retrieval and, given ``model`` (a run's model folder
    or a release folder, blended as its run.json / manifest says), fused + that model."""
    from training.evaluation.run import run_evaluation

    s = engine.settings
    r = run_evaluation(queries, engine.home, s.index, s.retrieval, configs=("fused",),
                       candidate_model=str(model) if model else None, reranker_settings=s.reranker,
                       embedder=engine.embedder(), k=50)
    out = {cfg: {lv: {m: round(v[m], 4) for m in ("MRR@10", "Hit@1")} for lv, v in by.items() if lv in ("file", "span")}
           for cfg, by in r.metrics.items()}
    logger.info("%s: %s", label, out)
    return out


def _gate_summary(res: dict) -> dict:
    """The gate's decision in numbers: questions judged, the best alternative, mean paired gain and its CI."""
    gate = res.get("gate") or {}
    figs = gate.get("figures") or {}
    best = figs.get("best_other")
    gain = figs.get(f"mrr_gain_vs_{best}") or {}
    cv = figs.get("cross_validation") or {}
    return {"promote": gate.get("promote"), "n": figs.get("n_queries"), "best_other": best,
            "mean_gain": gain.get("mean"), "ci": gain.get("ci"), "p": gain.get("p_value"),
            "required_gain": figs.get("required_gain"), "judged_on": (figs.get("judged_on") or {}).get("questions"),
            "cv_folds": len(cv.get("folds") or []) or None, "reasons": gate.get("reasons") or [res.get("reason")]}


def feedback_steps(args, bench, home: Path) -> dict:
    """The simulated user works on the training half in steps; after each step ``run_loop`` (what ``agro loop``
    runs) mines all feedback so far, trains, gates and promotes; the other half is scored with what is served
    then (fused + the current release, or fused alone) and with the step's candidate."""
    from agro_mcp.config import load_settings
    from agro_mcp.engine import Engine
    from training.loop import run_loop
    from training.releases.jobs import run_job
    from training.releases.promote import current_release

    env = dict(os.environ)
    env["AGRO_HOME"] = str(home)  # the product's defaults otherwise (AGRO_* from the caller's environment apply)
    eng = Engine(load_settings(env))
    corpora = sorted(bench.roots)
    if len(corpora) != 1:
        raise SystemExit("--steps needs a single-corpus collection (the docstring ones)")
    corpus = corpora[0]
    eng.index(bench.roots[corpus], corpus)
    qs = list(bench.queries)
    random.Random(args.seed).shuffle(qs)
    train_q, test_q = qs[: len(qs) // 2], qs[len(qs) // 2:]
    out: dict = {"train_half": len(train_q), "test_half": len(test_q), "steps": [], "first_promotion": None}
    out["test_half_before"] = _half_metrics(eng, test_q, None, "test half before any feedback")["fused"]
    sys.stdout.write(f"{args.collection}: {len(train_q)} questions for the user, {len(test_q)} unseen; fused "
                     f"file/span MRR@10 {out['test_half_before']['file']['MRR@10']:.4f} / "
                     f"{out['test_half_before']['span']['MRR@10']:.4f}\n")
    sys.stdout.flush()
    done = 0
    for step in args.steps.split(","):
        n = len(train_q) if step == "all" else min(int(step), len(train_q))
        if n <= done:
            continue
        t0 = time.time()
        user = simulate_user(eng, corpus, train_q[done:n], args.k, served=True, thumbs_down=True)
        done = n
        run_id, res = run_job(eng.store, home, "loop",
                              lambda ctx: run_loop(eng.workspace, ctx, ["feedback"], reload=True))
        loop_sec = round(time.time() - t0, 1)
        cur = current_release(home / "models")
        promoted = res.get("decision") == "promoted"
        served = _half_metrics(eng, test_q, Path(cur["_dir"]) if cur else None, f"test half after {n} (served)")
        served = served["fused+candidate"] if cur else served["fused"]
        cand_dir = home / "models" / "runs" / (res.get("candidate_run") or run_id) / "model"
        cand = None
        if not promoted and cand_dir.is_dir():  # what the gate kept from users
            cand = _half_metrics(eng, test_q, cand_dir, f"test half after {n} (candidate)")["fused+candidate"]
        row = {"questions": n, "user": user, "run_id": run_id, "decision": res.get("decision"),
               "gate": _gate_summary(res), "release": cur.get("id") if cur else None,
               "served": served, "candidate_if_refused": cand, "loop_sec": loop_sec,
               "blend": {k: (res.get("blend") or {}).get(k) for k in ("alpha", "dense_weight", "calibrated")}}
        out["steps"].append(row)
        if promoted and out["first_promotion"] is None:
            out["first_promotion"] = n
        g = row["gate"]
        ci = g.get("ci") or [float("nan"), float("nan")]
        base = out["test_half_before"]
        line = (f"{args.collection} after {n} questions: {res.get('decision')}; gate n={g.get('n')} "
                f"mean gain {g.get('mean_gain') if g.get('mean_gain') is None else round(g['mean_gain'], 4)} "
                f"CI [{ci[0]:+.4f}, {ci[1]:+.4f}] (cv folds {g.get('cv_folds')}); unseen half served file/span "
                f"MRR@10 {served['file']['MRR@10']:.4f} / {served['span']['MRR@10']:.4f} "
                f"({served['file']['MRR@10'] / base['file']['MRR@10'] - 1:+.1%} / "
                f"{served['span']['MRR@10'] / base['span']['MRR@10'] - 1:+.1%} vs fused)")
        if cand:
            line += (f"; refused candidate {cand['file']['MRR@10']:.4f} / {cand['span']['MRR@10']:.4f}")
        line += f"; {loop_sec}s\n    reasons: " + " | ".join(str(r) for r in g["reasons"]) + "\n"
        sys.stdout.write(line)
        sys.stdout.flush()
    eng.close()
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
    p.add_argument("--steps", help="feedback loop by steps, e.g. 20,40,all: the user works on the training half in "
                   "steps and agro loop runs after each (the product's default settings); replaces the one-shot run")
    p.add_argument("--defaults", action="store_true",
                   help="the product's default settings (plus --env), not this script's training overrides; with "
                   "--bootstrap, only the served configuration is scored (no long-query variants)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="with --defaults: an AGRO_* setting on top of the defaults (repeatable)")
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

    if args.steps and not args.no_feedback:
        figures["feedback_steps"] = feedback_steps(args, bench, base_home / "feedback-steps")
    elif not args.no_feedback:
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
                             "judged_on": (gate.get("figures") or {}).get("judged_on"),
                             "synthetic_only": eng.settings.training.synthetic_only,
                             "sec": round(time.time() - t0, 1)}
            logger.info("bootstrap %s: %s", c, per_corpus[c])
            cand = home / "models" / "runs" / run_id / "model"
            qs = [q for q in bench.queries if q.corpus == c]
            if qs:
                report = _score_report(eng, qs, cand if cand.is_dir() else None, f"{c} (bootstrap alone)")
                promoted = res.get("decision") == "promoted"
                per_query = dict(report.per_query)
                if cand.is_dir() and eng.settings.reranker.long_query_factor and not args.defaults:
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
