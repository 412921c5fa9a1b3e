"""Every tool call gets a short answer that says how to fix it (DESIGN.md section 9).

:class:`GuardedMCPServer` wraps the SDK's tool dispatch: arguments a tool does not take are refused (its argument
model forbids extras), validation errors become fix-it sentences (``k must be between 1 and 50; got 0``) without
pydantic's links, an unexpected exception becomes a short tool error while its traceback goes to the log, and no
message repeats more than ~200 characters of what the caller sent (:func:`retrieval.redact.clip`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from pydantic import ConfigDict, ValidationError

from retrieval.redact import CLIP_CHARS, clip, redact

__all__ = ["GuardedMCPServer", "MAX_ERROR_CHARS", "validation_message"]

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000
_PREFIX = "Error executing tool "


class GuardedMCPServer(MCPServer):
    """An ``MCPServer`` whose tools refuse unknown arguments and always answer with a short, actionable error."""

    def add_tool(self, fn, name=None, *args: Any, **kwargs: Any) -> None:
        super().add_tool(fn, name, *args, **kwargs)
        _forbid_extra_arguments(self._tool_manager.get_tool(name or fn.__name__))

    async def run_stdio_async(self) -> None:
        """Serve over stdio with a reader that answers every request line (see :mod:`agro_mcp.stdio`)."""
        from agro_mcp.stdio import stdio_transport

        async with stdio_transport() as (read_stream, write_stream):
            lowlevel = self._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    async def call_tool(self, name: str, arguments: dict[str, Any], context=None):
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            cause = _root_cause(exc)
            logger.error("tool %s failed unexpectedly", _shown(name), exc_info=cause)
            raise ToolError(
                f"{_shown(name)} failed with an internal error ({type(cause).__name__}); the server log has the "
                "details. Check the arguments, or report it if they look right."
            ) from None
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                tool = self._tool_manager.get_tool(name)
                raise ToolError(validation_message(name, exc.__cause__, tool)) from exc.__cause__
            message = str(exc)
            if message.startswith(_PREFIX + name + ": "):
                message = message[len(_PREFIX + name + ": "):]
            raise ToolError(_bounded(message, arguments, name)) from exc.__cause__


def _shown(name: str) -> str:
    return name if len(name) <= 80 else clip(name, 80)


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, UnexpectedToolError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _forbid_extra_arguments(tool: Any) -> None:
    """Rebuild the tool's argument model with ``extra="forbid"`` and publish ``additionalProperties: false``."""
    base = tool.fn_metadata.arg_model
    strict = type(base.__name__, (base,), {
        "__module__": base.__module__,
        "model_config": ConfigDict(extra="forbid", arbitrary_types_allowed=True),
    })
    tool.fn_metadata.arg_model = strict
    tool.parameters = strict.model_json_schema(by_alias=True)


def _bounded(message: str, arguments: dict[str, Any], name: str) -> str:
    """``message`` with every long argument it repeats cut to :data:`CLIP_CHARS`, redacted, at most
    :data:`MAX_ERROR_CHARS` characters."""
    values = [name] + [v for v in (arguments or {}).values() if isinstance(v, str)]
    for value in sorted(values, key=len, reverse=True):
        if len(value) <= CLIP_CHARS:
            continue
        for form in (repr(value), repr(value)[1:-1], value):
            if form in message:
                message = message.replace(form, clip(value))
    # Whatever else came from the input (a corpus id derived from a long path, a resolved path): no long runs.
    message = _LONG_RUN.sub(lambda m: _cut(m.group(0)), message)
    message = redact(message)
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "… (message cut)"
    return message


_LONG_RUN = re.compile(r"\S{%d,}" % (CLIP_CHARS + 100))


def _cut(run: str) -> str:
    return f"{run[:CLIP_CHARS]}… ({len(run) - CLIP_CHARS} more characters)"


def _bounds(tool: Any, field: str) -> tuple[Any, Any]:
    info = tool.fn_metadata.arg_model.model_fields.get(field) if tool is not None else None
    lo = hi = None
    for m in getattr(info, "metadata", []) or []:
        lo = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else lo
        hi = getattr(m, "le", None) if getattr(m, "le", None) is not None else hi
    return lo, hi


def _accepted(tool: Any) -> str:
    if tool is None:
        return ""
    names = [f.alias or n for n, f in tool.fn_metadata.arg_model.model_fields.items()]
    return ", ".join(names)


def validation_message(name: str, exc: ValidationError, tool: Any = None) -> str:
    """One fix-it sentence per rejected argument, e.g. ``k must be between 1 and 50; got 0``."""
    lines = []
    for err in exc.errors(include_url=False)[:5]:
        field = ".".join(str(p) for p in err["loc"]) or "arguments"
        given = err.get("input")
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            lines.append(f"unknown argument {clip(field, 80)}; {name} takes: {_accepted(tool)}")
        elif kind == "missing":
            lines.append(f"missing required argument {field!r}")
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            lo, hi = _bounds(tool, field)
            if lo is not None and hi is not None:
                lines.append(f"{field} must be between {lo} and {hi}; got {clip(given, 40)}")
            else:
                lines.append(f"{field} {err['msg'].lower()}; got {clip(given, 40)}")
        elif kind == "string_too_long":
            n = len(given) if isinstance(given, str) else "?"
            lines.append(f"{field} must be at most {ctx.get('max_length')} characters; got {n}")
        elif kind == "string_too_short":
            lines.append(f"{field} must not be empty" if ctx.get("min_length") == 1
                         else f"{field} must be at least {ctx.get('min_length')} characters")
        elif kind == "literal_error":
            lines.append(f"{field} must be one of {ctx.get('expected')}; got {clip(given, 80)}")
        else:
            lines.append(f"{field}: {err['msg']}; got {clip(given, 80)}")
    more = len(exc.errors()) - len(lines)
    if more > 0:
        lines.append(f"(and {more} more)")
    return redact(f"Invalid arguments for {_shown(name)}: " + "; ".join(lines))
