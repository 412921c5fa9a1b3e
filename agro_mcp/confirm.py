"""Confirmation for what the next search cannot undo: rollback, a forced promote, indexing a new folder.

Over MCP these ask the user through MCP elicitation when the client declared it (on every protocol: the SDK's
``Resolve`` turns the question into a mid-call request or an ``input_required`` round), and are refused with the
CLI command that does the same otherwise. ``AGRO_ADMIN_ENABLED=unattended`` (scheduled jobs) skips the question.
Gated promotion, training and evaluation never ask: a candidate must win on held-out questions first.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.elicitation import AcceptedElicitation
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit
from pydantic import BaseModel, Field

__all__ = ["Confirm", "admin_confirmation", "index_confirmation", "require_confirmed"]

logger = logging.getLogger(__name__)


class Confirm(BaseModel):
    """What the user is asked to fill in."""

    confirm: bool = Field(description="Go ahead with this change")


@dataclass(frozen=True)
class _Decision:
    """A resolver's answer when no question is asked: go ahead, or refuse with ``message``."""

    message: str | None = None


_GO = _Decision()


def _ask(ctx: Context, question: str, cli: str) -> Elicit[Confirm] | _Decision:
    caps = ctx.client_capabilities
    if caps is not None and caps.elicitation is not None:
        return Elicit(f"{question}\nConfirm to go ahead.", Confirm)
    return _Decision(
        f"{question.rstrip('?.')}: this needs a person's confirmation and this MCP client cannot ask (no elicitation "
        f"support). Run it from a terminal instead: {cli}   (scheduled jobs may set AGRO_ADMIN_ENABLED=unattended)"
    )


def _unattended(ctx: Context) -> bool:
    return ctx.request_context.lifespan_context.settings.server.admin_enabled == "unattended"


def admin_confirmation(action: str, force: bool, run_id: str | None, ctx: Context) -> Any:
    """Resolver of ``reranker_admin``: rollback and a forced promote ask; everything else goes ahead."""
    eng = ctx.request_context.lifespan_context
    if not eng.settings.server.admin_enabled or _unattended(ctx):
        return _GO  # disabled: the tool body refuses; unattended: no one to ask
    if action == "rollback":
        from training.releases.promote import current_release

        cur = current_release(eng.home / "models")
        parent = (cur or {}).get("parent")
        what = f"from release {cur.get('id')} to its parent {parent}" if cur else "(no current release)"
        return _ask(ctx, f"Roll back the reranker {what}? Every search will use the older model.", "agro rollback")
    if action == "promote" and force:
        rid = run_id or "<run_id>"
        return _ask(ctx, f"Promote run {rid} even if the gate refuses it? Every search will use it.",
                    f"agro promote {shlex.quote(rid)} --force")
    return _GO


def index_confirmation(action: str, path: str | None, corpus: str | None, ctx: Context) -> Any:
    """Resolver of ``rag_index``: indexing a folder that is not already a corpus's root asks first."""
    if action != "index" or not path or _unattended(ctx):
        return _GO
    try:
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            return _GO  # the tool body reports the bad path
    except (OSError, ValueError, RuntimeError):
        return _GO  # the tool body reports the bad path with its fix
    eng = ctx.request_context.lifespan_context
    name = corpus or root.name
    try:
        if name in eng.corpora() and Path(eng.generation(name).root).resolve() == root:
            return _GO  # re-indexing a corpus from its own root: what refresh does
    except Exception:  # noqa: BLE001 - an unreadable corpus is no reason to skip the question
        logger.debug("corpus %r root check failed; asking", name, exc_info=True)
    cli = f"agro index {shlex.quote(str(root))} --corpus {shlex.quote(name)}"
    return _ask(ctx, f"Index the folder {str(root)[:300]} as corpus {name[:100]!r}? Its files become searchable "
                     "and are sent to the assistant in results.", cli)


def require_confirmed(outcome: Any) -> None:
    """Raise ``ToolError`` unless the confirmation resolver's outcome lets the call go ahead."""
    if not isinstance(outcome, AcceptedElicitation):
        raise ToolError(f"Not done: the user did not confirm ({getattr(outcome, 'action', 'no answer')}).")
    data = outcome.data
    if isinstance(data, _Decision):
        if data.message:
            raise ToolError(data.message)
        return
    if not (isinstance(data, Confirm) and data.confirm):
        raise ToolError("Not done: the user left 'confirm' unticked.")
