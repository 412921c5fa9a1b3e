"""``agro``: the command line. Every command calls the same Engine functions as the MCP tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from agro_mcp.config import ConfigError, Settings, load_settings
from agro_mcp.logging_setup import configure_logging
from retrieval.errors import AgroUserError

logger = logging.getLogger("agro")


def echo(*parts, **kw) -> None:
    """The one way commands write results to stdout (never used by ``agro serve``, whose stdout is MCP)."""
    print(*parts, **kw)


class _Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{stage:>6} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _engine(settings: Settings):
    from agro_mcp.engine import Engine

    return Engine(settings)


def _print_hits(resp) -> None:
    print(f"corpus {resp.corpus}  generation {resp.index_generation}  event {resp.event_id}")
    rr = "reranked by " + str(resp.reranker_model) if resp.reranking_used else f"not reranked ({resp.reranker_fallback_reason})"
    print(f"{len(resp.results)} hits, {rr}, {resp.timings_ms.get('total', 0):.0f} ms"
          + (f", {resp.index_stale_files} stale file(s)" if resp.index_stale_files else ""))
    for i, h in enumerate(resp.results, 1):
        sym = f"  {h.symbol}" if h.symbol else ""
        print(f"{i:>2}. {h.doc_id}{sym}  score={h.score:.4f}")
        first = next((ln.strip() for ln in h.text.splitlines() if ln.strip()), "")
        print(f"      {first[:110]}")
    if resp.note:
        print(f"note: {resp.note}")


# -- commands -----------------------------------------------------------------------------------------------
def cmd_index(args, settings: Settings) -> int:
    eng = _engine(settings)
    try:
        if args.watch:
            return _watch(eng, args)
        summary = eng.index(args.path, args.corpus, full=args.full, progress=_Progress())
    finally:
        eng.close()
    _print_summary(summary, args.json)
    return 0


def _print_summary(summary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    state = "published generation" if summary.published else "unchanged; still generation"
    print(f"corpus {summary.corpus}: {state} {summary.generation}")
    print(f"  {summary.files} files, {summary.chunks} chunks; added {summary.added}, changed {summary.changed}, "
          f"deleted {summary.deleted}, unchanged {summary.unchanged}; embedded {summary.embedded} chunks "
          f"in {summary.elapsed_sec:.1f}s")
    if summary.skipped:
        print("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.skipped.items())))
    if summary.non_utf8_files:
        print(f"  {summary.non_utf8_files} non-UTF-8 file(s) read with replacement characters")


def _watch(eng, args) -> int:
    """Re-index whenever files change (polling; no extra dependency), until Ctrl-C."""
    summary = eng.index(args.path, args.corpus, full=args.full, progress=_Progress())
    _print_summary(summary, False)
    corpus = summary.corpus
    print(f"watching {summary.root} every {args.interval}s (Ctrl-C to stop)", file=sys.stderr)
    try:
        while True:
            time.sleep(args.interval)
            gen = eng.generation(corpus)
            if eng.stale_count(gen, max_age=0)["total"]:
                _print_summary(eng.index(summary.root, corpus), False)
    except KeyboardInterrupt:
        return 0


def cmd_search(args, settings: Settings) -> int:
    eng = _engine(settings)
    try:
        eng.start_background()
        resp = eng.search(args.query, args.corpus, args.k, False if args.no_rerank else None, args.path_glob, args.language)
    finally:
        eng.close()
    if args.json:
        print(resp.model_dump_json(indent=2))
    else:
        _print_hits(resp)
    return 0


def cmd_status(args, settings: Settings) -> int:
    eng = _engine(settings)
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
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"AGRO_HOME {out['home']}")
    if not out["corpora"]:
        print("no corpus indexed yet: agro index /path/to/repo")
    for st in out["corpora"]:
        stale = st["stale_files"]
        print(f"{st['corpus']}: {st['files']} files, {st['chunks']} chunks, generation {st['generation']} "
              f"({st['last_indexed']}), root {st['root']}")
        print(f"  stale: {stale['total']} (added {stale['added']}, changed {stale['changed']}, deleted {stale['deleted']})")
    if "reranker" in out:
        print("reranker: " + json.dumps(out["reranker"], default=str))
    return 0


def cmd_serve(args, settings: Settings) -> int:
    from agro_mcp.engine import Engine
    from agro_mcp.server import create_server

    # Open the storage before the MCP handshake: an unreachable database (or an unusable data home) stops here
    # with its reason, never as a half-started server that fails every call.
    engine = Engine(settings)
    engine.indexes  # noqa: B018 - opens the index backend (pool + migrations for postgres)
    engine.store  # noqa: B018
    server = create_server(settings, engine)
    logger.info("agro-mcp serving over stdio (AGRO_HOME=%s, backend %s)", settings.server.home, settings.server.backend)
    try:
        server.run("stdio")
    finally:
        engine.close()
    return 0


def cmd_demo(args, settings: Settings) -> int:
    """The main job: index a repository, then ask the MCP server (over stdio) and print the hits."""
    import anyio

    path = Path(args.path).resolve()
    eng = _engine(settings)
    try:
        summary = eng.index(path, args.corpus, progress=_Progress())
    finally:
        eng.close()
    _print_summary(summary, False)

    async def ask() -> None:
        from mcp import Client, StdioServerParameters

        env = dict(os.environ)
        env["AGRO_HOME"] = str(settings.server.home)
        params = StdioServerParameters(command=sys.executable, args=["-m", "agro_mcp", "serve"], env=env)
        async with Client(params) as client:
            tools = await client.list_tools()
            print(f"MCP server over stdio offers: {', '.join(t.name for t in tools.tools)}")
            result = await client.call_tool("rag_search", {"query": args.query, "corpus": summary.corpus, "k": args.k})
            if result.is_error:
                raise SystemExit("rag_search failed: " + " ".join(getattr(c, "text", "") for c in result.content))
            from agro_mcp.schemas import SearchResponse

            print(f"\nrag_search {args.query!r}")
            _print_hits(SearchResponse.model_validate(result.structured_content))

    anyio.run(ask)
    return 0


# -- parser ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agro", description="Local-first code search for AI assistants (MCP).")
    p.add_argument("--home", help="data home (default: $AGRO_HOME or ~/.agro)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: $AGRO_LOG_LEVEL or INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="index a repository (incremental)")
    s.add_argument("path", nargs="?", default=".")
    s.add_argument("--corpus", help="corpus id (default: the folder name)")
    s.add_argument("--full", action="store_true", help="rebuild from scratch")
    s.add_argument("--watch", action="store_true", help="keep the index fresh until Ctrl-C")
    s.add_argument("--interval", type=float, default=2.0, help="--watch polling interval in seconds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search a corpus")
    s.add_argument("query")
    s.add_argument("--corpus")
    s.add_argument("-k", "--k", type=int, default=10)
    s.add_argument("--no-rerank", action="store_true")
    s.add_argument("--path-glob")
    s.add_argument("--language")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("status", help="indexes (and reranker) status")
    s.add_argument("--corpus")
    s.add_argument("--reranker", action="store_true", help="also load and describe the reranker")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("serve", help="run the MCP server over stdio")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="index a repository and search it through the MCP server over stdio")
    s.add_argument("path", nargs="?", default=".")
    s.add_argument("--corpus")
    s.add_argument("--query", default="where are search results fused with reciprocal rank fusion")
    s.add_argument("-k", "--k", type=int, default=5)
    s.set_defaults(func=cmd_demo)

    _extend_parser(sub)
    return p


def _extend_parser(sub) -> None:
    """Commands of the learning loop (feedback, evaluation, training) register here."""
    try:
        from agro_mcp import cli_training
    except ImportError:  # pragma: no cover - only while those modules are absent
        return
    cli_training.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.home:
        env["AGRO_HOME"] = args.home
    if args.log_level:
        env["AGRO_LOG_LEVEL"] = args.log_level
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"agro: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    if settings.retrieval.embed_model == "auto" or Path(settings.retrieval.embed_model).expanduser().exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local weights: never ask a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args, settings) or 0
    except AgroUserError as exc:
        print(f"agro: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
