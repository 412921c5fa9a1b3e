"""``agro`` commands that build and search indexes: ``index``, ``search``, ``status``, ``demo``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from agro_mcp.cli_common import Progress, add_command, echo, make_engine
from agro_mcp.config import Settings

__all__ = ["register"]

DEMO_QUERY = "where are search results fused with reciprocal rank fusion"


def print_hits(resp) -> None:
    """A search response as a short numbered list: doc id, symbol, score and the hit's first line."""
    echo(f"corpus {resp.corpus}  generation {resp.index_generation}  event {resp.event_id}")
    rr = ("reranked by " + str(resp.reranker_model) if resp.reranking_used
          else f"not reranked ({resp.reranker_fallback_reason})")
    echo(f"{len(resp.results)} hits, {rr}, {resp.timings_ms.get('total', 0):.0f} ms"
         + (f", {resp.index_stale_files} stale file(s)" if resp.index_stale_files else ""))
    for i, h in enumerate(resp.results, 1):
        sym = f"  {h.symbol}" if h.symbol else ""
        echo(f"{i:>2}. {h.doc_id}{sym}  score={h.score:.4f}")
        first = next((ln.strip() for ln in h.text.splitlines() if ln.strip()), "")
        echo(f"      {first[:110]}")
    if resp.note:
        echo(f"note: {resp.note}")


def print_summary(summary, as_json: bool = False) -> None:
    """An index build's summary: what was published and what changed."""
    if as_json:
        echo(json.dumps(summary.to_dict(), indent=2))
        return
    state = "published generation" if summary.published else "unchanged; still generation"
    echo(f"corpus {summary.corpus}: {state} {summary.generation}")
    echo(f"  {summary.files} files, {summary.chunks} chunks; added {summary.added}, changed {summary.changed}, "
         f"deleted {summary.deleted}, unchanged {summary.unchanged}; embedded {summary.embedded} chunks "
         f"in {summary.elapsed_sec:.1f}s")
    if summary.skipped:
        echo("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.skipped.items())))
    if summary.non_utf8_files:
        echo(f"  {summary.non_utf8_files} non-UTF-8 file(s) read with replacement characters")
    if summary.secrets:
        echo("  secrets found (never indexed): " + ", ".join(f"{k} {v}" for k, v in sorted(summary.secrets.items()))
             + (f"; {summary.redacted_files} file(s) indexed with those lines redacted" if summary.redacted_files else ""))


# ------------------------------------------------------------------------------------------ commands


def cmd_index(args, settings: Settings) -> int:
    eng = make_engine(settings)
    try:
        if args.watch:
            return _watch(eng, args)
        summary = eng.index(args.path, args.corpus, full=args.full, progress=Progress(), root_change=args.root_change)
    finally:
        eng.close()
    print_summary(summary, args.json)
    return 0


def _watch(eng, args) -> int:
    """Re-index whenever files change (polling; no extra dependency), until Ctrl-C."""
    summary = eng.index(args.path, args.corpus, full=args.full, progress=Progress(), root_change=args.root_change)
    print_summary(summary)
    corpus = summary.corpus
    print(f"watching {summary.root} every {args.interval}s (Ctrl-C to stop)", file=sys.stderr)
    try:
        while True:
            time.sleep(args.interval)
            gen = eng.generation(corpus)
            if eng.stale_count(gen, max_age=0)["total"]:
                print_summary(eng.index(summary.root, corpus))
    except KeyboardInterrupt:
        return 0


def cmd_search(args, settings: Settings) -> int:
    from agro_mcp.cli_daemon import daemon_search

    resp = daemon_search(args, settings)  # warm, when a daemon runs
    if resp is None:
        eng = make_engine(settings)
        try:
            eng.start_background()
            resp = eng.search(args.query, args.corpus, args.k, False if args.no_rerank else None, args.path_glob,
                              args.language)
        finally:
            eng.close()
    if args.json:
        echo(resp.model_dump_json(indent=2))
    else:
        print_hits(resp)
    return 0


def cmd_status(args, settings: Settings) -> int:
    from agro_mcp.cli_daemon import daemon_status

    out = daemon_status(args, settings)  # warm, when a daemon runs
    if out is None:
        eng = make_engine(settings)
        try:
            corpora = [args.corpus] if args.corpus else eng.corpora()
            out = {"home": str(settings.server.home), "corpora": [eng.status(c) for c in corpora]}
            if args.reranker:
                eng.reranker.start()
                eng.reranker.get(wait=60)
                out["reranker"] = eng.reranker.info()
        finally:
            eng.close()
    if args.json:
        echo(json.dumps(out, indent=2, default=str))
        return 0
    echo(f"AGRO_HOME {out['home']}")
    if not out["corpora"]:
        echo("no corpus indexed yet: agro index /path/to/repo")
    for st in out["corpora"]:
        stale = st["stale_files"]
        echo(f"{st['corpus']}: {st['files']} files, {st['chunks']} chunks, generation {st['generation']} "
             f"({st['last_indexed']}), root {st['root']}")
        echo(f"  stale: {stale['total']} (added {stale['added']}, changed {stale['changed']}, "
             f"deleted {stale['deleted']})")
    if "reranker" in out:
        echo("reranker: " + json.dumps(out["reranker"], default=str))
    return 0


def cmd_demo(args, settings: Settings) -> int:
    """The main job: index a repository, then ask the MCP server (over stdio) and print the hits."""
    import anyio

    path = Path(args.path).resolve()
    eng = make_engine(settings)
    try:
        summary = eng.index(path, args.corpus, progress=Progress())
    finally:
        eng.close()
    print_summary(summary)

    async def ask() -> None:
        from mcp import Client, StdioServerParameters

        env = dict(os.environ)
        env["AGRO_HOME"] = str(settings.server.home)
        params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)
        async with Client(params) as client:
            tools = await client.list_tools()
            echo(f"MCP server over stdio offers: {', '.join(t.name for t in tools.tools)}")
            result = await client.call_tool("rag_search", {"query": args.query, "corpus": summary.corpus, "k": args.k})
            if result.is_error:
                raise SystemExit("rag_search failed: " + " ".join(getattr(c, "text", "") for c in result.content))
            from agro_mcp.schemas import SearchResponse

            echo(f"\nrag_search {args.query!r}")
            print_hits(SearchResponse.model_validate(result.structured_content))

    anyio.run(ask)
    return 0


