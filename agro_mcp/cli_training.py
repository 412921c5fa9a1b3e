"""``agro`` commands of the learning loop: ``evaluate``, ``mine``, ``train``, ``loop``, ``bootstrap``, ``pretrain``.

Every command is a thin face over ``training``: the same functions ``reranker_admin`` runs. Errors the user can fix
exit with status 2 and a message that says how; ``agro loop`` / ``agro bootstrap`` exit 0 when a release was
promoted and 1 when the loop ran but promoted nothing. On a terminal, training draws its progress on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agro_mcp.cli_common import CommandFailed, add_command, echo, guard, make_engine, run_here

__all__ = ["register"]


def _dump(obj) -> None:
    echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


# ------------------------------------------------------------------------------------------ evaluation


def cmd_evaluate(args, settings) -> int:
    from training.evaluation.report import format_table, save_report, write_run_jsonl
    from training.evaluation.run import run_evaluation

    home = settings.server.home
    eng = make_engine(settings)
    try:
        if args.history:
            return _history(eng, args)
        if args.plot and not args.dataset:
            return _plot(eng, args)
        if not args.dataset:
            raise CommandFailed("evaluate needs a dataset: golden.json or a bench collection folder (or --plot alone)")
        rerank_path = model = None
        configs = ["bm25", "dense", "fused"]
        if not args.no_rerank and settings.reranker.enabled:
            eng.reranker.start()
            loaded = eng.reranker.get(wait=True)
            if loaded is not None:
                rerank_path, model = eng.ranking_path.with_reranker(loaded), loaded.model_id
                configs.append("fused+rerank")
            else:
                echo(f"note: no reranker ({eng.reranker.none_reason}); scoring retrieval only", file=sys.stderr)
        candidate = None
        if args.candidate:
            from training.learning.trainer import run_dir

            candidate = str(run_dir(home / "models", args.candidate) / "model")
        report = run_evaluation(args.dataset, home, settings.index, settings.retrieval, configs=configs,
                                rerank_path=rerank_path, candidate_model=candidate, reranker_settings=settings.reranker,
                                model=model, embedder=eng.embedder(), limit=args.limit,
                                index_backend=eng.indexes)
        saved = save_report(report, eng.store, home / "exports")
        if args.runs:
            for c, run in report.runs.items():
                write_run_jsonl(run, Path(args.runs) / f"{report.name}.{c}.jsonl")
        if args.json:
            _dump(report.to_dict(per_query=False))
        else:
            echo(format_table(report))
            echo(f"saved: {saved.history_path}")
        if args.plot:
            _plot(eng, args)
    finally:
        eng.close()
    return 0


def _history(eng, args) -> int:
    """One line per past evaluation, newest first: every config's MRR@10 at the chosen level."""
    rows = eng.store.list_evaluations(limit=args.history)
    if args.json:
        _dump([{k: r[k] for k in ("id", "ts", "name", "model")} | {"metrics": r["payload"].get("metrics")} for r in rows])
        return 0
    if not rows:
        echo("no evaluation yet: agro evaluate golden.json")
        return 0
    echo(f"{'id':>4}  {'when (UTC)':<20} {'dataset':<22} {'model':<28} MRR@10 ({args.level})")
    for r in rows:
        payload = r["payload"]
        when = payload.get("created_at") or str(r["ts"])
        scores = ", ".join(
            f"{cfg} {lv[args.level]['MRR@10']:.3f}"
            for cfg, lv in payload.get("metrics", {}).items()
            if args.level in lv and "MRR@10" in lv[args.level]
        )
        echo(f"{r['id']:>4}  {when[:19]:<20} {r['name'][:22]:<22} {str(r['model'] or '-')[:28]:<28} {scores}")
    return 0


def _plot(eng, args) -> int:
    from training.evaluation.plot import plot_history

    out = Path(args.plot_out) if args.plot_out else eng.home / "exports" / "evals" / "history.png"
    try:
        path = plot_history(eng.store.list_evaluations(limit=1000), out, level=args.level)
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None
    echo(f"plot written: {path}")
    return 0


# ------------------------------------------------------------------------------------------ the loop


