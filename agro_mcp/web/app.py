"""The web console as an ASGI app: search with feedback, corpora, learning, reranker.

:func:`create_console_app` builds it on an existing :class:`~agro_mcp.engine.Engine`, so ``agro console`` runs it
alone and the daemon mounts it beside its MCP endpoint. Pages render on the server (Jinja2, Pygments, SVG); the
only script is ``static/console.js`` (keyboard, feedback posts, server-sent job progress).

Every state change is a POST checked by :class:`~agro_mcp.web.security.ConsoleGuard` (session, Origin) and by
:func:`_checked_form` (CSRF). Feedback goes through :func:`training.feedback.submit_feedback` with the event id of
a real :meth:`Engine.search`, exactly as the MCP ``submit_feedback`` tool does (``source="person"``).
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agro_mcp.config import ConsoleSettings
from agro_mcp.web import views
from agro_mcp.web.highlight import highlight_code, stylesheet
from agro_mcp.web.security import CSRF_FIELD, CSRF_HEADER, ConsoleGuard, load_or_create_token

__all__ = ["create_console_app"]

logger = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"
# What a person may train from here: fixed choices, never a path (a golden file is for `agro train`).
_TRAIN_DATASETS = (("feedback", "feedback"), ("bootstrap", "the corpus itself (bootstrap)"))
_SSE_POLL_SEC = 0.5
_SSE_KEEPALIVE_SEC = 15.0
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class _Console:
    """The pages and actions, bound to one engine."""

    def __init__(self, engine: Any, settings: ConsoleSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.env = Environment(loader=PackageLoader("agro_mcp.web", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters["num"] = _num

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def admin(self) -> bool:
        return bool(self.engine.settings.server.admin_enabled)

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.update(csrf=request.state.csrf, admin=self.admin, root=request.scope.get("root_path", ""), page=name.removesuffix(".html"),
                   msg=request.query_params.get("msg"), err=request.query_params.get("err"))
        html = self.env.get_template(name).render(**ctx)
        return HTMLResponse(html, status_code=status, headers=_headers())

    async def _checked_form(self, request: Request) -> FormData:
        form = await request.form()
        supplied = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if not isinstance(supplied, str) or not hmac.compare_digest(supplied.encode(), request.state.csrf.encode()):
            raise HTTPException(403, "Missing or wrong CSRF token: reload the page and try again.")
        return form

    def _require_admin(self) -> None:
        if not self.admin:
            raise HTTPException(403, "Admin actions are disabled (AGRO_ADMIN_ENABLED=0).")

    @staticmethod
    def _back(request: Request, path: str, **params: str) -> RedirectResponse:
        query = urlencode({k: v for k, v in params.items() if v})
        root = request.scope.get("root_path", "")
        return RedirectResponse(root + path + (f"?{query}" if query else ""), status_code=303)

    # -- search -----------------------------------------------------------------------------------------------
    async def search_page(self, request: Request) -> Response:
        q = request.query_params.get("q", "")
        corpus = request.query_params.get("corpus") or None
        try:
            k = max(1, min(50, int(request.query_params.get("k", "10"))))
        except ValueError:
            k = 10
        corpora = await run_in_threadpool(self.engine.corpora)
        resp, hits, error = None, [], None
        if q.strip():
            from agro_mcp.engine import UserError

            try:
                resp = await run_in_threadpool(self.engine.search, q, corpus, k, None, None, None, "console")
            except UserError as exc:
                error = str(exc)
            if resp is not None:
                root = await run_in_threadpool(self.engine.corpus_root, resp.corpus)
                hits = [self._hit(h, root, i) for i, h in enumerate(resp.results, 1)]
        if corpus is None and resp is not None:
            corpus = resp.corpus
        return self.render(request, "search.html", q=q, corpus=corpus or (corpora[0] if len(corpora) == 1 else None),
                           corpora=corpora, k=k, resp=resp, hits=hits, error=error)

    def _hit(self, h: Any, root: Path | None, rank: int) -> dict[str, Any]:
        editor = None
        if root is not None:
            abs_path = str(Path(root) / h.path)
            editor = self.settings.editor_url.format(abs_path=abs_path, path=h.path, line=h.start_line)
        return {"rank": rank, "hit": h, "code": highlight_code(h.text, h.language, h.path, h.start_line),
                "editor": editor}

    async def paths(self, request: Request) -> Response:
        corpus = request.query_params.get("corpus", "")
        q = request.query_params.get("q", "")
        from agro_mcp.engine import UserError

        try:
            found = await run_in_threadpool(views.indexed_paths, self.engine, corpus, q)
        except (UserError, ValueError):
            found = []
        return JSONResponse({"paths": found}, headers=_headers())

    async def feedback(self, request: Request) -> Response:
        form = await self._checked_form(request)
        from training.events.feedback import FeedbackError, submit_feedback

        def num(name: str) -> int | None:
            raw = (form.get(name) or "").strip()
            if not raw:
                return None
            try:
                return int(raw)
            except ValueError:
                raise FeedbackError(f"{name} expects a whole number, but got {raw!r}") from None

        def submit():
            return submit_feedback(
                self.engine.store, form.get("event_id") or "", form.get("signal") or "",
                doc_id=form.get("doc_id") or None, rating=num("rating"), path=form.get("path") or None,
                start_line=num("start_line"), end_line=num("end_line"), note=form.get("note") or None,
                corpus_root=self.engine.corpus_root, source="person",
            )

        try:
            rec = await run_in_threadpool(submit)
        except FeedbackError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400, headers=_headers())
        return JSONResponse({"feedback_id": rec.feedback_id, "event_id": rec.event_id, "signal": rec.signal,
                             "doc_id": rec.doc_id, "created": rec.created,
                             "message": "recorded" if rec.created else "already recorded"}, headers=_headers())

    # -- corpora ----------------------------------------------------------------------------------------------
    async def corpora_page(self, request: Request) -> Response:
        rows = await run_in_threadpool(views.corpora_view, self.engine)
        jobs = await run_in_threadpool(views.jobs_view, self.engine.store)
        index_jobs = [j for j in jobs if j["kind"] == "index"][:5]
        return self.render(request, "corpora.html", corpora=rows, jobs=index_jobs)

    async def refresh(self, request: Request) -> Response:
        form = await self._checked_form(request)
        corpus = form.get("corpus") or ""
        from training.releases.jobs import start_job

        engine = self.engine

        def do_refresh(ctx) -> dict:
            def progress(stage: str, done: int, total: int) -> None:
                ctx.progress(done / max(total, 1), f"{stage} {done}/{total}")

            return engine.refresh(corpus, progress=progress).to_dict()

        def start() -> str:
            engine.resolve_corpus(corpus)  # an unknown corpus is refused before a job exists
            return start_job(engine.store, Path(engine.home), "index", do_refresh, params={"corpus": corpus},
                             lock_name=None)

        from agro_mcp.engine import UserError

        try:
            run_id = await run_in_threadpool(start)
        except UserError as exc:
            return self._back(request, "/corpora", err=str(exc))
        return self._back(request, "/corpora", msg=f"refresh of {corpus} started ({run_id})")

    # -- learning ---------------------------------------------------------------------------------------------
    async def learning_page(self, request: Request) -> Response:
        data = await run_in_threadpool(views.learning_view, self.engine)
        return self.render(request, "learning.html", datasets=_TRAIN_DATASETS, **data)

    async def run_page(self, request: Request) -> Response:
        from training.learning.trainer import TrainingError

        run_id = request.path_params["run_id"]
        try:
            data = await run_in_threadpool(views.run_view, self.engine, run_id)
        except TrainingError as exc:
            raise HTTPException(404, str(exc)) from None
        return self.render(request, "run.html", **data)

    async def train(self, request: Request) -> Response:
        form = await self._checked_form(request)
        self._require_admin()
        dataset = form.get("dataset") or "feedback"
        if dataset not in {d for d, _ in _TRAIN_DATASETS}:
            return self._back(request, "/learning", err=f"dataset expects one of {[d for d, _ in _TRAIN_DATASETS]}")
        return await self._admin_job(request, "train", dataset=dataset)

    async def _admin_job(self, request: Request, action: str, **kw: Any) -> Response:
        from training.releases.admin import AdminError

        try:
            out = await run_in_threadpool(lambda: self.engine.admin(action, **kw))
        except (AdminError, ValueError, OSError) as exc:
            return self._back(request, "/learning", err=str(exc))
        return self._back(request, "/learning", msg=f"{action} job {out.get('run_id')} started")

    async def confirm_page(self, request: Request) -> Response:
        self._require_admin()
        action = request.query_params.get("action")
        run_id = request.query_params.get("run_id") or ""
        if action not in ("promote", "rollback"):
            raise HTTPException(400, "action expects promote or rollback")
        ctx: dict[str, Any] = {"action": action, "run_id": run_id}
        if action == "promote":
            from training.learning.trainer import TrainingError

            try:
                data = await run_in_threadpool(views.run_view, self.engine, run_id)
            except TrainingError as exc:
                raise HTTPException(404, str(exc)) from None
            ctx.update(data)
        ctx["rel"] = await run_in_threadpool(views.releases_view, self.engine)
        return self.render(request, "confirm.html", **ctx)

    async def promote(self, request: Request) -> Response:
        form = await self._checked_form(request)
        self._require_admin()
        run_id = form.get("run_id") or ""
        if form.get("confirm") != "yes":
            return self._back(request, "/learning/confirm", action="promote", run_id=run_id)
        if form.get("force") != "yes":
            return await self._admin_job(request, "promote", run_id=run_id)
        # An override of the gate (the CLI's `agro promote RUN --force`): recorded as forced with its figures.
        from training import loop
        from training.releases.jobs import TRAINING_LOCK, JobBusyError, start_job
        from training.learning.trainer import TrainingError, load_run

        engine = self.engine
        models_dir = Path(engine.home) / "models"

        def do_promote(ctx) -> dict:
            out = loop.promote_step(engine.workspace, ctx, run_id, force=True, reload=True)
            return {k: v for k, v in out.items() if k != "figures"}

        def start() -> str:
            if load_run(models_dir, run_id).get("state") != "succeeded":
                raise TrainingError(f"run {run_id} did not succeed; only a succeeded run can be promoted")
            return start_job(engine.store, Path(engine.home), "promote", do_promote,
                             params={"run_id": run_id, "force": True}, lock_name=TRAINING_LOCK)

        try:
            rid = await run_in_threadpool(start)
        except (TrainingError, JobBusyError) as exc:
            return self._back(request, "/learning", err=str(exc))
        return self._back(request, "/learning", msg=f"promote job {rid} started (gate overridden)")

    async def rollback(self, request: Request) -> Response:
        form = await self._checked_form(request)
        self._require_admin()
        if form.get("confirm") != "yes":
            return self._back(request, "/learning/confirm", action="rollback")
        from training.releases.admin import AdminError

        try:
            out = await run_in_threadpool(lambda: self.engine.admin("rollback"))
        except (AdminError, ValueError, OSError) as exc:
            return self._back(request, "/learning", err=str(exc))
        return self._back(request, "/learning", msg=f"rolled back: current release is {out.get('release') or out}")

    async def cancel(self, request: Request) -> Response:
        await self._checked_form(request)
        self._require_admin()
        from training.releases.admin import AdminError

        run_id = request.path_params["run_id"]
        try:
            await run_in_threadpool(lambda: self.engine.admin("cancel", run_id=run_id))
        except (AdminError, ValueError) as exc:
            return self._back(request, "/learning", err=str(exc))
        return self._back(request, "/learning", msg=f"cancellation of {run_id} requested")

    async def job_events(self, request: Request) -> Response:
        """Server-sent events: each listed job's state whenever it changes, until all have ended."""
        ids = [i for i in request.query_params.getlist("run_id") if i][:20]
        store = self.engine.store

        async def stream():
            last: dict[str, str] = {}
            quiet = 0.0
            yield "retry: 2000\n\n"
            while True:
                jobs = await run_in_threadpool(lambda: [store.get_job(i) for i in ids])
                sent = False
                for j in jobs:
                    if j is None:
                        continue
                    data = json.dumps({"run_id": j.run_id, "kind": j.kind, "state": j.state,
                                       "progress": round(j.progress, 4), "message": j.message, "error": j.error})
                    if last.get(j.run_id) != data:
                        last[j.run_id] = data
                        sent = True
                        yield f"event: job\ndata: {data}\n\n"
                if all(j is None or j.finished for j in jobs):
                    yield "event: end\ndata: {}\n\n"
                    return
                quiet = 0.0 if sent else quiet + _SSE_POLL_SEC
                if quiet >= _SSE_KEEPALIVE_SEC:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                await anyio.sleep(_SSE_POLL_SEC)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", **_headers()})

    # -- reranker ---------------------------------------------------------------------------------------------
    async def reranker_page(self, request: Request) -> Response:
        data = await run_in_threadpool(views.reranker_view, self.engine)
        return self.render(request, "reranker.html", **data)

    async def reload(self, request: Request) -> Response:
        await self._checked_form(request)
        self._require_admin()
        await run_in_threadpool(lambda: self.engine.admin("reload"))
        return self._back(request, "/reranker", msg="reload requested")


