"""``agro`` commands of the learning loop: feedback, logs, golden, evaluation, mining, training, promotion.

Every command is a thin face over ``training``: the same functions ``reranker_admin`` runs. Errors the user can fix
exit with status 2 and a message that says how; ``agro loop`` / ``agro bootstrap`` exit 0 when a release was
promoted and 1 when the loop ran but promoted nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agro_mcp.cli import echo
from retrieval.errors import AgroUserError

__all__ = ["register"]


class _Fail(AgroUserError):
    """A user-fixable failure: printed as ``agro: <message>``, exit 2."""


def _engine(settings):
    from agro_mcp.engine import Engine

    return Engine(settings)


def _dump(obj) -> None:
    echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _guard(fn):
    """Turn the training package's user-facing errors into ``agro: message`` and exit 2."""

    def wrapped(args, settings) -> int:
        try:
            return fn(args, settings) or 0
        except (AgroUserError, FileNotFoundError) as exc:
            echo(f"agro: {exc}", file=sys.stderr)
            return 2

    return wrapped


# ------------------------------------------------------------------------------------------ feedback / logs


def cmd_feedback(args, settings) -> int:
    from training.events.feedback import submit_feedback

    eng = _engine(settings)
    try:
        rec = submit_feedback(eng.store, args.event_id, args.signal, doc_id=args.doc_id, rating=args.rating,
                              path=args.path, start_line=args.start_line, end_line=args.end_line, note=args.note,
                              corpus_root=eng.corpus_root, indexed_files=eng.indexed_files)
    finally:
        eng.close()
    state = "recorded" if rec.created else "already recorded"
    echo(f"feedback {rec.feedback_id} {state}: {rec.signal} on event {rec.event_id}"
          + (f" ({rec.doc_id})" if rec.doc_id else ""))
    return 0


def cmd_import_logs(args, settings) -> int:
    from training.events.logs_io import import_logs

    eng = _engine(settings)
    try:
        rep = import_logs(eng.store, Path(args.file), default_corpus=args.corpus)
    finally:
        eng.close()
    echo(json.dumps({k: v for k, v in vars(rep).items() if not k.startswith("_")}, default=str, indent=2))
    return 0


def cmd_export(args, settings) -> int:
    from training.events.logs_io import export_queries, write_jsonl_atomic
    from training.loop import chunk_lookup
    from training.learning.miners import mine_feedback

    out = Path(args.out) if args.out else settings.server.home / "exports"
    eng = _engine(settings)
    try:
        rep = export_queries(eng.store, out / "queries.jsonl", corpus=args.corpus)
        trips = mine_feedback(eng.store, corpus=args.corpus, negatives_per_query=settings.training.negatives_per_query,
                              chunk_lookup=chunk_lookup(eng))
        n = write_jsonl_atomic(out / "triplets.jsonl", (t.to_dict() for t in trips))
    finally:
        eng.close()
    echo(f"wrote {out / 'queries.jsonl'} ({rep.queries} queries, {rep.feedback} feedback) and "
          f"{out / 'triplets.jsonl'} ({n} triplets)")
    return 0


def cmd_golden_add(args, settings) -> int:
    from retrieval.types import parse_doc_id
    from training.evaluation.golden import add_golden

    spans = []
    for s in args.span or []:
        try:
            p, a, b = parse_doc_id(s)
        except ValueError as exc:
            raise _Fail(f"--span {exc}") from None
        spans.append({"path": p, "start_line": a, "end_line": b})
    row = {"q": args.q, "repo": args.repo, "expect_paths": args.path or [], "expect_spans": spans}
    idx = add_golden(Path(args.file), row)
    echo(f"added question #{idx} to {args.file}")
    return 0


# ------------------------------------------------------------------------------------------ evaluation


def cmd_evaluate(args, settings) -> int:
    from training.evaluation.report import format_table, save_report, write_run_jsonl
    from training.evaluation.run import run_evaluation

    home = settings.server.home
    eng = _engine(settings)
    try:
        if args.history:
            return _history(eng, args)
        if args.plot and not args.dataset:
            return _plot(eng, args)
        if not args.dataset:
            raise _Fail("evaluate needs a dataset: golden.json or a bench collection folder (or --plot alone)")
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
        raise _Fail(str(exc)) from None
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
            raise _Fail("source 'golden' needs --golden PATH (no ./golden.json)")
    return sources, golden


