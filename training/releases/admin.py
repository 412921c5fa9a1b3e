"""``reranker_admin`` actions other than ``info``/``reload`` (which the engine answers itself).

Long actions (mine, train, evaluate, promote) start a background job and return its ``run_id`` at once; ``status``,
``logs``, ``runs`` and ``cancel`` report on them. :func:`wait_for_job` lets a caller (the MCP server's ``wait``)
follow one job to its end, reporting its progress as it goes. Model references are run ids only: never a filesystem
path, so no model outside ``AGRO_HOME/models`` can be named.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.manager import RerankerManager
from reranker.path import RankingPath
from retrieval.errors import AgroUserError
from training.learning.trainer import TrainingError, load_run, run_dir
from training.releases.jobs import TRAINING_LOCK, JobBusyError, start_job
from training.releases.datasets import DatasetError, dataset_generations, resolve_dataset
from training.releases.promote import PromotionError, current_release, list_releases, rollback
from training.workspace import Workspace

__all__ = ["ACTIONS", "JOB_ACTIONS", "AdminError", "list_runs", "run_admin_action", "wait_for_job"]

logger = logging.getLogger(__name__)

# Actions that start a background job (their result carries its run_id), so a caller may wait for it.
JOB_ACTIONS = ("mine", "train", "evaluate", "promote")
# How often wait_for_job reads the job's record, and how many reads between checks for a dead job process.
WAIT_POLL_SEC = 0.5
_REAP_EVERY = 20
_TERMINAL = ("succeeded", "failed", "cancelled")


class AdminError(AgroUserError, ValueError):
    """A bad admin request; the message says how to fix it."""


def list_runs(models_dir: Path, limit: int = 50) -> list[dict[str, Any]]:
    """Runs newest first: id, state, created, base, trained triplets, the gate's decision if evaluated."""
    import json

    runs = Path(models_dir) / "runs"
    out = []
    dirs = sorted((p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name, reverse=True) if runs.is_dir() else []
    for d in dirs[:limit]:
        try:
            r = json.loads((d / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out.append({"run_id": d.name, "state": "unknown"})
            continue
        row = {"run_id": d.name, "state": r.get("state"), "created_at": r.get("created_at"),
               "base": (r.get("base_model") or {}).get("release_id") or (r.get("base_model") or {}).get("kind"),
               "triplets": (r.get("data") or {}).get("trained_triplets"), "elapsed_sec": r.get("elapsed_sec")}
        ev = d / "evaluation.json"
        if ev.is_file():
            try:
                dec = json.loads(ev.read_text(encoding="utf-8"))["decision"]
                row["gate"] = {"promote": dec["promote"], "reasons": dec["reasons"]}
            except (OSError, ValueError, KeyError):
                pass
        out.append(row)
    return out


def _job_dict(j: Any) -> dict[str, Any]:
    return {"run_id": j.run_id, "kind": j.kind, "state": j.state, "progress": round(j.progress, 3),
            "message": j.message, "error": j.error, "result": j.result, "pid": j.pid}


def _latest_trained(models_dir: Path) -> str:
    for r in list_runs(models_dir):
        if r.get("state") == "succeeded":
            return r["run_id"]
    raise AdminError("No succeeded training run to promote; start one with action 'train' (or `agro train`)")


@dataclass(frozen=True)
class _Request:
    """One admin call: the workspace it acts on and its arguments (``run_id`` already checked to be well-formed)."""

    ws: Workspace
    run_id: str | None
    dataset: str | None
    force: bool = False

    @property
    def home(self) -> Path:
        return Path(self.ws.home)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def started(self, kind: str, fn: Callable[[Any], Any], lock: str | None = TRAINING_LOCK) -> dict:
        """Start ``fn(ctx)`` as a background job; ``{"run_id", "state": "started", "note"}``."""
        try:
            rid = start_job(self.ws.store, self.home, kind, fn, params={"run_id": self.run_id, "dataset": self.dataset},
                            lock_name=lock)
        except JobBusyError as exc:
            raise AdminError(str(exc)) from None
        return {"run_id": rid, "state": "started", "note": f"poll with reranker_admin status run_id={rid}"}


def _dataset(ws: Workspace, dataset: str) -> tuple[Path, dict[str, Any] | None]:
    """The dataset's file or folder and, for a golden file, the generations of the corpora it asks about."""
    try:
        path = resolve_dataset(ws, dataset)
        return path, dataset_generations(ws, path)
    except DatasetError as exc:
        raise AdminError(str(exc)) from None


def _sources(r: _Request) -> tuple[list[str], Path | None, str | None]:
    """Mining sources of ``r.dataset``; a golden file must be the corpus's own or one in AGRO_HOME/datasets."""
    from training import loop

    sources, golden, corpus = loop.parse_sources(r.dataset)
    if golden is not None:
        golden, _ = _dataset(r.ws, r.dataset or "")
    return sources, golden, corpus


def _status(r: _Request) -> dict:
    from training.releases.jobs import job_lock

    store = r.ws.store
    store.reap_dead_jobs()
    lock = job_lock(store, r.home, TRAINING_LOCK, "")
    if r.run_id:
        job = store.get_job(r.run_id)
        if job is None:
            raise AdminError(f"Unknown run_id {r.run_id!r}; list jobs with action 'status'")
        return {"job": _job_dict(job)}
    cur = current_release(r.models_dir)
    return {
        "jobs": [_job_dict(j) for j in store.list_jobs(limit=20)],
        "training_lock": lock.holder() if lock.held_by_someone() else None,
        "current_release": cur.get("id") if cur else None,
    }


def _runs(r: _Request) -> dict:
    return {"runs": list_runs(r.models_dir), "releases": list_releases(r.models_dir)}


def _eval_latest(r: _Request) -> dict:
    latest = r.ws.store.latest_evaluation()
    if latest is None:
        raise AdminError("No evaluation yet: run action 'evaluate' (or `agro evaluate golden.json`)")
    return latest


def _logs(r: _Request) -> dict:
    if not r.run_id:
        raise AdminError("action 'logs' needs run_id (from 'status' or 'runs')")
    return {"run_id": r.run_id, "lines": r.ws.store.job_logs(r.run_id)}


def _cancel(r: _Request) -> dict:
    if not r.run_id:
        raise AdminError("action 'cancel' needs run_id (from 'status')")
    job = r.ws.store.request_cancel(r.run_id)
    if job is None:
        raise AdminError(f"Unknown run_id {r.run_id!r}; list jobs with action 'status'")
    return {"job": _job_dict(job), "note": "cancellation requested; the job stops at its next check"}


def _rollback(r: _Request) -> dict:
    try:
        out = rollback(r.home, r.ws.store, registry=r.ws.releases)
    except PromotionError as exc:
        raise AdminError(str(exc)) from None
    if r.ws.reload is not None:
        r.ws.reload()
    return out


def _mine(r: _Request) -> dict:
    from training import loop

    sources, golden, corpus = _sources(r)

    def do_mine(ctx):
        from training.learning.trainer import write_split

        split = loop.mine(r.ws, ctx, sources, golden_path=golden, corpus=corpus)
        write_split(run_dir(r.models_dir, ctx.run_id), split)
        loop.export_triplets(r.ws, split)
        return {"train": len(split.train), "heldout": len(split.heldout), "sources": split.info.get("sources")}

    return r.started("mine", do_mine, lock=None)


def _train(r: _Request) -> dict:
    from training import loop

    sources, golden, corpus = _sources(r)

    def do_train(ctx):
        out = loop.run_loop(r.ws, ctx, sources, golden_path=golden, corpus=corpus, promote=False)
        out.pop("table", None)
        return out

    return r.started("train", do_train)


def _evaluate(r: _Request) -> dict:
    from training import loop

    run_id, dataset = r.run_id, r.dataset
    if run_id:
        def do_eval_run(ctx):
            ev = loop.evaluate_run(r.ws, ctx, run_id)
            return {"run_id": run_id, "decision": ev["decision"], "eval_id": ev.get("eval_id")}

        return r.started("evaluate", do_eval_run, lock=None)
    if dataset == "heldout":
        return _evaluate(_Request(r.ws, _latest_trained(r.models_dir), None))
    if not dataset:
        raise AdminError("action 'evaluate' needs run_id (a candidate) or dataset ('golden' or a dataset name)")
    dataset_path, generations = _dataset(r.ws, dataset)

    def do_eval(ctx):
        from training.evaluation.report import save_report
        from training.evaluation.run import run_evaluation

        ws = r.ws
        path, model = _current_rerank_path(ws)
        configs = ("bm25", "dense", "fused") + (("fused+rerank",) if path else ())
        report = run_evaluation(dataset_path, r.home, ws.settings.index, ws.settings.retrieval,
                                configs=configs, rerank_path=path, model=model, embedder=ws.embedder(),
                                index_backend=ws.indexes, generations=generations,
                                progress=lambda i, n: ctx.progress(i / max(n, 1), f"{i}/{n}"))
        saved = save_report(report, ws.store, r.home / "exports")
        return {"eval_id": saved.eval_id, "metrics": report.metrics}

    return r.started("evaluate", do_eval, lock=None)


def _promote(r: _Request) -> dict:
    from training import loop

    rid = r.run_id or _latest_trained(r.models_dir)
    try:
        run = load_run(r.models_dir, rid)
    except TrainingError as exc:
        raise AdminError(str(exc)) from None
    if run.get("state") != "succeeded":
        raise AdminError(f"run {rid} is {run.get('state')!r}; only a succeeded run can be promoted")

    def do_promote(ctx):
        out = loop.promote_step(r.ws, ctx, rid, force=r.force, reload=True)
        return {k: v for k, v in out.items() if k != "figures"}

    return r.started("promote", do_promote)


# action -> handler; the order is the one error messages list them in.
_HANDLERS: dict[str, Callable[[_Request], dict]] = {
    "status": _status,
    "mine": _mine,
    "train": _train,
    "evaluate": _evaluate,
    "promote": _promote,
    "rollback": _rollback,
    "runs": _runs,
    "eval_latest": _eval_latest,
    "logs": _logs,
    "cancel": _cancel,
}
ACTIONS = tuple(_HANDLERS)


def run_admin_action(
    ws: Workspace, action: str, *, run_id: str | None = None, dataset: str | None = None, force: bool = False
) -> dict:
    """Run one admin action on ``ws`` and return a JSON-ready dict.

    Raises:
        AdminError: unknown action, missing run_id, a busy lock, or a failed rollback (message says what to do).
    """
    handler = _HANDLERS.get(action)
    if handler is None:
        raise AdminError(f"action expects one of info, reload, {', '.join(ACTIONS)}, but got {action!r}")
    if run_id is not None:
        try:
            run_dir(Path(ws.home) / "models", run_id)
        except TrainingError as exc:
            raise AdminError(str(exc)) from None
    return handler(_Request(ws, run_id, dataset, force))


ProgressFn = Callable[[float, str | None], Awaitable[None]]


async def wait_for_job(ws: Workspace, run_id: str | None, *, timeout: float, on_progress: ProgressFn | None = None,
                       poll: float = WAIT_POLL_SEC) -> dict:
    """Wait until job ``run_id`` ends (succeeded, failed, cancelled) or ``timeout`` seconds pass; return its status.

    The job's record is read every ``poll`` seconds in a worker thread, so the event loop is never blocked. Each
    time its progress has risen since the last report (and once at the start), ``on_progress(progress, message)`` is
    awaited with the job's fraction (0..1) and message; a change of message alone is folded into the next report,
    since MCP requires every progress notification of a request to carry a higher value than the one before.
    Cancelling the wait (the caller gave up) leaves the job running.

    Returns:
        What action ``status`` returns for the run (``{"job": {...}}``); when the job is still running at the
        timeout, with a ``note`` saying so and how to go on.

    Raises:
        AdminError: no run_id, a malformed one, or no such job.
    """
    import anyio

    if not run_id:
        raise AdminError("action 'wait' needs run_id (returned by mine/train/evaluate/promote, or listed by 'status')")
    store = ws.store

    def status() -> dict:
        return run_admin_action(ws, "status", run_id=run_id)

    await anyio.to_thread.run_sync(status)  # validates run_id and says so when the job is unknown
    deadline = anyio.current_time() + timeout
    reported: float | None = None
    reads = 0
    while True:
        job = await anyio.to_thread.run_sync(store.get_job, run_id)
        if job is None:  # pragma: no cover - jobs are never deleted while the server runs
            raise AdminError(f"Unknown run_id {run_id!r}; list jobs with action 'status'")
        if on_progress is not None and (reported is None or job.progress > reported):
            reported = job.progress
            await on_progress(job.progress, job.message)
        now = anyio.current_time()
        if job.finished or now >= deadline:
            break
        reads += 1
        if reads % _REAP_EVERY == 0:  # a job run by another process that died would otherwise look alive
            await anyio.to_thread.run_sync(store.reap_dead_jobs)
        await anyio.sleep(min(poll, deadline - now))
    out = await anyio.to_thread.run_sync(status)
    if out["job"]["state"] not in _TERMINAL:
        out["note"] = (f"still {out['job']['state']} after waiting {timeout:g}s (AGRO_ADMIN_WAIT_TIMEOUT_SEC); "
                       f"wait again with reranker_admin action 'wait' run_id={run_id}, poll with 'status', "
                       "or stop it with 'cancel'")
    return out


def _current_rerank_path(ws: Workspace) -> tuple[RankingPath | None, str | None]:
    """The ranking path pinned to the model this process serves now (an evaluation must not switch models midway),
    and its id; (None, None) when reranking is off or no model is loaded."""
    stage = ws.path.reranker if ws.settings.reranker.enabled else None
    loaded = stage.get(wait=True) if isinstance(stage, RerankerManager) else stage
    if loaded is None:
        return None, None
    return ws.path.with_reranker(loaded), loaded.model_id