def _sources(args) -> tuple[list[str], Path | None]:
    sources = list(dict.fromkeys(args.source or ["feedback"]))
    golden = Path(args.golden) if getattr(args, "golden", None) else None
    if golden is not None and "golden" not in sources:
        sources.append("golden")
    if "golden" in sources and golden is None:
        if Path("golden.json").is_file():
            golden = Path("golden.json")
        else:
            raise CommandFailed("source 'golden' needs --golden PATH (no ./golden.json)")
    return sources, golden


def cmd_mine(args, settings) -> int:
    from training.loop import export_triplets, mine
    from training.learning.trainer import run_dir, write_split

    sources, golden = _sources(args)

    def fn(ws, ctx):
        split = mine(ws, ctx, sources, golden_path=golden, corpus=args.corpus)
        write_split(run_dir(ws.home / "models", ctx.run_id), split)
        path = export_triplets(ws, split)
        return {"train": len(split.train), "heldout": len(split.heldout), "split": split.info.get("sources"),
                "exported": str(path)}

    run_id, res = run_here(settings, "mine", fn, lock=None)
    echo(f"run {run_id}: {res['train']} training / {res['heldout']} held-out triplets {res['split']}; "
          f"training side exported to {res['exported']}")
    return 0


def _print_loop(run_id: str, res: dict) -> int:
    if res.get("table"):
        echo(res["table"])
    gate = res.get("gate") or {}
    if gate:
        echo(("gate: PROMOTE " if gate["promote"] else "gate: REFUSE ") + "; ".join(gate["reasons"]))
    extra = f" -> release {res['release']}" if res.get("release") else ""
    echo(f"run {run_id}: {res.get('decision')}{extra}" + (f" ({res['reason']})" if res.get("reason") else ""))
    return int(res.get("status", 1))


def cmd_train(args, settings) -> int:
    from training.loop import run_loop

    sources, golden = _sources(args)
    run_id, res = run_here(settings, "train", lambda ws, ctx: run_loop(ws, ctx, sources, golden_path=golden,
                                                                     corpus=args.corpus, promote=False))
    _print_loop(run_id, res)
    return 0 if res.get("decision") != "skipped" else 1


def cmd_loop(args, settings) -> int:
    from training.loop import run_loop

    sources, golden = _sources(args)
    run_id, res = run_here(settings, "loop", lambda ws, ctx: run_loop(ws, ctx, sources, golden_path=golden,
                                                                    corpus=args.corpus))
    return _print_loop(run_id, res)


def cmd_bootstrap(args, settings) -> int:
    from training.loop import run_bootstrap

    run_id, res = run_here(settings, "bootstrap",
                       lambda ws, ctx: run_bootstrap(ws, ctx, args.corpus, promote=not args.no_promote))
    return _print_loop(run_id, res)


def cmd_pretrain(args, settings) -> int:
    from training.learning.pretrain import run_pretrain

    run_id, res = run_here(settings, "pretrain",
                           lambda ws, ctx: run_pretrain(ws.home, ws.settings, ctx, args.source, cap=args.cap,
                                                        max_pairs=args.max_pairs, embedder=ws.embedder()))
    if args.json:
        echo(json.dumps({"run_id": run_id, **res}, indent=1, default=str))
        return 0
    if res.get("table"):
        echo(res["table"])
    m = res["manifest"]
    trained = (m.get("data") or {}).get("trained_triplets", m["train_triplets"])
    echo(f"run {run_id}: base {res['base']} trained on {trained} of {m['train_triplets']} mined (docstring, code) pairs "
         f"of {m['source']} ({m['chunks']} chunks) in {m['elapsed_sec']:.0f}s; models/base/current -> {res['base']}. "
         "Training runs with no release now start from it (agro bootstrap, agro loop).")
    return 0


# ------------------------------------------------------------------------------------------ parser


def _sources_args(p) -> None:
    p.add_argument("--source", action="append", choices=["feedback", "golden", "bootstrap"],
                   help="where training questions come from (repeatable; default: feedback)")
    p.add_argument("--golden", metavar="FILE", help="golden.json to mine as well (adds source golden)")
    p.add_argument("--corpus", help="only this corpus's events (default: every corpus)")


