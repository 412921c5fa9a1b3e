"""``reranker_admin`` actions other than ``info``/``reload`` (which the engine answers itself).

Long actions (mine, train, evaluate, promote) start a background job and return its ``run_id`` at once; ``status``,
``logs``, ``runs`` and ``cancel`` report on them. :func:`wait_for_job` lets a caller (the MCP server's ``wait``)
follow one job to its end, reporting its progress as it goes. Model references are run ids only: never a filesystem
path, so no model outside ``AGRO_HOME/models`` can be named.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from training.releases.jobs import TRAINING_LOCK, JobBusyError, start_job
from training.releases.promote import PromotionError, current_release, list_releases, rollback
from training.learning.trainer import TrainingError, load_run, run_dir

__all__ = ["ACTIONS", "JOB_ACTIONS", "AdminError", "list_runs", "run_admin_action", "wait_for_job"]

logger = logging.getLogger(__name__)

ACTIONS = ("status", "mine", "train", "evaluate", "promote", "rollback", "runs", "eval_latest", "logs", "cancel")
# Actions that start a background job (their result carries its run_id), so a caller may wait for it.
JOB_ACTIONS = ("mine", "train", "evaluate", "promote")
# How often wait_for_job reads the job's record, and how many reads between checks for a dead job process.
WAIT_POLL_SEC = 0.5
_REAP_EVERY = 20
_TERMINAL = ("succeeded", "failed", "cancelled")


class AdminError(ValueError):
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


def run_admin_action(engine: Any, action: str, *, run_id: str | None = None, dataset: str | None = None) -> dict:
    """Run one admin action against ``engine`` and return a JSON-ready dict.

    Raises:
        AdminError: unknown action, missing run_id, a busy lock, or a failed rollback (message says what to do).
    """
    from training import loop

    home = Path(engine.home)
    models_dir = home / "models"
    store = engine.store
    if action not in ACTIONS:
        raise AdminError(f"action expects one of info, reload, {', '.join(ACTIONS)}, but got {action!r}")
    if run_id is not None:
        try:
            run_dir(models_dir, run_id)
        except TrainingError as exc:
            raise AdminError(str(exc)) from None

    if action == "status":
        store.reap_dead_jobs()
        from training.releases.jobs import job_lock

        lock = job_lock(store, home, TRAINING_LOCK, "")
        if run_id:
            job = store.get_job(run_id)
            if job is None:
                raise AdminError(f"Unknown run_id {run_id!r}; list jobs with action 'status'")
            return {"job": _job_dict(job)}
        cur = current_release(models_dir)
        return {
            "jobs": [_job_dict(j) for j in store.list_jobs(limit=20)],
            "training_lock": lock.holder() if lock.held_by_someone() else None,
            "current_release": cur.get("id") if cur else None,
        }
    if action == "runs":
        return {"runs": list_runs(models_dir), "releases": list_releases(models_dir)}
    if action == "eval_latest":
        latest = store.latest_evaluation()
        if latest is None:
            raise AdminError("No evaluation yet: run action 'evaluate' (or `agro evaluate golden.json`)")
        return latest
    if action == "logs":
        if not run_id:
            raise AdminError("action 'logs' needs run_id (from 'status' or 'runs')")
        return {"run_id": run_id, "lines": store.job_logs(run_id)}
    if action == "cancel":
        if not run_id:
            raise AdminError("action 'cancel' needs run_id (from 'status')")
        job = store.request_cancel(run_id)
        if job is None:
            raise AdminError(f"Unknown run_id {run_id!r}; list jobs with action 'status'")
        return {"job": _job_dict(job), "note": "cancellation requested; the job stops at its next check"}
    if action == "rollback":
        try:
            out = rollback(home, store, registry=engine.releases)
        except PromotionError as exc:
            raise AdminError(str(exc)) from None
        engine.reranker.reload()
        return out

    def started(kind: str, fn, lock: str | None = TRAINING_LOCK) -> dict:
        try:
            rid = start_job(store, home, kind, fn, params={"run_id": run_id, "dataset": dataset}, lock_name=lock)
        except JobBusyError as exc:
            raise AdminError(str(exc)) from None
        return {"run_id": rid, "state": "started", "note": f"poll with reranker_admin status run_id={rid}"}

    if action == "mine":
        sources, golden, corpus = loop.parse_sources(dataset)

        def do_mine(ctx):
            from training.learning.trainer import write_split

            split = loop.mine(engine, ctx, sources, golden_path=golden, corpus=corpus)
            write_split(run_dir(models_dir, ctx.run_id), split)
            loop.export_triplets(engine, split)
            return {"train": len(split.train), "heldout": len(split.heldout), "sources": split.info.get("sources")}

        return started("mine", do_mine, lock=None)
    if action == "train":
        sources, golden, corpus = loop.parse_sources(dataset)

        def do_train(ctx):
            out = loop.run_loop(engine, ctx, sources, golden_path=golden, corpus=corpus, promote=False)
            out.pop("table", None)
            return out

        return started("train", do_train)
    if action == "evaluate":
        if run_id:
            def do_eval_run(ctx):
                ev = loop.evaluate_run(engine, ctx, run_id)
                return {"run_id": run_id, "decision": ev["decision"], "eval_id": ev.get("eval_id")}

            return started("evaluate", do_eval_run, lock=None)
        if dataset == "heldout":
            return run_admin_action(engine, "evaluate", run_id=_latest_trained(models_dir))
        if dataset == "golden":
            dataset = "golden.json"
        if not dataset:
            raise AdminError("action 'evaluate' needs run_id (a candidate) or dataset (golden.json or a bench folder)")

        def do_eval(ctx):
            from training.evaluation.report import save_report
            from training.evaluation.run import run_evaluation

            fn, model = _current_rerank_fn(engine)
            configs = ("bm25", "dense", "fused") + (("fused+rerank",) if fn else ())
            report = run_evaluation(dataset, home, engine.settings.index, engine.settings.retrieval,
                                    configs=configs, rerank_fn=fn, model=model, embedder=engine.embedder(),
                                    index_backend=engine.indexes,
                                    progress=lambda i, n: ctx.progress(i / max(n, 1), f"{i}/{n}"))
            saved = save_report(report, store, home / "exports")
            return {"eval_id": saved.eval_id, "metrics": report.metrics}

        return started("evaluate", do_eval, lock=None)
    if action == "promote":
        rid = run_id or _latest_trained(models_dir)
        try:
            run = load_run(models_dir, rid)
        except TrainingError as exc:
            raise AdminError(str(exc)) from None
        if run.get("state") != "succeeded":
            raise AdminError(f"run {rid} is {run.get('state')!r}; only a succeeded run can be promoted")

        def do_promote(ctx):
            out = loop.promote_step(engine, ctx, rid, reload=True)
            return {k: v for k, v in out.items() if k != "figures"}

        return started("promote", do_promote)
    raise AdminError(f"unhandled action {action!r}")  # pragma: no cover


ProgressFn = Callable[[float, str | None], Awaitable[None]]


async def wait_for_job(engine: Any, run_id: str | None, *, timeout: float, on_progress: ProgressFn | None = None,
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
    store = engine.store

    def status() -> dict:
        return run_admin_action(engine, "status", run_id=run_id)

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


def _current_rerank_fn(engine: Any):
    loaded = engine.reranker.get(wait=True) if engine.settings.reranker.enabled else None
    if loaded is None:
        return None, None
    from training.evaluation.run import make_rerank_fn

    return make_rerank_fn(loaded, engine.settings.reranker), loaded.model_id
