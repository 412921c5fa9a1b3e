"""``rag_answer``: a grounded answer with checked citations, or the grounded context itself.

The ranking is ``Engine.rank`` (the one path every face shares). The top hits become a context within a token budget,
each block labelled with its citation ``path:start-end``. The answer comes from, in order of preference:

1. MCP sampling, when the connected client declared the ``sampling`` capability. On handshake protocols
   (<= 2025-11-25) the server sends ``sampling/createMessage`` mid-call; on 2026-07-28+ the tool returns an
   ``InputRequiredResult`` and the client retries with the sampled reply (see :func:`rag_answer_call`).
2. An OpenAI-compatible ``/v1/chat/completions`` endpoint (``AGRO_LLM_BASE_URL`` + ``AGRO_LLM_MODEL``).
3. Nothing: ``answer`` is null, ``mode`` is ``"context"``, and the caller answers from the context.

A failing source falls through to the next one and the reason is reported in ``note``. Every citation in an answer is
checked against the context: one that overlaps no context block of the same file is dropped, listed in
``dropped_citations`` and replaced in the answer text by :data:`DROPPED_MARK` (so an invented location never reaches
the reader).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio
import httpx
import mcp_types as types
from pydantic import ValidationError

from agro_mcp.schemas import AnswerResponse, Citation
from retrieval.errors import AgroError
from retrieval.redact import redact, url_secrets
from retrieval.types import Chunk, Hit

if TYPE_CHECKING:
    from mcp.server.mcpserver import Context

    from agro_mcp.engine import Engine

__all__ = [
    "ANSWER_PROMPT",
    "DROPPED_MARK",
    "AnswerSourceError",
    "PreparedAnswer",
    "Sampler",
    "answer_question",
    "build_context",
    "chat_completions_url",
    "complete_answer",
    "estimate_tokens",
    "extract_citations",
    "prepare_answer",
    "rag_answer_call",
]

logger = logging.getLogger(__name__)

ANSWER_MAX_TOKENS = 1024
MIN_CUT_LINES = 3
SAMPLING_KEY = "rag_answer"
DROPPED_MARK = "[citation removed: not in the retrieved context]"

ANSWER_PROMPT = """You answer questions about a code base. Use ONLY the context blocks given with the question; \
each block starts with its citation label, written path:start-end.
Rules:
- Every claim must cite the block it comes from, exactly as path:start-end (you may narrow the range to the lines \
you mean, e.g. src/app.py:12-15). Never cite a file or lines that are not in the context.
- Do not use outside knowledge and do not guess names, behaviour or locations.
- If the context does not contain the answer, reply "not found in the indexed code" and say briefly what you \
looked for.
- Be concise: a short answer, then the citations it relies on."""

Sampler = Callable[[str, str, int], Awaitable[str]]
"""``(system_prompt, user_message, max_tokens) -> answer text``; raises :class:`AnswerSourceError` to fall back."""


class AnswerSourceError(AgroError):
    """An answer source (sampling, endpoint) gave no usable answer; the message is the reason shown in ``note``."""


# -- context ------------------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Conservative token estimate without a tokenizer: one token per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


def token_counter(tokenizer: Any | None) -> Callable[[str], int]:
    """Count with ``tokenizer`` (the embedder's) but never below the chars/4 estimate.

    The embedder's WordPiece tokenizer ignores whitespace, which the answering model's tokenizer does not, so the
    larger of the two keeps indented code inside the budget.
    """
    if tokenizer is None:
        return estimate_tokens

    def count(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return max(len(ids), estimate_tokens(text))

    return count


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=0)
    return "`" * max(3, longest + 1)


def _block(rank: int, chunk: Chunk) -> str:
    label = f"[{rank}] {chunk.doc_id} ({chunk.language}" + (f": {chunk.symbol})" if chunk.symbol else ")")
    fence = _fence(chunk.text)
    return f"{label}\n{fence}{chunk.language}\n{chunk.text.rstrip(chr(10))}\n{fence}"


_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")  # file lines: only "\n" ends one (unlike str.splitlines)


def _cut(hit: Hit, n_lines: int) -> Hit:
    """``hit`` keeping only its first ``n_lines`` lines, with the citation moved to the lines kept."""
    c = hit.chunk
    lines = _LINE.findall(c.text)[:n_lines]
    chunk = Chunk.make(c.path, c.start_line, c.start_line + n_lines - 1, c.language, c.symbol, "".join(lines))
    return Hit(
        chunk, hit.fused_score, hit.score, hit.bm25_rank, hit.dense_rank, hit.bm25_score, hit.dense_score,
        hit.rerank_score, {**hit.extra, "cut_from": c.doc_id},
    )


def build_context(
    hits: Sequence[Hit], token_budget: int, count_tokens: Callable[[str], int] = estimate_tokens
) -> tuple[str, list[Hit]]:
    """Lay out ``hits`` in rank order as labelled blocks within ``token_budget`` tokens.

    Hits are added whole while they fit. The first one that does not fit is cut after the last whole line that fits
    (its citation then names only the lines kept; at least :data:`MIN_CUT_LINES` lines unless it is the top hit, so a
    stub is not worth its tokens), and every lower-ranked hit is dropped: a lower hit never displaces a higher one.
    A line is never split.

    Returns:
        The context text and the hits it holds (a cut hit is a new ``Hit`` whose chunk covers the lines kept).
    """
    blocks: list[str] = []
    used: list[Hit] = []
    spent = 0
    sep = 1  # the blank line between blocks, counted generously
    for hit in hits:
        rank = len(used) + 1
        block = _block(rank, hit.chunk)
        cost = count_tokens(block) + (sep if blocks else 0)
        if spent + cost <= token_budget:
            blocks.append(block)
            used.append(hit)
            spent += cost
            continue
        room = token_budget - spent - (sep if blocks else 0)
        # The largest whole-line prefix that fits (the cost grows with the prefix: binary search).
        lo, hi = 0, len(_LINE.findall(hit.chunk.text))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(_block(rank, _cut(hit, mid).chunk)) <= room:
                lo = mid
            else:
                hi = mid - 1
        keep = lo
        if keep >= (1 if not used else MIN_CUT_LINES):
            cut = _cut(hit, keep)
            blocks.append(_block(rank, cut.chunk))
            used.append(cut)
        break
    return "\n\n".join(blocks), used


# -- citations ----------------------------------------------------------------------------------------------------

# path:start-end, path:line, path:L12-L20, in any form a location can take: relative, absolute, '../', '~/', with
# backslashes. Whatever does not name a context block is dropped (an absolute /etc/passwd:1-2 included).
_CITATION = re.compile(
    r"(?<![\w.~@+/\\-])(?P<path>[\w.~@+/\\-]*\w):L?(?P<start>\d+)(?:\s*[-\u2013]\s*L?(?P<end>\d+))?(?![\w])"
)


def _match_path(cited: str, paths: set[str]) -> str | None:
    """The context path ``cited`` names: exact, else the one path it is a ``/``-suffix of (when unique).

    Only a plain relative path can name a context block: an absolute one, one with ``..``, ``~`` or backslashes
    never does, whatever file it reaches.
    """
    cited = cited.removeprefix("./")
    if cited.startswith(("/", "~")) or "\\" in cited or ".." in cited.split("/"):
        return None
    if cited in paths:
        return cited
    suffixed = [p for p in paths if p.endswith("/" + cited)]
    return suffixed[0] if len(suffixed) == 1 else None


def extract_citations(answer: str, context_hits: Sequence[Hit]) -> tuple[list[Citation], list[str], str]:
    """Check every ``path:start-end`` / ``path:line`` citation in ``answer`` against the context.

    A citation is kept when its line range overlaps a context block of the same file (the path may be given in full
    or as a unique ``/``-suffix); it yields one :class:`Citation` per overlapping block, with that block's ``doc_id``
    (what ``submit_feedback`` expects) and the cited lines clipped to the block. Any other citation is dropped and
    replaced in the text by :data:`DROPPED_MARK`, whatever its form (absolute, ``../``, ``~/``, backslashes, a
    bare ``name:1-2``). A single ``word:12`` without ``/`` or ``.`` that names no context file is not taken for a
    citation.

    Returns:
        ``(kept, dropped, cleaned_answer)``: kept citations in order of first mention, the dropped citation strings,
        and the answer with dropped citations replaced.
    """
    paths = {h.chunk.path for h in context_hits}
    kept: list[Citation] = []
    seen: set[tuple[str, int, int]] = set()
    dropped: list[str] = []

    def check(m: re.Match[str]) -> str:
        raw_path, text = m.group("path"), m.group(0)
        if raw_path.startswith("//") and not raw_path.startswith("///"):
            return text  # a URL's host:port (http://example.com:8080), not a file
        path = _match_path(raw_path, paths)
        looks_located = any(ch in raw_path for ch in "/.\\") or (
            m.group("end") is not None and any(ch.isalpha() for ch in raw_path)  # id_rsa:1-5, not 10:30-11:00
        )
        if path is None and not looks_located:
            return text  # e.g. "step:2": not a location at all
        start = int(m.group("start"))
        end = int(m.group("end") or start)
        if end < start:
            start, end = end, start
        overlapping = [
            h.chunk for h in context_hits
            if path is not None and h.chunk.path == path and start <= h.chunk.end_line and end >= h.chunk.start_line
        ]
        if not overlapping:
            dropped.append(text)
            return DROPPED_MARK
        for c in overlapping:
            lo, hi = max(start, c.start_line), min(end, c.end_line)
            if (c.doc_id, lo, hi) not in seen:
                seen.add((c.doc_id, lo, hi))
                kept.append(Citation(doc_id=c.doc_id, path=c.path, start_line=lo, end_line=hi))
        return text

    cleaned = _CITATION.sub(check, answer)
    return kept, dropped, cleaned


# -- answer sources -----------------------------------------------------------------------------------------------


def chat_completions_url(base_url: str) -> str:
    """``AGRO_LLM_BASE_URL`` to the chat completions URL: ``…/v1`` and bare hosts both work."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


async def endpoint_answer(
    base_url: str, model: str, api_key: str | None, timeout: float, system: str, user: str, max_tokens: int
) -> str:
    """Ask an OpenAI-compatible chat endpoint. The key goes in the header only; it is never logged or reported.

    Raises:
        AnswerSourceError: unreachable, timed out, an HTTP error, or a reply without a text answer.
    """
    url, auth = _split_userinfo(chat_completions_url(base_url))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    secrets = (api_key, *url_secrets(base_url))
    shown = redact(url, secrets)

    def failed(reason: str) -> AnswerSourceError:
        # The endpoint's reply may echo the request (its Authorization header) and httpx errors name the URL.
        return AnswerSourceError(redact(f"the LLM endpoint {shown} {reason}", secrets))

    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.post(url, json=body, headers=headers, auth=None if api_key else auth)
    except httpx.TimeoutException:
        raise failed(f"timed out after {timeout:g}s (AGRO_LLM_TIMEOUT_SEC)") from None
    except httpx.HTTPError as exc:
        raise failed(f"is unreachable: {type(exc).__name__}: {exc}") from None
    if resp.status_code >= 400:
        raise failed(f"answered HTTP {resp.status_code}: {_body(resp, secrets)!r}")
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise failed(
            f"sent a malformed reply (expected choices[0].message.content): {_body(resp, secrets)!r}"
        ) from None
    if not isinstance(content, str) or not content.strip():
        raise failed("sent an empty answer")
    # An endpoint that echoes the request could put the key in the answer itself.
    content = redact(content, secrets, patterns=False)
    return content


def _split_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """``scheme://user:key@host/…`` as the URL without its credentials plus Basic auth (so no log line names them)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))


def _body(resp: httpx.Response, secrets: tuple[str | None, ...]) -> str:
    """The start of a reply body for an error message: redacted whole, then cut (a cut key would slip through)."""
    return redact(resp.text[:20_000], secrets)[:200]


def _sampling_request(system: str, user: str, max_tokens: int) -> types.CreateMessageRequest:
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=user))],
            system_prompt=system,
            max_tokens=max_tokens,
            temperature=0,
            include_context="none",
        )
    )


def _sampled_text(result: Any) -> str:
    """The text of a sampling result, or :class:`AnswerSourceError` (a refusal, an image, an empty reply)."""
    try:
        result = types.CreateMessageResult.model_validate(result)
    except ValidationError:
        raise AnswerSourceError("the client's sampling reply was not a CreateMessageResult") from None
    content = result.content
    if not isinstance(content, types.TextContent) or not content.text.strip():
        raise AnswerSourceError("the client's sampling reply held no text")
    return content.text


def session_sampler(ctx: Context, timeout: float) -> Sampler:
    """A :data:`Sampler` that sends ``sampling/createMessage`` to the client mid-call (protocols <= 2025-11-25)."""
    from mcp.shared.exceptions import MCPError
    from mcp.shared.message import ServerMessageMetadata

    async def sample(system: str, user: str, max_tokens: int) -> str:
        try:
            # send_request, not the deprecated create_message wrapper: same request, no MCPDeprecationWarning.
            result = await ctx.session.send_request(
                _sampling_request(system, user, max_tokens),
                types.CreateMessageResult,
                request_read_timeout_seconds=timeout,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
        except MCPError as exc:
            raise AnswerSourceError(redact(f"the client declined or failed the sampling request: {exc}")) from None
        except ValidationError:
            raise AnswerSourceError("the client's sampling reply was not a CreateMessageResult") from None
        return _sampled_text(result)

    return sample


# -- the flow -----------------------------------------------------------------------------------------------------


@dataclass
class PreparedAnswer:
    """Ranking and context of one question: everything before an answer source is asked."""

    question: str
    corpus: str
    k: int
    ranked: Any  # engine.RankedResult
    context: str
    hits: list[Hit]
    prompt: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Identifies the exact prompt, to match a sampled reply to the context it answered."""
        return hashlib.sha256(f"{ANSWER_PROMPT}\0{self.prompt}".encode()).hexdigest()[:32]


def _user_message(question: str, corpus: str, context: str) -> str:
    return (
        f"Question: {question}\n\n"
        f"Context from corpus {corpus!r} (each block is labelled with its citation path:start-end):\n\n{context}\n\n"
        f"Answer the question from this context only, citing path:start-end for each claim."
    )


def prepare_answer(engine: Engine, question: str, corpus: str | None, k: int) -> PreparedAnswer:
    """Validate, rank (``Engine.rank``) and build the context. Synchronous: run it in a worker thread.

    Raises:
        UserError: empty or too long question, bad ``k``, unknown corpus, no index.
    """
    question = engine.validate_query(question, k)
    corpus = engine.resolve_corpus(corpus)
    ranked = engine.rank(question, corpus, k)
    t0 = time.perf_counter()
    tokenizer = getattr(engine.embedder(), "tokenizer", None)
    context, hits = build_context(ranked.hits, engine.settings.server.answer_context_tokens, token_counter(tokenizer))
    timings = dict(ranked.timings)
    timings["rank"] = timings.pop("total")
    timings["context"] = (time.perf_counter() - t0) * 1000
    return PreparedAnswer(question, corpus, k, ranked, context, hits, _user_message(question, corpus, context), timings)


def _finish(engine: Engine, prep: PreparedAnswer, answer: str | None, mode: str, notes: list[str]) -> AnswerResponse:
    """Log the query event (the context hits are its results) and check the answer's citations."""
    total = sum(prep.timings.get(key, 0.0) for key in ("rank", "context", "sampling", "endpoint"))
    event_id = engine.store.log_query(
        prep.corpus,
        prep.question,
        prep.k,
        prep.hits,
        reranker_model=prep.ranked.reranker_model,
        reranking_used=prep.ranked.reranking_used,
        fallback_reason=prep.ranked.fallback_reason,
        latency_ms=total,
        index_generation=prep.ranked.generation.generation_id,
        source="answer",
    )
    context_citations = [
        Citation(doc_id=h.chunk.doc_id, path=h.chunk.path, start_line=h.chunk.start_line, end_line=h.chunk.end_line)
        for h in prep.hits
    ]
    dropped: list[str] = []
    if answer is None:
        citations = context_citations
        if prep.hits:
            notes.append(
                "No answer was generated: answer the question yourself from `context`, only from what it shows, "
                "citing path:start-end for each claim; say it is not found in the indexed code if it is not there."
            )
    else:
        citations, dropped, answer = extract_citations(answer, prep.hits)
        if dropped:
            notes.append(
                f"{len(dropped)} citation(s) in the answer pointed outside the retrieved context and were removed: "
                + ", ".join(dropped)
            )
        if not citations and "not found in the indexed code" not in answer.lower():
            notes.append("The answer cites no location from the context: treat it as unsupported.")
    if len(prep.hits) < len(prep.ranked.hits) or any("cut_from" in h.extra for h in prep.hits):
        notes.append(
            f"The context holds {len(prep.hits)} of {len(prep.ranked.hits)} hits (AGRO_ANSWER_CONTEXT_TOKENS="
            f"{engine.settings.server.answer_context_tokens}); use rag_search for the rest."
        )
    if not prep.ranked.hits:
        notes.append("No code matched the question; try rag_search with other terms or check the corpus.")
    timings = dict(prep.timings)
    timings["total"] = total
    return AnswerResponse(
        event_id=event_id,
        answer=answer,
        mode=mode,
        citations=citations,
        dropped_citations=dropped,
        context=prep.context,
        note=" ".join(notes) or None,
        timings_ms={key: round(v, 2) for key, v in timings.items()},
    )


async def complete_answer(
    engine: Engine, prep: PreparedAnswer, sampler: Sampler | None, notes: list[str] | None = None
) -> AnswerResponse:
    """Ask the answer sources in order (sampling, endpoint), falling back to context mode; then check citations."""
    notes = list(notes or [])
    answer, mode = None, "context"
    server = engine.settings.server
    if prep.hits and sampler is not None:
        t0 = time.perf_counter()
        try:
            answer, mode = await sampler(ANSWER_PROMPT, prep.prompt, ANSWER_MAX_TOKENS), "sampling"
        except AnswerSourceError as exc:
            logger.info("rag_answer: sampling fell back: %s", exc)
            notes.append(f"MCP sampling gave no answer ({exc}).")
        prep.timings["sampling"] = (time.perf_counter() - t0) * 1000
    if prep.hits and answer is None and server.llm_base_url and server.llm_model:
        t0 = time.perf_counter()
        try:
            answer = await endpoint_answer(
                server.llm_base_url, server.llm_model, server.llm_api_key, server.llm_timeout_sec,
                ANSWER_PROMPT, prep.prompt, ANSWER_MAX_TOKENS,
            )
            mode = "endpoint"
        except AnswerSourceError as exc:
            logger.warning("rag_answer: endpoint fell back: %s", exc)
            notes.append(f"The LLM endpoint gave no answer ({exc}).")
        prep.timings["endpoint"] = (time.perf_counter() - t0) * 1000
    return await anyio.to_thread.run_sync(lambda: _finish(engine, prep, answer, mode, notes))


async def answer_question(
    engine: Engine, question: str, corpus: str | None, k: int, sampler: Sampler | None
) -> AnswerResponse:
    """Rank, build the context and answer (sampling, else endpoint, else context mode).

    Raises:
        UserError: bad input (see :func:`prepare_answer`).
    """
    prep = await anyio.to_thread.run_sync(lambda: prepare_answer(engine, question, corpus, k))
    return await complete_answer(engine, prep, sampler)


async def rag_answer_call(
    engine: Engine, ctx: Context, question: str, corpus: str | None, k: int
) -> AnswerResponse | types.InputRequiredResult:
    """The ``rag_answer`` tool body: pick the sampling transport the connection allows, then answer.

    * The client did not declare ``sampling``: no sampler (endpoint, else context mode).
    * The connection can carry server-to-client requests (protocols <= 2025-11-25): sample mid-call.
    * 2026-07-28+: round 1 returns an ``InputRequiredResult`` with the sampling request and the prompt's digest as
      ``request_state``; the client's retry carries the reply. The retry ranks again and uses the reply only if the
      prompt is byte-identical (same index, same hits), so an answer is never checked against a context it did not
      see. A client that refuses the request fails its own call there (SDK behaviour on that protocol).

    Raises:
        UserError: bad input.
    """
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        return await answer_question(engine, question, corpus, k, None)
    if ctx.session.can_send_request:
        return await answer_question(
            engine, question, corpus, k, session_sampler(ctx, engine.settings.server.llm_timeout_sec)
        )
    prep = await anyio.to_thread.run_sync(lambda: prepare_answer(engine, question, corpus, k))
    replies = ctx.input_responses
    if replies is None or SAMPLING_KEY not in replies:
        if not prep.hits:
            return await complete_answer(engine, prep, None)
        return types.InputRequiredResult(
            input_requests={SAMPLING_KEY: _sampling_request(ANSWER_PROMPT, prep.prompt, ANSWER_MAX_TOKENS)},
            request_state=prep.digest,
        )

    async def replay(_system: str, _user: str, _max_tokens: int) -> str:
        if ctx.request_state != prep.digest:
            raise AnswerSourceError("the index or ranking changed while the client was sampling")
        return _sampled_text(replies[SAMPLING_KEY])

    return await complete_answer(engine, prep, replay)
