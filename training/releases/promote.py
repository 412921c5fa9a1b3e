"""The promotion gate, the atomic switch of ``models/current``, and rollback.

A candidate is compared with the current release and with retrieval alone on the same held-out questions; it is
promoted only when its paired per-question MRR@10 gain over each has a 95% bootstrap interval above zero and a
sign-flip p below 5%, with a mean
of at least ``delta`` times the better one's MRR@10, and no Hit@1 drop beyond noise (the interval of the paired Hit@1
difference lies wholly below zero). See :func:`gate`.

Promotion copies the run's model into ``models/releases/<id>/``, writes ``manifest.json`` last, then
points ``current`` at it with a new symlink and ``os.replace``. A crash at any instant leaves ``current`` on a
complete release (the old or the new one).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retrieval.atomic import fsync_dir
from retrieval.errors import AgroUserError
from training.learning.bases import pointed_manifest
from training.learning.trainer import TrainingError, load_run, run_dir, write_json_atomic

__all__ = [
    "GateDecision",
    "PromotionError",
    "current_release",
    "flip_current",
    "gate",
    "list_releases",
    "promote_run",
    "rollback",
]

logger = logging.getLogger(__name__)

Hook = Callable[[str], None]  # called with a step name between the steps (tests inject crashes here)


class PromotionError(AgroUserError, RuntimeError):
    """The promotion or rollback cannot happen; the message says why and what to do."""


@dataclass(slots=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def gate(
    per_query: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    delta: float,
    min_queries: int,
    candidate: str = "candidate",
    others: Sequence[str] = ("retrieval", "current"),
    seed: int = 0,
    level: float = 0.95,
) -> GateDecision:
    """Decide on a candidate from per-question metric rows of each configuration on the same questions.

    The decision rests on the paired per-question difference in MRR@10, candidate minus each alternative: it
    promotes when, against every alternative, the seeded bootstrap interval of the mean difference lies above zero
    and the two-sided sign-flip p-value is below ``1 - level`` (the percentile interval alone is too narrow on small
    samples),
    and the mean gain over the best alternative is at least ``delta`` times that alternative's MRR@10; it refuses
    when a Hit@1 loss against any alternative is significant (its interval lies below zero). A sample is too small
    only when no interval could exclude zero on it (:func:`training.releases.significance.min_questions`) or it is below
    ``min_queries``.

    An alternative's row marked ``trained_on`` (a question the current release learned from) is left out of the
    comparison with that alternative: a model judged on its own training questions looks better than it is, and a
    candidate would have to beat that. Each comparison rests on the questions both sides did not see.

    Args:
        per_query: config name -> rows (same questions, same order) with ``MRR@10`` and ``Hit@1``.
        delta: required relative MRR@10 gain over the better of ``others`` (0.02 = 2%).
        min_queries: fewest questions a decision may rest on (the interval's own minimum applies too).
        candidate: the candidate's config name.
        others: the configurations to beat (those absent from ``per_query`` are skipped).
        level: the intervals' confidence level.
    """
    from training.releases.significance import min_questions, paired_gain

    cand = list(per_query.get(candidate, ()))
    present = [o for o in others if o in per_query]
    n = len(cand)
    floor = max(min_queries, min_questions(level))
    figures: dict[str, Any] = {"n_queries": n, "delta": delta, "min_queries": floor, "level": level,
                               "method": "paired per-question MRR@10 difference, percentile bootstrap interval "
                                         "(4000 resamples, seeded) and two-sided sign-flip p"}
    fair = {o: [i for i, r in enumerate(per_query[o]) if not r.get("trained_on")] for o in present}
    for c in [candidate, *present]:
        rows = per_query[c] if c == candidate else [per_query[c][i] for i in fair[c]]
        figures[c] = {"MRR@10": _mean([r["MRR@10"] for r in rows]), "Hit@1": _mean([r["Hit@1"] for r in rows])}
        if c != candidate and len(rows) < n:
            figures[c].update(n_unseen=len(rows), candidate_MRR10_on_them=_mean([cand[i]["MRR@10"] for i in fair[c]]))
    reasons: list[str] = []
    if n < floor:
        reasons.append(f"only {n} held-out questions; the gate needs at least {floor} (below "
                       f"{min_questions(level)} no {level:.0%} interval can exclude chance; more feedback, golden.json "
                       "questions or a repository with more history)")
    if n == 0 or not present:
        if not present:
            reasons.append("nothing to compare with")
        return GateDecision(False, reasons or ["no held-out questions"], figures)
    ok = n >= floor
    best = max(present, key=lambda o: figures[o]["MRR@10"])
    need = delta * figures[best]["MRR@10"]
    figures.update(best_other=best, required_gain=need, required_mrr=figures[best]["MRR@10"] + need)
    for o in present:
        idx = fair[o]
        if len(idx) < floor:
            ok = False
            reasons.append(f"only {len(idx)} of the {n} held-out questions are new to the {o} release (it trained on "
                           f"the others); comparing with it needs at least {floor}: send feedback on more questions")
            continue
        mine = [cand[i] for i in idx]
        theirs = [per_query[o][i] for i in idx]
        g = paired_gain([r["MRR@10"] for r in mine], [r["MRR@10"] for r in theirs], seed=seed, level=level)
        figures[f"mrr_gain_vs_{o}"] = {**g.to_dict(), "n": len(idx)}
        lo, hi = g.ci
        m = len(idx)
        # both the percentile bootstrap interval and the sign-flip test must exclude chance: on a few dozen questions
        # the percentile interval is too narrow (docstring_boltons, 20 feedback questions: CI [+0.004, +0.271] but
        # p = 0.061, and the release served 7% worse span MRR@10 to the unseen half)
        if lo <= 0 or g.p_value >= 1 - level:
            ok = False
            reasons.append(f"MRR@10 gain vs {o} {g.mean:+.4f} is not above chance ({level:.0%} CI [{lo:+.4f}, "
                           f"{hi:+.4f}], p={g.p_value:.3f}, {g.wins} questions up / {g.losses} down of {m})")
        else:
            reasons.append(f"MRR@10 gain vs {o} {g.mean:+.4f} ({level:.0%} CI [{lo:+.4f}, {hi:+.4f}], "
                           f"p={g.p_value:.3f}, {g.wins} up / {g.losses} down of {m})")
        if o == best and g.mean < need:
            ok = False
            reasons.append(f"mean gain {g.mean:+.4f} over {best} < required {need:.4f} ({delta} x its MRR@10 "
                           f"{figures[best]['MRR@10']:.4f})")
        h = paired_gain([r["Hit@1"] for r in mine], [r["Hit@1"] for r in theirs], seed=seed, level=level)
        figures[f"hit1_diff_vs_{o}"] = {"mean": h.mean, "ci95": list(h.ci), "p_value": h.p_value}
        if h.ci[1] < 0:
            ok = False
            reasons.append(f"Hit@1 drops vs {o} beyond noise ({h.mean:+.3f}, {level:.0%} CI [{h.ci[0]:+.3f}, "
                           f"{h.ci[1]:+.3f}])")
    return GateDecision(ok, reasons, figures)


# ------------------------------------------------------------------------------------------------- releases


def current_release(models_dir: Path) -> dict[str, Any] | None:
    """The manifest of the release ``current`` points at (with ``_dir``), or None."""
    return pointed_manifest(Path(models_dir) / "current")


def list_releases(models_dir: Path) -> list[dict[str, Any]]:
    """Every release folder, oldest first, with ``complete`` False for one without a manifest."""
    rel = Path(models_dir) / "releases"
    cur = current_release(models_dir)
    out = []
    for d in sorted(rel.iterdir(), key=lambda p: p.stat().st_mtime) if rel.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out.append({"id": d.name, "complete": False})
            continue
        out.append({"id": m.get("id", d.name), "complete": True, "parent": m.get("parent"),
                    "promoted_at": m.get("promoted_at"), "run_id": m.get("run_id"),
                    "current": bool(cur and Path(cur["_dir"]) == d.resolve()), "metrics": m.get("metrics")})
    return out


def flip_current(models_dir: Path, release_id: str, hook: Hook | None = None) -> None:
    """Point ``current`` at ``releases/<release_id>``: a new relative symlink beside it, then ``os.replace``.

    Raises:
        PromotionError: when the release folder or its manifest is missing.
    """
    models_dir = Path(models_dir)
    target = models_dir / "releases" / release_id
    if not (target / "manifest.json").is_file():
        raise PromotionError(f"release {release_id} has no manifest.json (incomplete); refusing to point current at it")
    switch_current(models_dir, Path("releases") / release_id, hook)


def switch_current(folder: Path, target: Path, hook: Hook | None = None) -> None:
    """Point ``folder/current`` at ``target`` (relative to ``folder``): a new symlink beside it, then
    ``os.replace``, so a reader sees the old target or the new one, never none. Stale temporary links of a killed
    switch are removed first."""
    for stale in folder.glob(".current.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = folder / f".current.{Path(target).name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    if hook:
        hook("symlink_created")
    os.replace(tmp, folder / "current")
    fsync_dir(folder)
    if hook:
        hook("replaced")


def _shipped_vectors(dest: Path) -> dict[str, Any] | None:
    """The manifest's record of the chunk vectors copied into the release folder ``dest`` (checked against its
    weights, before the manifest makes the release complete), or None: none shipped, or a file that does not check
    out, which is removed (the release then embeds on demand)."""
    from reranker.vectors import VECTORS_FILE, VectorsError, manifest_entry, read_vectors, weights_sha256

    path = dest / VECTORS_FILE
    if not path.is_file():
        return None
    try:
        _, _, meta = read_vectors(path, {"weights_sha256": weights_sha256(dest)})
    except VectorsError as exc:
        logger.warning("release %s ships no vectors: %s", dest.name, exc)
        path.unlink(missing_ok=True)
        return None
    return manifest_entry(meta)


def _new_release_id() -> str:
    return datetime.now(timezone.utc).strftime("rel-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def promote_run(
    home: Path,
    run_id: str,
    decision: GateDecision,
    store: Any,
    *,
    force: bool = False,
    hook: Hook | None = None,
    registry: Any = None,
) -> dict[str, Any]:
    """Record the decision and, if it (or ``force``) says so, release the run and flip ``current``.

    ``registry`` (the shared release registry of a team backend, or None) receives the release before the
    local switch, so every server sharing it picks the release up.

    Returns:
        ``{"decision": "promoted"|"refused", "release": id|None, "reasons": [...], "figures": {...}}``.

    Raises:
        PromotionError: a run that is unknown, not succeeded, has no model, or another promote is running.
    """
    from training.releases.jobs import PROMOTE_LOCK, FileLock, JobBusyError

    models_dir = Path(home) / "models"
    try:
        run = load_run(models_dir, run_id)
        rdir = run_dir(models_dir, run_id)
    except TrainingError as exc:
        raise PromotionError(str(exc)) from None
    if run.get("state") != "succeeded":
        raise PromotionError(f"run {run_id} is {run.get('state')!r}, not succeeded; only a finished run is promoted")
    model = rdir / "model"
    if not (model / "config.json").is_file() or not any(model.glob("*.safetensors")):
        raise PromotionError(f"run {run_id} has no complete model in {model}; retrain it")
    payload = {"run_id": run_id, "reasons": decision.reasons, "figures": decision.figures, "forced": force}
    if not (decision.promote or force):
        store.add_promotion("refused", run_id, None, payload)
        logger.info("run %s refused: %s", run_id, "; ".join(decision.reasons))
        return {"decision": "refused", "release": None, **payload}
    try:
        lock = FileLock(home, PROMOTE_LOCK, run_id).acquire()
    except JobBusyError as exc:
        raise PromotionError(str(exc)) from None
    try:
        from training.releases.retention import remove_orphan_folders

        remove_orphan_folders(models_dir, store, releases_locked=True)  # what a killed promote left behind
        parent = current_release(models_dir)
        release_id = _new_release_id()
        dest = models_dir / "releases" / release_id
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(model, dest)
        for f in dest.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(dest)
        if hook:
            hook("copied")
        manifest = {
            "id": release_id,
            "release_id": release_id,
            "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id,
            "base_model": run.get("base_model"),
            "parent": parent.get("id") if parent else None,
            "metrics": decision.figures,
            "gate": {"promote": decision.promote, "reasons": decision.reasons, "forced": force},
            "data": run.get("data"),
            "split": run.get("split"),
            "config": run.get("config"),
            "blend": run.get("blend"),
        }
        manifest["vectors"] = _shipped_vectors(dest)
        write_json_atomic(dest / "manifest.json", manifest)
        fsync_dir(dest)
        if hook:
            hook("manifest_written")
        if registry is not None:
            registry.publish(dest, release_id, changed_by=f"promote {run_id}")
        flip_current(models_dir, release_id, hook)
        store.add_promotion("promoted", run_id, release_id, {**payload, "parent": manifest["parent"]})
        logger.info("run %s promoted as %s (parent %s)", run_id, release_id, manifest["parent"])
        return {"decision": "promoted", "release": release_id, "parent": manifest["parent"], **payload}
    finally:
        lock.release()


def rollback(home: Path, store: Any, hook: Hook | None = None, registry: Any = None) -> dict[str, Any]:
    """Point ``current`` back at the parent of the current release; record it (and in ``registry``, if shared).

    Raises:
        PromotionError: no current release, no parent, or the parent is incomplete.
    """
    from training.releases.jobs import PROMOTE_LOCK, FileLock, JobBusyError

    models_dir = Path(home) / "models"
    try:
        lock = FileLock(home, PROMOTE_LOCK, "rollback").acquire()
    except JobBusyError as exc:
        raise PromotionError(str(exc)) from None
    try:
        if registry is not None:
            registry.sync(models_dir)  # the shared current release is the one rolled back
        cur = current_release(models_dir)
        if cur is None:
            raise PromotionError("No current release to roll back (models/current is missing or incomplete)")
        parent = cur.get("parent")
        if not parent:
            raise PromotionError(f"release {cur.get('id')} has no parent release to roll back to")
        if registry is not None and not (models_dir / "releases" / parent / "manifest.json").is_file():
            try:
                registry.download(parent, models_dir)
            except LookupError as exc:
                raise PromotionError(f"parent release {parent} is not available: {exc}") from None
        if not (models_dir / "releases" / parent / "manifest.json").is_file():
            raise PromotionError(f"parent release {parent} is missing or has no manifest.json; cannot roll back")
        if registry is not None:
            registry.set_current(parent, changed_by=f"rollback from {cur.get('id')}")
        flip_current(models_dir, parent, hook)
        store.add_promotion("rollback", cur.get("id"), parent, {"from": cur.get("id"), "to": parent})
        logger.info("rolled back from %s to %s", cur.get("id"), parent)
        return {"decision": "rollback", "from": cur.get("id"), "release": parent}
    finally:
        lock.release()
