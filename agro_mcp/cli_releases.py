"""``agro`` commands for releases and jobs: ``promote``, ``rollback``, ``jobs``.

Promotion goes through the same gate as ``reranker_admin promote``: a candidate is promoted only on a real gain
over the current release and over retrieval alone. Running servers pick up a new ``models/current`` by hot-reload.
"""

from __future__ import annotations

import json

from agro_mcp.cli_common import add_command, echo, guard, make_engine, run_here

__all__ = ["register"]


def _dump(obj) -> None:
    echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def cmd_promote(args, settings) -> int:
    from training.releases.admin import _latest_trained
    from training.loop import promote_step

    home = settings.server.home
    rid = args.run_id or _latest_trained(home / "models")
    run_id, res = run_here(settings, "promote", lambda ws, ctx: promote_step(ws, ctx, rid, force=args.force))
    echo(("PROMOTED as " + str(res["release"])) if res["decision"] == "promoted" else "REFUSED")
    for r in res.get("reasons", []):
        echo(f"  {r}")
    return 0 if res["decision"] == "promoted" else 1


def cmd_rollback(args, settings) -> int:
    from training.releases.promote import rollback

    eng = make_engine(settings)
    try:
        res = rollback(settings.server.home, eng.store, registry=eng.releases)
    finally:
        eng.close()
    echo(f"rolled back: current -> {res['release']} (was {res['from']}); running servers reload it on their next check")
    return 0


def cmd_jobs(args, settings) -> int:
    from training.releases.admin import run_admin_action

    eng = make_engine(settings)
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


# ------------------------------------------------------------------------------------------ parser


def register(sub) -> None:
    """Add ``promote``, ``rollback`` and ``jobs`` to ``agro``'s subcommands."""
    s = add_command(sub, "promote", "gate a trained run and promote it if it wins (exit 0 promoted, 1 refused)",
                    "agro promote                 # the newest trained run\nagro promote 20261205-1203-ab12")
    s.add_argument("run_id", nargs="?", help="the training run to gate (default: the newest succeeded run)")
    s.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded as forced)")
    s.set_defaults(func=guard(cmd_promote))
    s = add_command(sub, "rollback", "point models/current back at the previous release (servers reload it)",
                    "agro rollback")
    s.set_defaults(func=guard(cmd_rollback))
    s = add_command(sub, "jobs", "list training jobs; show a run's log; cancel a run; list runs and releases",
                    "agro jobs\nagro jobs --logs 20261205-1203-ab12\nagro jobs --cancel 20261205-1203-ab12")
    s.add_argument("--logs", metavar="RUN_ID", help="print this run's log lines")
    s.add_argument("--cancel", metavar="RUN_ID", help="ask this running job to stop")
    s.add_argument("--runs", action="store_true", help="list training runs and releases instead of jobs")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=guard(cmd_jobs))