async def _pygments_css(request: Request) -> Response:
    return Response(stylesheet(), media_type="text/css", headers={"Cache-Control": "max-age=3600"})


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if request.url.path.startswith("/api/"):  # answered to the page's script, which shows the message
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=_headers())
    body = (f"<!doctype html><meta charset=utf-8><title>{exc.status_code}</title>"
            f"<link rel=stylesheet href=/static/console.css><body class=refused><h1>{exc.status_code}</h1>"
            f"<p>{_escape(exc.detail)}</p><p><a href=/>back to the console</a></p></body>")
    return HTMLResponse(body, status_code=exc.status_code, headers=_headers())


def _escape(text: Any) -> str:
    from markupsafe import escape

    return str(escape(text))


def create_console_app(engine: Any, settings: ConsoleSettings | None = None, token: str | None = None) -> Starlette:
    """The console on ``engine``, guarded by ``token`` (default: ``AGRO_HOME/token``, created if missing).

    Args:
        engine: a started or lazily starting :class:`~agro_mcp.engine.Engine` (the caller owns its lifecycle).
        settings: the console settings (default: ``engine.settings.console``).
        token: the install's token (the daemon passes the one its HTTP endpoint uses).
    """
    settings = settings or engine.settings.console
    token = token or load_or_create_token(Path(engine.home))
    c = _Console(engine, settings)
    routes = [
        Route("/", c.search_page),
        Route("/api/paths", c.paths),
        Route("/api/feedback", c.feedback, methods=["POST"]),
        Route("/corpora", c.corpora_page),
        Route("/corpora/refresh", c.refresh, methods=["POST"]),
        Route("/learning", c.learning_page),
        Route("/learning/runs/{run_id}", c.run_page),
        Route("/learning/train", c.train, methods=["POST"]),
        Route("/learning/confirm", c.confirm_page),
        Route("/learning/promote", c.promote, methods=["POST"]),
        Route("/learning/rollback", c.rollback, methods=["POST"]),
        Route("/jobs/{run_id}/cancel", c.cancel, methods=["POST"]),
        Route("/events/jobs", c.job_events),
        Route("/reranker", c.reranker_page),
        Route("/reranker/reload", c.reload, methods=["POST"]),
        Route("/static/pygments.css", _pygments_css),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error},
                     middleware=[Middleware(ConsoleGuard, token=token, host=settings.host)])
