"""The MCP server: tool schemas and thin bodies over ``Engine``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import anyio
from mcp.server import MCPServer
from mcp.server.elicitation import ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Resolve
from mcp_types import InputRequiredResult, ToolAnnotations
from pydantic import Field

from agro_mcp.answer import rag_answer_call
from agro_mcp.config import Settings
from agro_mcp.confirm import Confirm, admin_confirmation, index_confirmation, require_confirmed
from agro_mcp.engine import MAX_K, Engine, UserError
from retrieval.errors import AgroUserError
from agro_mcp.guard import GuardedMCPServer
from agro_mcp.schemas import (
    AdminResult,
    AnswerResponse,
    FeedbackResponse,
    IndexResponse,
    SearchResponse,
    admin_output_schema,
    admin_result,
)
from retrieval.pgdb import DatabaseError

__all__ = ["create_server"]

logger = logging.getLogger(__name__)

INSTRUCTIONS = """agro-mcp searches the user's indexed repositories and learns from your feedback.
1. Call rag_search with a natural-language question or identifiers; read the hits (path:start-end).
2. Then call submit_feedback with the event_id from rag_search:
   - 'used' for each hit you relied on in your answer (the most useful signal after correct_location),
   - 'correct_location' with path/start_line/end_line when you found the real answer elsewhere (even if it was
     not in the results),
   - 'thumbs_down' for a top hit that was clearly irrelevant,
   - 'click' when you opened/read a hit, 'thumbs_up' / 'rating' (1-5) when the user judged the results.