# ------------------------------------------------------------------------------------------ parser


def register(sub) -> None:
    """Add ``index``, ``search``, ``status`` and ``demo`` to ``agro``'s subcommands."""
    s = add_command(
        sub, "index", "index a repository (incremental)",
        "agro index ~/src/myrepo --corpus myrepo",
        description="Index a repository. Only added, changed and deleted files are re-chunked and re-embedded; "
                    "each build is\na new generation, published atomically (a search sees the old or the new one).")
    s.add_argument("path", nargs="?", default=".", help="the repository folder (default: the current folder)")
    s.add_argument("--corpus", help="corpus id to index into (default: the folder's name)")
    s.add_argument("--full", action="store_true", help="rebuild from scratch instead of reusing unchanged files")
    s.add_argument("--root-change", action="store_true",
                   help="move an indexed corpus to this folder (a corpus's root is otherwise fixed)")
    s.add_argument("--watch", action="store_true", help="keep the index fresh, re-indexing on changes until Ctrl-C")
    s.add_argument("--interval", type=float, default=2.0, metavar="SEC",
                   help="how often --watch looks for changed files (default: 2 seconds)")
    s.add_argument("--json", action="store_true", help="print the build summary as JSON")
    s.set_defaults(func=cmd_index)

    s = add_command(
        sub, "search", "search a corpus (the same search as the rag_search tool)",
        'agro search "where is the OAuth token validated?" --corpus myrepo -k 5')
    s.add_argument("query", help="what to look for, in words or code")
    s.add_argument("--corpus", help="corpus id (default: AGRO_DEFAULT_CORPUS, else the only indexed corpus)")
    s.add_argument("-k", "--k", type=int, default=10, help="number of hits, 1..50 (default: 10)")
    s.add_argument("--no-rerank", action="store_true", help="return the fused retrieval order, skip the reranker")
    s.add_argument("--path-glob", metavar="GLOB", help="only hits whose path matches, e.g. 'src/**/*.py'")
    s.add_argument("--language", help="only hits in this language, e.g. python")
    s.add_argument("--json", action="store_true", help="print the full response as JSON (with the event_id)")
    s.set_defaults(func=cmd_search)

    s = add_command(
        sub, "status", "show the indexes (files, chunks, generation, stale files) and optionally the reranker",
        "agro status --reranker")
    s.add_argument("--corpus", help="only this corpus (default: every indexed corpus)")
    s.add_argument("--reranker", action="store_true",
                   help="also load the serving reranker and describe it (model, release, blend weights)")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_status)

    s = add_command(
        sub, "demo", "index a repository and search it through the MCP server over stdio",
        'agro demo ~/src/myrepo --query "how are retries backed off?"',
        description="Index a repository, start `agro serve` as an MCP client would, and print one rag_search.\n"
                    "What scripts/run.sh runs.")
    s.add_argument("path", nargs="?", default=".", help="the repository folder (default: the current folder)")
    s.add_argument("--corpus", help="corpus id (default: the folder's name)")
    s.add_argument("--query", default=DEMO_QUERY, help=f"the question to ask (default: {DEMO_QUERY!r})")
    s.add_argument("-k", "--k", type=int, default=5, help="number of hits (default: 5)")
    s.set_defaults(func=cmd_demo)