def register(sub) -> None:
    """Add the learning-loop subcommands to ``agro``'s subparsers."""
    s = add_command(
        sub, "evaluate", "score BM25, dense, fused and reranked retrieval on golden.json or a bench folder",
        "agro evaluate golden.json\n"
        "agro evaluate ../shared/bench/docstring_boltons --candidate 20261205-1203-ab12 --plot\n"
        "agro evaluate --history 10",
        description="Score BM25, dense, fused and fused + the current reranker (and a candidate) side by side:\n"
                    "MRR@10, Hit@1/3/5/10, nDCG@10, Recall@50 at file and span level, with bootstrap confidence\n"
                    "intervals. Each run is saved to $AGRO_HOME/exports/evals/.")
    s.add_argument("dataset", nargs="?", help="golden.json or a bench collection folder (omit with --history or --plot)")
    s.add_argument("--candidate", metavar="RUN_ID", help="also score this training run's model")
    s.add_argument("--no-rerank", action="store_true", help="score retrieval only, without the current reranker")
    s.add_argument("--limit", type=int, metavar="N", help="score only the first N questions")
    s.add_argument("--runs", metavar="DIR", help="also write per-question run files (score.py format) into DIR")
    s.add_argument("--plot", action="store_true", help="write the history plot (PNG) of all evaluations")
    s.add_argument("--history", type=int, nargs="?", const=20, metavar="N",
                   help="list the last N evaluations (default 20) instead of running one")
    s.add_argument("--plot-out", metavar="FILE", help="where --plot writes (default: exports/evals/history.png)")
    s.add_argument("--level", default="file", choices=["file", "span"],
                   help="match answers by file or by line span, for --history and --plot (default: file)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=guard(cmd_evaluate))

    s = add_command(sub, "mine", "mine training triplets and the held-out split, without training",
                    "agro mine --source feedback --source golden --golden golden.json")
    _sources_args(s)
    s.set_defaults(func=guard(cmd_mine))
    s = add_command(sub, "train", "mine, train a candidate into models/runs/<run_id>, and evaluate it (no promotion)",
                    "agro train --corpus myrepo\nagro promote            # then gate the newest run")
    _sources_args(s)
    s.set_defaults(func=guard(cmd_train))
    s = add_command(
        sub, "loop", "mine, train, evaluate and promote once (for cron); exit 0 if promoted, 1 if not",
        "15 3 * * * cd /path/to/agro-mcp && .venv/bin/agro loop >> ~/.agro/loop.log 2>&1",
        description="Mine, train, evaluate, and promote once: what a nightly cron job or systemd timer runs.\n"
                    "Exit status 0 when a release was promoted, 1 when the loop ran but the gate refused.")
    _sources_args(s)
    s.set_defaults(func=guard(cmd_loop))
    s = add_command(
        sub, "bootstrap", "train a first reranker from the indexed code itself (after agro index), gated as usual",
        "agro bootstrap --corpus myrepo",
        description="Train a first reranker from the indexed code itself: docstring and comment -> code pairs\n"
                    "(and, with AGRO_TRAINING_BOOTSTRAP_USAGE_SHARE, call site -> definition pairs). The candidate\n"
                    "is promoted only if the gate finds it better than retrieval alone.")
    s.add_argument("--corpus", help="the corpus to learn from (default: the only indexed corpus)")
    s.add_argument("--no-promote", action="store_true", help="train and evaluate, but leave the promotion to you")
    s.set_defaults(func=guard(cmd_bootstrap))
    s = add_command(
        sub, "pretrain", "pre-train the base cross-encoder offline on documented code (cross-encoder runs only)",
        "AGRO_TRAINING_MODEL_KIND=cross-encoder agro pretrain --cap 2000",
        description="Pre-train a base cross-encoder offline, once per data home, on documented code every machine\n"
                    "has (default: this interpreter's standard library). Published as models/base/current; later\n"
                    "cross-encoder runs with no release start from it. Never served by itself. ~20 min on 2 cores.")
    s.add_argument("--source", metavar="DIR",
                   help="folder of documented code (default: this interpreter's standard library)")
    s.add_argument("--cap", type=int, help="(docstring, code) pairs to mine (default: AGRO_TRAINING_PRETRAIN_CAP)")
    s.add_argument("--max-pairs", type=int, help="training pairs (default: AGRO_TRAINING_PRETRAIN_MAX_PAIRS)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=guard(cmd_pretrain))