def _run(settings, kind: str, fn, lock: str | None = "training"):
    from training.releases.jobs import run_job

    eng = _engine(settings)
    try:
        ws = eng.workspace
        run_id, result = run_job(eng.store, settings.server.home, kind, lambda ctx: fn(ws, ctx), lock_name=lock)
    finally:
        eng.close()
    return run_id, result


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

    run_id, res = _run(settings, "mine", fn, lock=None)
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
    run_id, res = _run(settings, "train", lambda ws, ctx: run_loop(ws, ctx, sources, golden_path=golden,
                                                                     corpus=args.corpus, promote=False))
    _print_loop(run_id, res)
    return 0 if res.get("decision") != "skipped" else 1


def cmd_loop(args, settings) -> int:
    from training.loop import run_loop

    sources, golden = _sources(args)
    run_id, res = _run(settings, "loop", lambda ws, ctx: run_loop(ws, ctx, sources, golden_path=golden,
                                                                    corpus=args.corpus))
    return _print_loop(run_id, res)


def cmd_bootstrap(args, settings) -> int:
    from training.loop import run_bootstrap

    run_id, res = _run(settings, "bootstrap",
                       lambda ws, ctx: run_bootstrap(ws, ctx, args.corpus, promote=not args.no_promote))
    return _print_loop(run_id, res)


