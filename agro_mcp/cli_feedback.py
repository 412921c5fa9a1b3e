"""``agro`` commands for the event and feedback store: ``feedback``, ``import-logs``, ``export``, ``golden add``,
``db compact``.

Thin faces over ``training``: the same functions the ``submit_feedback`` tool runs. Errors the user can fix exit
with status 2 and a message that says how.
"""

from __future__ import annotations

import json
from pathlib import Path

from agro_mcp.cli_common import CommandFailed, add_command, echo, guard, make_engine

__all__ = ["register"]

SIGNALS = ["click", "used", "thumbs_up", "thumbs_down", "rating", "correct_location"]


def cmd_feedback(args, settings) -> int:
    from training.events.feedback import submit_feedback

    eng = make_engine(settings)
    try:
        rec = submit_feedback(eng.store, args.event_id, args.signal, doc_id=args.doc_id, rating=args.rating,
                              path=args.path, start_line=args.start_line, end_line=args.end_line, note=args.note,
                              corpus_root=eng.corpus_root, indexed_files=eng.indexed_files,
                              source="person")
    finally:
        eng.close()
    state = "recorded" if rec.created else "already recorded"
    echo(f"feedback {rec.feedback_id} {state}: {rec.signal} on event {rec.event_id}"
         + (f" ({rec.doc_id})" if rec.doc_id else ""))
    return 0


def cmd_import_logs(args, settings) -> int:
    from training.events.logs_io import import_logs

    eng = make_engine(settings)
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
    eng = make_engine(settings)
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
            raise CommandFailed(f"--span {exc}") from None
        spans.append({"path": p, "start_line": a, "end_line": b})
    row = {"q": args.q, "repo": args.repo, "expect_paths": args.path or [], "expect_spans": spans}
    idx = add_golden(Path(args.file), row)
    echo(f"added question #{idx} to {args.file}")
    return 0


def cmd_db_compact(args, settings) -> int:
    """Apply the retention rules now and give the space back to the file system."""
    from training.releases.retention import compact

    days = settings.server.events_retention_days if args.days is None else args.days
    eng = make_engine(settings)
    try:
        before = _db_bytes(settings.server.home)
        res = compact(eng.store, settings.server.home, days, vacuum=True)
        after = _db_bytes(settings.server.home)
    finally:
        eng.close()
    if args.json:
        echo(json.dumps({**res, "retention_days": days, "db_bytes_before": before, "db_bytes_after": after},
                        indent=2, default=str))
        return 0
    echo(f"removed {res['events']} query events older than {days:g} days without feedback, "
         f"{res['chunk_texts']} unreferenced chunk texts, {len(res['folders'])} incomplete model folders"
         + (f"; agro.db {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB" if before else ""))
    return 0


def _db_bytes(home) -> int:
    return sum(p.stat().st_size for p in (Path(home) / "agro.db", Path(home) / "agro.db-wal") if p.is_file())


def register(sub) -> None:
    """Add ``feedback``, ``import-logs``, ``export``, ``golden`` and ``db`` to ``agro``'s subcommands."""
    s = add_command(
        sub, "feedback", "record feedback on a search result (the same as the submit_feedback tool)",
        "agro search \"token validation\" --json        # note the event_id and a doc_id\n"
        "agro feedback 9029d1c9... used --doc-id src/auth/tokens.py:7-15\n"
        "agro feedback 9029d1c9... correct_location --path src/auth/jwt.py --start-line 40 --end-line 58",
        description="Record feedback on a search's results. Positives (used, click, thumbs_up, rating >= 4,\n"
                    "correct_location) and negatives (thumbs_down, rating <= 2) train the next reranker.")
    s.add_argument("event_id", help="the search's event_id (agro search --json, or the rag_search response)")
    s.add_argument("signal", choices=SIGNALS, help="what happened: " + ", ".join(SIGNALS))
    s.add_argument("--doc-id", metavar="PATH:START-END", help="the hit it is about (one of the event's results)")
    s.add_argument("--rating", type=int, help="1..5, with signal rating")
    s.add_argument("--path", help="correct_location: the file that holds the answer (relative to the corpus root)")
    s.add_argument("--start-line", type=int, help="correct_location: first line of the answer")
    s.add_argument("--end-line", type=int, help="correct_location: last line of the answer")
    s.add_argument("--note", help="free text kept with the feedback")
    s.set_defaults(func=guard(cmd_feedback))

    s = add_command(
        sub, "import-logs", "import a queries.jsonl log in the seeds' format (type: query / type: feedback lines)",
        "agro import-logs data/logs/queries.jsonl --corpus myrepo",
        description="Import a queries.jsonl log in the seeds' format. Malformed lines are skipped and counted.")
    s.add_argument("file", help="the JSONL log to import")
    s.add_argument("--corpus", default="default", help="corpus for events that name none (default: 'default')")
    s.set_defaults(func=guard(cmd_import_logs))

    s = add_command(
        sub, "export", "write queries.jsonl and triplets.jsonl (the seeds' formats)",
        "agro export --corpus myrepo --out /tmp/agro-export")
    s.add_argument("--out", metavar="DIR", help="folder to write into (default: $AGRO_HOME/exports)")
    s.add_argument("--corpus", help="only this corpus (default: every corpus)")
    s.set_defaults(func=guard(cmd_export))

    g = add_command(sub, "golden", "edit golden.json, the questions every evaluation scores",
                    'agro golden add --q "where is the token validated?" --repo myrepo --path src/auth/tokens.py')
    gsub = g.add_subparsers(dest="golden_command", required=True, metavar="ACTION")
    s = add_command(
        gsub, "add", "append one question to golden.json (validated, written atomically)",
        'agro golden add --q "where is the token validated?" --repo myrepo \\\n'
        "    --path src/auth/tokens.py --span src/auth/tokens.py:7-15")
    s.add_argument("--q", required=True, help="the question")
    s.add_argument("--repo", required=True, help="the corpus id it is about")
    s.add_argument("--path", action="append", help="a file that answers it, matched by path suffix (repeatable)")
    s.add_argument("--span", action="append", metavar="PATH:START-END",
                   help="lines that answer it (repeatable)")
    s.add_argument("--file", default="golden.json", help="the golden file (default: ./golden.json)")
    s.set_defaults(func=guard(cmd_golden_add))

    db = add_command(sub, "db", "the event store: retention", "agro db compact --days 30")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    s = add_command(
        dsub, "compact", "delete query events past AGRO_EVENTS_RETENTION_DAYS without feedback and incomplete model "
        "folders; reclaim the space", "agro db compact --days 30")
    s.add_argument("--days", type=float, help="retention in days (default: AGRO_EVENTS_RETENTION_DAYS, 90)")
    s.add_argument("--json", action="store_true", help="print what was removed as JSON")
    s.set_defaults(func=guard(cmd_db_compact))
