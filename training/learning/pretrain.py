"""A pre-trained base reranker built offline from code every machine has: the Python standard library.

There is no pre-trained cross-encoder on PyPI, and a fresh head on the MiniLM backbone learns little from the
few dozen questions of a first round of feedback. ``agro pretrain`` gives every later run a better start without
any download: it indexes a documented code base (default: this interpreter's standard library, tests and GUI
tools left out) in a scratch data home, mines (docstring, code without it) pairs with fused-retrieval hard
negatives (the corpus-bootstrap miner), trains a fresh-head cross-encoder on them and judges it on its held-out
pairs, scored on a view of the index without their docstrings (the bootstrap gate's view). The same functions as
``agro bootstrap`` do all of it; only the corpus differs.

The result is published as ``models/base/<id>/`` (the model files, then ``manifest.json`` last) and
``models/base/current`` is pointed at it atomically (new symlink, ``os.replace``). A crash at any instant leaves
the previous base, or none, in use. ``bases.resolve_base`` starts a run from it when there is no release and no
``AGRO_TRAINING_BASE_MODEL``. A base is never served by itself: only a run trained from it and promoted by the gate
reaches ``rag_search``.

Nothing of the user's corpora, feedback, queries or benchmark data is read.
"""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Any

from retrieval.atomic import fsync_dir, write_json_atomic
from training.learning.bases import base_dir
from training.learning.trainer import TrainingError
from training.workspace import LearningSettings

__all__ = [
    "STDLIB_IGNORES",
    "PretrainError",
    "run_pretrain",
    "stdlib_root",
]

logger = logging.getLogger(__name__)

CORPUS = "pretrain"
HELDOUT_FRACTION = 0.1  # ~400 held-out pairs at the default cap: enough to judge a base, and ~4 min to score

# The standard library's own tests, GUI tools, vendored and generated folders: not the documented API.
STDLIB_IGNORES = [
    "test/", "tests/", "idlelib/", "lib2to3/", "tkinter/", "turtledemo/", "site-packages/", "dist-packages/",
    "ensurepip/", "config-*/", "pydoc_data/", "encodings/", "lib-dynload/", "__phello__/", "distutils/",
]


class PretrainError(TrainingError):
    """The pre-training cannot run as asked; the message says what to change."""


def stdlib_root() -> Path:
    """This interpreter's standard library folder (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def _scratch_settings(settings: LearningSettings, source: Path, default_source: bool, cap: int | None,
                      max_pairs: int | None) -> LearningSettings:
    ignores = list(settings.index.extra_ignores) + (STDLIB_IGNORES if default_source else [])
    ts = settings.training
    training = ts.model_copy(update={
        "bootstrap_cap": cap or ts.pretrain_cap,
        "max_train_pairs": max_pairs or ts.pretrain_max_pairs,
        "calibrate_alpha": False,  # a base is never served: its blend weight is chosen when a run is promoted
        "model_kind": "cross-encoder",  # the base of cross-encoder runs; a bi-encoder starts from the embedding model
        "heldout_fraction": HELDOUT_FRACTION,
    })
    rr = settings.reranker
    return LearningSettings(
        index=settings.index.model_copy(update={"extra_ignores": ignores}),
        retrieval=settings.retrieval,
        # the held-out judgement reranks the top 30 (as the benches do), not the serving head: it only informs
        reranker=rr.model_copy(update={"topn": min(rr.topn or 30, 30)}),
        training=training,
    )


def run_pretrain(home: Path, settings: LearningSettings, ctx: Any, source: str | Path | None = None, *,
                 cap: int | None = None, max_pairs: int | None = None, embedder: Any = None,
                 keep_work: bool = False) -> dict[str, Any]:
    """Index ``source`` (default: the standard library) in a scratch home, bootstrap-train a fresh-head
    cross-encoder on it, evaluate it on its held-out pairs, and publish it as ``home/models/base/current``.

    Raises:
        PretrainError: the source is not a folder, or it yields too few documented functions.
    """
    from training.learning.trainer import run_dir
    from training.loop import evaluate_run, mine, train_step
    from training.releases.promote import switch_current
    from training.workspace import open_workspace

    default_source = source is None
    src = stdlib_root() if default_source else Path(source).expanduser().resolve()
    if not src.is_dir():
        raise PretrainError(f"pretrain source {src} is not a folder: pass a folder of documented code "
                            "(default: the Python standard library)")
    root = base_dir(Path(home))
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(".work-*"), *root.glob(".*.partial")]:
        # left by a killed pretrain: the training lock says none is running now
        logger.info("pretrain: removing %s (left by an interrupted run)", stale)
        shutil.rmtree(stale, ignore_errors=True)
    work = root / f".work-{ctx.run_id}"
    if settings.training.base_model:
        logger.info("pretrain starts from AGRO_TRAINING_BASE_MODEL=%s", settings.training.base_model)
    scratch = _scratch_settings(settings, src, default_source, cap, max_pairs)
    t0 = time.perf_counter()
    ws = open_workspace(work, scratch, embedder=embedder)
    try:
        ctx.log("pretrain: indexing %s into a scratch home (%s)", src, work)
        ctx.progress(0.0, "indexing the pre-training corpus")
        summary = ws.indexes.build(src, CORPUS, scratch.index, scratch.retrieval, ws.embedder(), None, True)
        ctx.log("pretrain: %d files, %d chunks indexed", summary.files, summary.chunks)
        split = mine(ws, ctx, ("bootstrap",), corpus=CORPUS)
        ts = scratch.training
        if len(split.train) < ts.min_triplets:
            raise PretrainError(
                f"{src} gave {len(split.train)} training pairs (need {ts.min_triplets}): pass a folder with more "
                "documented functions (docstrings or leading comments)")
        run = train_step(ws, ctx, split, extra={"sources": ["pretrain"], "pretrain_source": str(src)},
                         weigh_dense=False)
        ev = evaluate_run(ws, ctx, ctx.run_id)
        model = run_dir(work / "models", ctx.run_id) / "model"
        base_id = ctx.run_id
        dest = root / base_id
        tmp = root / f".{base_id}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp)
        fig = ev["decision"].get("figures", {})
        manifest = {
            "id": base_id,
            "kind": "pretrained",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(src),
            "default_source": default_source,
            "files": summary.files,
            "chunks": summary.chunks,
            "mined": split.info.get("sources"),
            "train_triplets": len(split.train),
            "heldout_triplets": len(split.heldout),
            "base_model": run.get("base_model"),
            "config": run.get("config"),
            "data": run.get("data"),
            "heldout": {"levels": fig.get("levels"), "n_queries": fig.get("n_queries"),
                        "notes": ev.get("notes")},
            "elapsed_sec": round(time.perf_counter() - t0, 1),
        }
        write_json_atomic(tmp / "manifest.json", manifest)  # last: a folder without it is incomplete
        fsync_dir(tmp)
        os.replace(tmp, dest)
        fsync_dir(root)
        switch_current(root, Path(base_id))
        ctx.log("pretrain: base %s published as models/base/current in %.0fs", base_id, manifest["elapsed_sec"])
        return {"base": base_id, "dir": str(dest), "manifest": manifest, "table": ev.get("table")}
    finally:
        ws.store.close()
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