def cmd_pretrain(args, settings) -> int:
    from training.learning.pretrain import run_pretrain

    run_id, res = _run(settings, "pretrain",
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


def cmd_promote(args, settings) -> int:
    from training.releases.admin import _latest_trained
    from training.loop import promote_step

    home = settings.server.home
    rid = args.run_id or _latest_trained(home / "models")
    run_id, res = _run(settings, "promote", lambda ws, ctx: promote_step(ws, ctx, rid, force=args.force))
    echo(("PROMOTED as " + str(res["release"])) if res["decision"] == "promoted" else "REFUSED")
    for r in res.get("reasons", []):
        echo(f"  {r}")
    return 0 if res["decision"] == "promoted" else 1


def cmd_rollback(args, settings) -> int:
    from training.releases.promote import rollback

    eng = _engine(settings)
    try:
        res = rollback(settings.server.home, eng.store, registry=eng.releases)
    finally:
        eng.close()
    echo(f"rolled back: current -> {res['release']} (was {res['from']}); running servers reload it on their next check")
    return 0


def cmd_jobs(args, settings) -> int:
    from training.releases.admin import run_admin_action

    eng = _engine(settings)
    try:
        if args.cancel:
            res = run_admin_action(eng.workspace, "cancel", run_id=args.cancel)
        elif args.logs:
            res = run_admin_action(eng.workspace, "logs", run_id=args.logs)
            if not args.json:
                echo("\n".join(res["lines"]) or "(no log lines)")
                return 0
        elif args.runs:
            res = run_admin_action(eng.workspace, "runs")
        else:
            res = run_admin_action(eng.workspace, "status")
    finally:
        eng.close()
    if args.json or args.cancel or args.runs:
        _dump(res)
        return 0
    echo(f"current release: {res['current_release'] or 'none'}; training lock: "
          f"{res['training_lock'] or 'free'}")
    for j in res["jobs"]:
        echo(f"{j['run_id']}  {j['kind']:<9} {j['state']:<9} {j['progress']:.0%}  {j['message'] or ''}"
              + (f"  error: {j['error'][:120]}" if j["error"] else ""))
    return 0


def cmd_db_compact(args, settings) -> int:
    """Apply the retention rules now and give the space back to the file system."""
    from training.releases.retention import compact

    days = settings.server.events_retention_days if args.days is None else args.days
    eng = _engine(settings)
    try:
        before = _db_bytes(settings.server.home)
        res = compact(eng.store, settings.server.home, days, vacuum=True)
        after = _db_bytes(settings.server.home)
    finally:
        eng.close()
    if args.json:
        _dump({**res, "retention_days": days, "db_bytes_before": before, "db_bytes_after": after})
        return 0
    echo(f"removed {res['events']} query events older than {days:g} days without feedback, "
         f"{res['chunk_texts']} unreferenced chunk texts, {len(res['folders'])} incomplete model folders"
         + (f"; agro.db {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB" if before else ""))
    return 0


def _db_bytes(home) -> int:
    from pathlib import Path

    return sum(p.stat().st_size for p in (Path(home) / "agro.db", Path(home) / "agro.db-wal") if p.is_file())


# ------------------------------------------------------------------------------------------ parser


def register(sub) -> None:
    """Add the learning-loop subcommands to ``agro``'s subparsers."""
    s = sub.add_parser("feedback", help="record feedback on a search result (event_id from agro search --json)")
    s.add_argument("event_id")
    s.add_argument("signal", choices=["click", "used", "thumbs_up", "thumbs_down", "rating", "correct_location"])
    s.add_argument("--doc-id")
    s.add_argument("--rating", type=int)
    s.add_argument("--path")
    s.add_argument("--start-line", type=int)
    s.add_argument("--end-line", type=int)
    s.add_argument("--note")
    s.set_defaults(func=_guard(cmd_feedback))

    s = sub.add_parser("import-logs", help="import a seeds-format queries.jsonl log")
    s.add_argument("file")
    s.add_argument("--corpus", default="default", help="corpus for events that name none")
    s.set_defaults(func=_guard(cmd_import_logs))

    s = sub.add_parser("export", help="write queries.jsonl and triplets.jsonl (seeds' formats)")
    s.add_argument("--out", help="folder (default: $AGRO_HOME/exports)")
    s.add_argument("--corpus")
    s.set_defaults(func=_guard(cmd_export))

    g = sub.add_parser("golden", help="golden.json questions")
    gsub = g.add_subparsers(dest="golden_command", required=True)
    s = gsub.add_parser("add", help="append one question to golden.json")
    s.add_argument("--q", required=True, help="the question")
    s.add_argument("--repo", required=True, help="corpus id")
    s.add_argument("--path", action="append", help="expected file (repeatable)")
    s.add_argument("--span", action="append", help="expected span path:start-end (repeatable)")
    s.add_argument("--file", default="golden.json")
    s.set_defaults(func=_guard(cmd_golden_add))

    s = sub.add_parser("evaluate", help="score BM25 / dense / fused / reranked on golden.json or a bench folder")
    s.add_argument("dataset", nargs="?")
    s.add_argument("--candidate", help="also score this training run's model (run id)")
    s.add_argument("--no-rerank", action="store_true")
    s.add_argument("--limit", type=int)
    s.add_argument("--runs", help="write score.py run files into this folder")
    s.add_argument("--plot", action="store_true", help="write the history plot (PNG)")
    s.add_argument("--history", type=int, nargs="?", const=20, metavar="N",
                   help="list the last N evaluations (default 20) instead of running one")
    s.add_argument("--plot-out")
    s.add_argument("--level", default="file", choices=["file", "span"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_guard(cmd_evaluate))

    def sources(p):
        p.add_argument("--source", action="append", choices=["feedback", "golden", "bootstrap"],
                       help="mining source (repeatable; default feedback)")
        p.add_argument("--golden", help="golden.json to mine (adds source golden)")
        p.add_argument("--corpus")

    s = sub.add_parser("mine", help="mine triplets and the held-out split (no training)")
    sources(s)
    s.set_defaults(func=_guard(cmd_mine))
    s = sub.add_parser("train", help="mine, train a candidate into models/runs/<run_id>, evaluate it")
    sources(s)
    s.set_defaults(func=_guard(cmd_train))
    s = sub.add_parser("loop", help="mine, train, evaluate, promote once (cron); exit 0 promoted, 1 not")
    sources(s)
    s.set_defaults(func=_guard(cmd_loop))
    s = sub.add_parser("bootstrap", help="train a first reranker from the indexed corpus itself (after agro index)")
    s.add_argument("--corpus")
    s.add_argument("--no-promote", action="store_true")
    s.set_defaults(func=_guard(cmd_bootstrap))
    s = sub.add_parser("pretrain", help="pre-train the base reranker offline on documented code (default: the "
                       "Python standard library); later runs start from it")
    s.add_argument("--source", help="folder of documented code (default: this interpreter's standard library)")
    s.add_argument("--cap", type=int, help="(docstring, code) pairs to mine (default AGRO_TRAINING_PRETRAIN_CAP)")
    s.add_argument("--max-pairs", type=int, help="training pairs (default AGRO_TRAINING_PRETRAIN_MAX_PAIRS)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_guard(cmd_pretrain))
    s = sub.add_parser("promote", help="gate a trained run and promote it if it wins")
    s.add_argument("run_id", nargs="?", help="default: the newest succeeded run")
    s.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded as forced)")
    s.set_defaults(func=_guard(cmd_promote))
    s = sub.add_parser("rollback", help="point models/current back at the parent release")
    s.set_defaults(func=_guard(cmd_rollback))
    s = sub.add_parser("jobs", help="training jobs, runs, logs, cancel")
    s.add_argument("--logs", metavar="RUN_ID")
    s.add_argument("--cancel", metavar="RUN_ID")
    s.add_argument("--runs", action="store_true", help="list runs and releases")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_guard(cmd_jobs))
    db = sub.add_parser("db", help="the event store: retention")
    dsub = db.add_subparsers(dest="db_command", required=True)
    s = dsub.add_parser("compact", help="delete query events past AGRO_EVENTS_RETENTION_DAYS without feedback and "
                                        "incomplete model folders; reclaim the space")
    s.add_argument("--days", type=float, help="retention in days (default AGRO_EVENTS_RETENTION_DAYS, 90)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_guard(cmd_db_compact))