Feedback trains the reranker, so the right code comes first next time."""


# Bounds of the string arguments: generous for real use, never a megabyte stored or echoed.
MAX_QUERY = 100_000  # the engine's own limit (AGRO_RETRIEVAL_MAX_QUERY_CHARS, 20,000) answers with its fix first
MAX_ID = 200
MAX_PATH = 4096
MAX_GLOB = 1000

# Honest hints: search and answer change nothing the user sees (they log a query event); rag_answer may send the
# retrieved code to the configured LLM endpoint; rag_index and reranker_admin change what every later search returns.
READ_ONLY = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True}
CorpusArg = Annotated[
    str | None, Field(max_length=MAX_ID, description="Corpus id; default: the only or configured corpus")
]


def _user_error(exc: Exception) -> ToolError:
    return ToolError(str(exc))


def create_server(settings: Settings, engine: Engine | None = None) -> MCPServer:
    """Build the MCP server. Models load in the background once the lifespan starts."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[Engine]:
        eng = engine or Engine(settings)
        eng.start_background(warm=True)
        try:
            yield eng
        finally:
            if engine is None:
                eng.close()

    server = GuardedMCPServer("agro-mcp", instructions=INSTRUCTIONS, lifespan=lifespan, version="0.1.0")

    def _engine(ctx: Context) -> Engine:
        return ctx.request_context.lifespan_context

    @server.tool(title="Search code", annotations=ToolAnnotations(**READ_ONLY, openWorldHint=False))
    def rag_search(
        ctx: Context,
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY,
                                    description="Question or identifiers; long text (an issue) is fine")],
        corpus: CorpusArg = None,
        k: Annotated[int, Field(ge=1, le=MAX_K, description="Number of hits")] = 10,
        rerank: Annotated[bool | None, Field(description="false skips the cross-encoder for this call")] = None,
        path_glob: Annotated[str | None, Field(max_length=MAX_GLOB,
                                               description="Only paths matching this glob, e.g. 'src/**/*.py'")] = None,
        language: Annotated[str | None, Field(max_length=64, description="Only this language, e.g. 'python'")] = None,
    ) -> SearchResponse:
        """Search the indexed code for where something is implemented; returns ranked chunks as path:start-end.

        Use it before answering any question about the user's codebase. Afterwards call submit_feedback with the
        returned event_id: 'used' for each hit you relied on, 'correct_location' (path, start_line, end_line) when
        the real answer was elsewhere, 'thumbs_down' for an irrelevant top hit. This is how ranking improves.
        """
        try:
            return _engine(ctx).search(query, corpus, k, rerank, path_glob, language)
        except AgroUserError as exc:
            raise _user_error(exc) from None

    @server.tool(title="Answer from code", annotations=ToolAnnotations(**READ_ONLY, openWorldHint=True))
    async def rag_answer(
        ctx: Context,
        question: Annotated[str, Field(min_length=1, max_length=MAX_QUERY,
                                       description="The question about the indexed code")],
        corpus: CorpusArg = None,
        k: Annotated[int, Field(ge=1, le=MAX_K, description="Hits to retrieve for the context")] = 8,
    ) -> AnswerResponse | InputRequiredResult:
        """Answer a question about the indexed code with path:start-end citations, grounded in retrieved code only.

        Use it when you want an answer rather than a list of hits. When no answer model is available, `answer` is
        null, `mode` is 'context' and `context` holds the retrieved code: answer from it yourself. Citations outside
        the retrieved code are dropped and listed in `dropped_citations`. Send submit_feedback with the event_id
        ('used' per citation you relied on, 'correct_location' when the answer was elsewhere).
        """
        try:
            return await rag_answer_call(_engine(ctx), ctx, question, corpus, k)
        except AgroUserError as exc:
            raise _user_error(exc) from None

    @server.tool(
        title="Index a repository",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True,
                                    openWorldHint=False),
    )
    async def rag_index(
        ctx: Context,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(index_confirmation)],
        action: Annotated[Literal["index", "refresh", "status", "list"], Field(description="What to do")] = "status",
        path: Annotated[str | None, Field(max_length=MAX_PATH, description="Repository folder (action 'index')")] = None,
        corpus: Annotated[str | None, Field(max_length=MAX_ID, description="Corpus id; default: the folder name")] = None,
        full: Annotated[bool, Field(description="Rebuild from scratch instead of incrementally")] = False,
    ) -> IndexResponse:
        """Build, refresh or inspect a code index: 'index' a folder, 'refresh' changed files, 'status', 'list'.

        Use 'status' when rag_search reports index_stale_files > 0 or results look outdated, then 'refresh'.
        Indexing a folder that is not yet a corpus asks the user first (or names the CLI command to run).
        """
        require_confirmed(confirmation)
        eng = _engine(ctx)

        def progress(stage: str, done: int, total: int) -> None:
            try:
                anyio.from_thread.run(ctx.report_progress, done, total, f"{stage} {done}/{total}")
            except Exception:  # progress is best-effort; a client without a token must not fail the build
                logger.debug("progress notification not delivered", exc_info=True)

        try:
            if action == "list":
                data = {"corpora": [_safe_status(eng, c) for c in eng.corpora()]}
                return IndexResponse(action=action, data=data)
            if action == "status":
                return IndexResponse(action=action, corpus=corpus, data=eng.status(corpus))
            if action == "index":
                if not path:
                    raise UserError("action 'index' needs path=<repository folder>")
                summary = await anyio.to_thread.run_sync(lambda: eng.index(path, corpus, full, progress))
            else:
                summary = await anyio.to_thread.run_sync(lambda: eng.refresh(corpus, progress))
            return IndexResponse(action=action, corpus=summary.corpus, data=summary.to_dict())
        except AgroUserError as exc:
            raise _user_error(exc) from None

    @server.tool(
        title="Send search feedback",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                                    openWorldHint=False),
    )
    def submit_feedback(
        ctx: Context,
        event_id: Annotated[str, Field(min_length=1, max_length=MAX_ID,
                                       description="event_id returned by rag_search / rag_answer")],
        signal: Annotated[
            Literal["click", "used", "thumbs_up", "thumbs_down", "rating", "correct_location"],
            Field(description="What happened"),
        ],
        doc_id: Annotated[str | None, Field(max_length=MAX_PATH + 40,
                                            description="The hit (path:start-end) the signal is about")] = None,
        rating: Annotated[int | None, Field(ge=1, le=5, description="1..5, with signal='rating'")] = None,
        path: Annotated[str | None, Field(max_length=MAX_PATH,
                                          description="correct_location: file path relative to the repo")] = None,
        start_line: Annotated[int | None, Field(ge=1, le=10_000_000)] = None,
        end_line: Annotated[int | None, Field(ge=1, le=10_000_000)] = None,
        note: Annotated[str | None, Field(max_length=2000)] = None,
    ) -> FeedbackResponse:
        """Tell agro-mcp which results helped, so its reranker learns. Call it after every rag_search you act on.

        Signals: 'used' = you relied on this hit (doc_id); 'correct_location' = the real answer is at
        path:start_line-end_line (even if not among the results; the strongest signal); 'thumbs_down' = this hit
        was irrelevant; 'click' = you opened it; 'thumbs_up' / 'rating' (1-5) = the user's judgement.
        """
        from training.events.feedback import submit_feedback as submit

        eng = _engine(ctx)
        try:
            rec = submit(
                eng.store, event_id, signal, doc_id=doc_id, rating=rating, path=path, start_line=start_line,
                end_line=end_line, note=note, corpus_root=eng.corpus_root, indexed_files=eng.indexed_files,
            )
        except AgroUserError as exc:
            raise _user_error(exc) from None
        return FeedbackResponse(
            feedback_id=rec.feedback_id, event_id=rec.event_id, signal=rec.signal, created=rec.created,
            message="recorded" if rec.created else "already recorded (identical feedback)",
        )

    @server.tool(
        title="Manage the learning reranker",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False,
                                    openWorldHint=False),
    )
    async def reranker_admin(
        ctx: Context,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(admin_confirmation)],
        action: Annotated[
            Literal["info", "reload", "status", "mine", "train", "evaluate", "promote", "rollback", "runs",
                    "eval_latest", "logs", "cancel", "wait"],
            Field(description="Admin action"),
        ] = "info",
        run_id: Annotated[
            str | None, Field(max_length=MAX_ID, description="Job / training run id (status, logs, cancel, promote, wait)")
        ] = None,
        dataset: Annotated[
            str | None,
            Field(max_length=MAX_ID, description="evaluate/mine/train: 'golden' (the corpus's golden file), 'heldout', "
                                                 "or the name of a dataset in AGRO_HOME/datasets/"),
        ] = None,
        force: Annotated[
            bool, Field(description="promote: even if the gate refuses (asks the user first; recorded as forced)")
        ] = False,
        wait: Annotated[
            bool,
            Field(description="mine/train/evaluate/promote: keep the call open until the job ends (or "
                              "AGRO_ADMIN_WAIT_TIMEOUT_SEC), sending progress notifications when asked for"),
        ] = False,
    ) -> AdminResult:
        """Inspect and manage the learning reranker: 'info', 'reload', and the training loop actions.

        'info' shows the serving model; 'reload' checks models/current now; 'train' / 'evaluate' / 'promote' start
        background jobs and return a run_id; 'status' / 'logs' / 'runs' report on them; 'rollback' restores the
        previous release. With wait=true a job-starting action (or action 'wait' with a run_id) returns only when
        the job has ended, with its final status, and reports the job's progress meanwhile; if the job outlasts
        the server's wait timeout, its current status comes back with a note that it is still running.
        'rollback' and a forced 'promote' ask the user first (or name the CLI command to run).
        """
        require_confirmed(confirmation)
        eng = _engine(ctx)
        read_only = ("info", "status", "runs", "eval_latest", "logs", "wait")
        if action not in read_only and not eng.settings.server.admin_enabled:
            raise ToolError("reranker_admin actions that change state are disabled (AGRO_ADMIN_ENABLED=0).")
        from training.releases.admin import JOB_ACTIONS, AdminError, wait_for_job

        async def notify(progress: float, message: str | None) -> None:
            try:
                await ctx.report_progress(progress, 1.0, message)
            except Exception:  # progress is best-effort; a vanished client must not fail the wait
                logger.debug("progress notification not delivered", exc_info=True)

        try:
            if wait and action not in JOB_ACTIONS + ("wait",):
                raise AdminError(f"wait=true applies to {', '.join(JOB_ACTIONS)} (or use action 'wait' with a "
                                 f"run_id), not to {action!r}")
            if force and action != "promote":
                raise AdminError(f"force=true applies to action 'promote' only, not to {action!r}")
            if action == "wait":
                rid = run_id
            else:
                out = await anyio.to_thread.run_sync(
                    lambda: eng.admin(action, run_id=run_id, dataset=dataset, force=force)
                )
                if not wait:
                    return admin_result(action, out)
                rid = out["run_id"]
            done = await wait_for_job(eng.workspace, rid, timeout=eng.settings.server.admin_wait_timeout_sec,
                                      on_progress=notify)
            return admin_result("wait" if action == "wait" else action, done)
        except AgroUserError as exc:
            raise _user_error(exc) from None

    admin_tool = server._tool_manager.get_tool("reranker_admin")
    admin_tool.fn_metadata.output_schema = admin_output_schema()  # the union of the per-action results
    admin_tool.__dict__.pop("output_schema", None)
    return server


def _safe_status(eng: Engine, corpus: str) -> dict:
    try:
        return eng.status(corpus)
    except UserError as exc:
        return {"corpus": corpus, "error": str(exc)}
