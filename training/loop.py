"""The learning loop's steps: mine, train, evaluate on held-out questions, promote.

Each step takes a :class:`training.workspace.Workspace` (the data home, its settings, store, indexes and ranking
path) and a :class:`training.releases.jobs.JobContext`, so the CLI, ``reranker_admin`` and the nightly ``agro loop``
run the same code. It sits at the top of ``training`` because it composes all four subpackages: events (feedback
to mine), learning (miners, trainer, calibration), evaluation and releases (gate, promote).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reranker.vectors import VECTORS_FILE
from retrieval.types import located_text
from training.learning.calibrate import calibrate_alpha, calibration_split, choose_dense_weight
from training.learning.miners import (
    MinedSplit,
    Triplet,
    extract_doc_pair,
    heldout_questions,
    mine_bootstrap,
    mine_feedback,
    mine_golden,
    mine_identifiers,
    query_hash,
    query_key,
    question_hashes,
    split_by_query,
)
from training.releases.promote import GateDecision, current_release, gate, promote_run
from training.workspace import Workspace
from training.learning.trainer import (
    TrainingError,
    load_run,
    load_split,
    run_dir,
    train_run,
    write_json_atomic,
    write_split,
)

__all__ = [
    "LoopOutcome",
    "chunk_lookup",
    "cv_folds",
    "evaluate_run",
    "fused_rank_fn",
    "mine",
    "parse_sources",
    "promote_step",
    "run_bootstrap",
    "run_loop",
    "train_step",
    "trainable_triplets",
]

logger = logging.getLogger(__name__)

SOURCES = ("feedback", "golden", "bootstrap")


def fused_rank_fn(ws: Workspace, k: int = 30):
    """``(query, corpus) -> fused hits`` on the corpus's current generation (what the reranker reranks)."""

    def rank(query: str, corpus: str):
        return ws.path.retrieve(ws.generation(corpus), query, k, "fused").hits

    return rank


def chunk_lookup(ws: Workspace):
    """``(corpus, path, start, end) -> (doc_id, text)`` of the indexed chunk overlapping the span most."""

    def look(corpus: str, path: str, start: int, end: int):
        try:
            gen = ws.generation(corpus)
        except (ValueError, OSError):
            return None
        best, overlap = None, 0
        for c in gen.chunks:
            if c.path != path:
                continue
            ov = min(c.end_line, end) - max(c.start_line, start) + 1
            if ov > overlap:
                best, overlap = c, ov
        return (best.doc_id, located_text(best.path, best.symbol, best.text)) if best is not None else None

    return look


def parse_sources(dataset: str | None) -> tuple[list[str], Path | None, str | None]:
    """``reranker_admin``'s ``dataset`` for mining: None/``feedback``, ``golden`` / ``golden:<corpus>`` or a dataset
    name (feedback + golden; :func:`training.releases.datasets.resolve_dataset` finds the file), ``bootstrap[:<corpus>]``.
    Returns (sources, golden path as given, bootstrap corpus)."""
    if not dataset or dataset == "feedback":
        return ["feedback"], None, None
    if dataset.startswith("bootstrap"):
        corpus = dataset.partition(":")[2] or None
        return ["bootstrap"], None, corpus
    path = dataset.partition(":")[2] if dataset.startswith("golden:") else dataset
    return ["feedback", "golden"], Path(path), None


def mine(
    ws: Workspace,
    ctx: Any,
    sources: Sequence[str] = ("feedback",),
    *,
    golden_path: Path | None = None,
    corpus: str | None = None,
) -> MinedSplit:
    """Mine every requested source and split by query (seeded, ``TrainingSettings.heldout_fraction``)."""
    ts = ws.settings.training
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise TrainingError(f"mining sources expect values among {SOURCES}, but got {bad}")
    triplets: list[Triplet] = []
    counts: dict[str, int] = {}
    fixed: dict[str, bool] = {}  # history questions: held out when among the newest (a time split)
    history: dict[str, dict] = {}
    if "feedback" in sources:
        got = mine_feedback(ws.store, corpus=corpus, negatives_per_query=ts.negatives_per_query,
                            chunk_lookup=chunk_lookup(ws))
        counts["feedback"] = len(got)
        triplets += got
    if "golden" in sources:
        from training.evaluation.golden import load_golden

        if golden_path is None or not Path(golden_path).is_file():
            raise TrainingError(f"golden source needs a golden.json path, but got {golden_path}")
        items = [it for it in load_golden(golden_path) if it.repo in set(ws.corpora())]
        got = mine_golden(items, fused_rank_fn(ws), negatives_per_query=ts.negatives_per_query)
        counts["golden"] = len(got)
        triplets += got
    if "bootstrap" in sources:
        targets = [corpus] if corpus else list(ws.corpora())
        if not targets:
            raise TrainingError("No corpus is indexed: run `agro index /path/to/repo` before `agro bootstrap`")
        for c in targets:
            gen = ws.generation(c)
            ctx.log("bootstrap: mining %s (%d chunks)", c, len(gen.chunks))
            n_history = 0
            if ts.history_enabled:
                hist = _mine_history(ws, ctx, c, gen, fixed)
                history[c] = hist["report"]
                n_history = hist["questions"]
                counts[f"history:{c}"] = n_history
                triplets += hist["triplets"]
                if len(hist["triplets"]) >= ts.min_triplets and not ts.history_with_docstrings:  # enough alone
                    continue
            got = mine_bootstrap(gen.chunks, fused_rank_fn(ws), c, cap=ts.bootstrap_cap,
                                 usage_share=ts.bootstrap_usage_share,
                                 negatives_per_query=ts.negatives_per_query, seed=ts.seed,
                                 progress=lambda i, n: ctx.progress(0.2 * i / max(n, 1), f"mining {i}/{n}"),
                                 cancelled=ctx.cancelled)
            counts[f"bootstrap:{c}"] = len(got)
            if ts.bootstrap_usage_share > 0:
                counts[f"bootstrap_usage:{c}"] = sum(t.source == "corpus_usage" for t in got)
            triplets += got
            if not n_history and len(got) < ts.min_triplets:  # neither docstrings nor history: names and signatures
                ids = mine_identifiers(gen.chunks, fused_rank_fn(ws), c, cap=ts.bootstrap_cap,
                                       negatives_per_query=ts.negatives_per_query, seed=ts.seed)
                counts[f"identifiers:{c}"] = len(ids)
                triplets += ids
    split = split_by_query(triplets, ts.heldout_fraction, ts.seed, fixed=fixed)
    split.info["sources"] = counts
    if history:
        split.info["history"] = history
    ctx.log("mined %s -> %d train / %d held-out triplets (%d / %d queries)", counts, len(split.train),
            len(split.heldout), split.info["train_queries"], split.info["heldout_queries"])
    return split


def _mine_history(ws: Workspace, ctx: Any, corpus: str, gen: Any, fixed: dict[str, bool]) -> dict[str, Any]:
    """The history miner on one corpus: questions, triplets, and the time split recorded into ``fixed``."""
    from retrieval.chunking import chunk_file
    from training.learning.history import history_triplets, mine_history

    ts = ws.settings.training
    index_settings = ws.settings.index
    qs, report = mine_history(
        Path(gen.root), gen.chunks, lambda path, text: chunk_file(path, text, index_settings),
        max_questions=ts.history_max_questions, max_commits=ts.history_max_commits,
        since_days=ts.history_max_age_days, max_files=ts.history_max_files, max_positives=ts.history_max_positives,
        cancelled=ctx.cancelled)
    ctx.log("bootstrap: %s", report.summary())
    got = history_triplets(qs, fused_rank_fn(ws), corpus, negatives_per_query=ts.negatives_per_query,
                           progress=lambda i, n: ctx.progress(0.2 * i / max(n, 1), f"history {i}/{n}"),
                           cancelled=ctx.cancelled)
    # qs is newest first: the newest share is held out, so the gate asks the past to predict the future
    n_held = math.ceil(len(qs) * ts.heldout_fraction) if len(qs) >= 2 else 0
    for i, q in enumerate(qs):
        fixed[query_key(corpus, q.query)] = i < n_held
    return {"questions": len(qs), "triplets": got,
            "report": {**report.to_dict(), "heldout_questions": n_held,
                       "heldout_since": qs[n_held - 1].ts if n_held else None}}


def export_triplets(ws: Workspace, split: MinedSplit) -> Path:
    """Write ``exports/triplets.jsonl`` (training side only, the seeds' format)."""
    from training.events.logs_io import write_jsonl_atomic

    out = Path(ws.home) / "exports" / "triplets.jsonl"
    write_jsonl_atomic(out, (t.to_dict() for t in split.train))
    return out


def train_step(ws: Workspace, ctx: Any, split: MinedSplit, *, extra: dict | None = None,
               weigh_dense: bool = True, kind: str | None = None, fold: bool = False) -> dict[str, Any]:
    """Train a candidate into ``models/runs/<ctx.run_id>``; returns its run.json.

    Its blend (``run.json`` ``blend``, carried into a release's manifest) gets the dense weight chosen on all its
    training questions (unless ``weigh_dense`` is off: a pre-trained base is never served) and the alpha calibrated
    on its calibration slice, or ``uncalibrated_alpha``.
    """
    ts = ws.settings.training
    kind = kind or (ts.model_kind if ts.model_kind != "auto" else "bi-encoder")
    # a cross-validation fold trains on (k-1)/k of questions that passed AGRO_TRAINING_MIN_TRIPLETS together: the
    # floor is for the released model, trained on all of them, not for the folds that estimate it
    ts = ts.model_copy(update={"model_kind": kind, **({"min_triplets": 1} if fold else {})})
    rr = ws.settings.reranker
    if "dense_weight" in rr.model_fields_set or not weigh_dense:  # set by the user: it is what will be served
        weighing = {"dense_weight": rr.dense_weight,
                    "reason": "AGRO_RERANKER_DENSE_WEIGHT is set" if weigh_dense else "not weighed (a base)"}
    else:
        ctx.progress(0.2, "weighing dense against fused on the training questions")
        # as many training questions as a calibration slice of calibration_min_queries needs: below that, the best
        # grid point is noise (docstring_httpx's 52 training questions preferred 0.25, its test half 1.0)
        need = math.ceil(ts.calibration_min_queries / ts.calibration_fraction)
        weighing = choose_dense_weight(ws, split.train, min_queries=need, seed=ts.seed,
                                       views=lambda ts_: bootstrap_gate_views(ws, ts_))
    dense_weight = float(weighing["dense_weight"])
    calibration: list = []
    if ts.calibrate_alpha:
        split, calibration = calibration_split(split, ts.calibration_fraction, ts.seed, ts.calibration_min_queries)
    models_dir = Path(ws.home) / "models"
    run = train_run(
        models_dir, ctx.run_id, split, ts,
        progress=lambda f, m: ctx.progress(0.2 + 0.55 * f, m), cancelled=ctx.cancelled, extra=extra,
        max_train_pairs=getattr(ts, "max_train_pairs", None), embed_model=ws.settings.retrieval.embed_model,
    )
    bi = run.get("model_kind") == "bi-encoder"
    default_alpha, default_name = ((ts.bi_encoder_alpha, "AGRO_TRAINING_BI_ENCODER_ALPHA") if bi
                                   else (ts.uncalibrated_alpha, "AGRO_TRAINING_UNCALIBRATED_ALPHA"))
    if calibration:
        ctx.log("calibrating the blend weight of run %s on %d calibration triplets", ctx.run_id, len(calibration))
        blend = calibrate_alpha(ws, run_dir(models_dir, ctx.run_id) / "model", calibration,
                                progress=lambda i, n: ctx.progress(0.75 + 0.05 * i / n, f"calibrating alpha {i}/{n}"),
                                generations=bootstrap_gate_views(ws, calibration), dense_weight=dense_weight,
                                default=default_alpha)
    else:
        blend = {"alpha": None, "reason": split.info.get("calibration", {}).get("reason", "calibration is off "
                 "(AGRO_TRAINING_CALIBRATE_ALPHA=0)")}
    if blend.get("alpha") is None:  # not calibrated: served (and judged) with the measured default for runs
        served = f"served with {default_name} {default_alpha}"
        blend.update(alpha=default_alpha, calibrated=False, reason=f"{blend.get('reason')}; {served}")
    blend["dense_weight"] = dense_weight
    blend["dense_weighing"] = {k: v for k, v in weighing.items() if k != "dense_weight"}
    run["blend"] = blend
    write_json_atomic(run_dir(models_dir, ctx.run_id) / "run.json", run)
    return run


def bootstrap_gate_views(ws: Workspace, heldout: Sequence[Triplet]) -> dict[str, Any]:
    """corpus -> an in-memory view of its index in which each held-out corpus-bootstrap answer has lost its
    docstring (the question). Without it, retrieval finds a docstring question verbatim in its own chunk and no
    reranker can beat it; real questions do not quote the code's documentation."""
    from retrieval.view import replaced_view

    wanted: dict[str, set[str]] = {}
    for t in heldout:
        if t.source == "corpus_bootstrap":
            wanted.setdefault(t.corpus, set()).add(t.positive_doc_id)
    views = {}
    for corpus, doc_ids in wanted.items():
        try:
            gen = ws.generation(corpus)
        except (ValueError, OSError):
            continue
        texts = {}
        for c in gen.chunks:
            if c.doc_id in doc_ids:
                pair = extract_doc_pair(c.text, c.language)
                if pair is not None:
                    texts[c.doc_id] = pair[1]
        if texts:
            views[corpus] = replaced_view(gen, texts, ws.embedder(), ws.settings.retrieval)
    return views


def evaluate_run(ws: Workspace, ctx: Any, run_id: str, *, ship: bool = True) -> dict[str, Any]:
    """Candidate vs current release vs retrieval alone on the run's held-out questions, and the gate's decision.

    Saves the report (store ``evaluations`` + ``exports/evals``) and ``runs/<run_id>/evaluation.json``. A
    bi-encoder candidate the gate accepts (and ``ship``) embeds the indexed chunks with the model it was judged
    with, reusing the vectors its evaluation computed, to ship them with its release.
    """
    from training.evaluation.datasets import EvalError, queries_from_feedback
    from training.evaluation.report import save_report
    from training.evaluation.run import load_reranker, run_evaluation

    models_dir = Path(ws.home) / "models"
    run = load_run(models_dir, run_id)
    if run.get("state") != "succeeded":
        raise TrainingError(f"run {run_id} is {run.get('state')!r}; only a succeeded run can be evaluated")
    d = run_dir(models_dir, run_id)
    split = load_split(d)
    rows = heldout_questions(split.heldout)
    known = set(ws.corpora())
    rows = [r for r in rows if r["corpus"] in known]
    ts = ws.settings.training
    rr = ws.settings.reranker
    configs = ["fused"]
    rerank_path = None
    cur = current_release(models_dir)
    notes = []
    if cur is not None:
        try:
            current = load_reranker(cur["_dir"], rr, release_id=str(cur.get("id")), manifest=cur)
            rerank_path = ws.path.with_reranker(current, rr)
            configs.append("fused+rerank")
        except (ValueError, OSError, RuntimeError) as exc:
            notes.append(f"current release {cur.get('id')} could not be loaded ({exc}); compared with retrieval only")
    if not rows:
        decision = GateDecision(False, [f"no held-out questions (need at least {ts.promote_min_queries}); "
                                        "gather more feedback or golden questions"], {"n_queries": 0})
        result = {"run_id": run_id, "decision": decision.to_dict(), "notes": notes,
                  "current_release": cur.get("id") if cur else None}
        write_json_atomic(d / "evaluation.json", result)
        return result
    human = {r["qid"] for r in rows if not r.get("synthetic")}
    if not human and ts.synthetic_only == "conservative":  # judged (and served) at the conservative blend
        blend = dict(run.get("blend") or {})
        if blend.get("alpha") is None or blend["alpha"] > ts.synthetic_alpha:
            blend.update(alpha=ts.synthetic_alpha, calibrated=False,
                         reason=f"judged only on synthetic questions: AGRO_TRAINING_SYNTHETIC_ALPHA "
                         f"{ts.synthetic_alpha} (was {blend.get('alpha')})")
            run["blend"] = blend
            write_json_atomic(d / "run.json", run)
    ctx.log("evaluating run %s on %d held-out questions (%s + candidate)", run_id, len(rows), ", ".join(configs))
    views = bootstrap_gate_views(ws, split.heldout)
    for c, v in views.items():
        notes.append(f"corpus-bootstrap questions of {c} scored on a view of the index without their answers' "
                     f"docstrings ({v.generation_id})")
    try:
        candidate = load_reranker(str(d / "model"), rr)  # after the blend above: judged at what it would serve
        report = run_evaluation(
            queries_from_feedback(rows), Path(ws.home), ws.settings.index, ws.settings.retrieval,
            configs=configs, rerank_path=rerank_path, candidate_model=str(d / "model"), reranker_settings=rr,
            candidate_path=ws.path.with_reranker(candidate, rr),
            model=str(cur.get("id")) if cur else None, embedder=ws.embedder(), levels=("span", "file"),
            index_backend=ws.indexes, generations=views,
            k=50, progress=lambda i, n: ctx.progress(0.8 + 0.15 * i / max(n, 1), f"evaluating {i}/{n}"),
        )
    except EvalError as exc:
        raise TrainingError(f"evaluation of run {run_id} failed: {exc}") from None
    report.name = f"heldout-{run_id}"
    report.notes.extend(notes)
    saved = save_report(report, ws.store, Path(ws.home) / "exports")
    names = {"fused+candidate": "candidate", "fused": "retrieval", "fused+rerank": "current"}
    per_query = {names[c]: report.per_query[c]["span"] for c in report.configs}
    if human:  # questions people wrote decide whenever there are any; synthetic ones are reported only
        per_query = {c: [r for r in rs if r["qid"] in human] for c, rs in per_query.items()}
    if "current" in per_query:  # the current release is compared only on questions it did not learn from
        trained = trained_questions(models_dir, cur)
        seen = {r["qid"] for r in rows if query_hash(query_key(r["corpus"], r["query"])) in trained}
        per_query["current"] = [{**r, "trained_on": r["qid"] in seen} for r in per_query["current"]]
    decision = gate(per_query, delta=ts.promote_delta, min_queries=ts.promote_min_queries, seed=ts.seed)
    sources = sorted({s for r in rows if r["qid"] in human for s in r.get("sources", [])})
    decision.figures["judged_on"] = {
        "questions": "written by people" if human else "synthetic only", "n": len(human) or len(rows),
        "synthetic_reported_only": len(rows) - len(human) if human else 0, "sources": sources}
    if not human:
        if ts.synthetic_only == "refuse":
            decision.promote = False
            decision.reasons.append(
                "judged only on synthetic questions (docstrings, identifiers, call sites), which a candidate trained "
                "on the same kind wins without helping real questions: refused (AGRO_TRAINING_SYNTHETIC_ONLY=refuse). "
                "Questions people wrote (git history, golden.json, searches with feedback) can promote it")
        else:
            decision.reasons.append(f"judged only on synthetic questions: judged and served at the conservative "
                                    f"blend alpha {(run.get('blend') or {}).get('alpha')}")
    decision.figures["levels"] = {c: report.metrics[c] for c in report.configs}
    decision.figures["candidate_blend"] = run.get("blend")  # the alpha the candidate was judged (and would serve) at
    from training.evaluation.report import format_table

    table = format_table(report)
    result = {"run_id": run_id, "eval_id": saved.eval_id, "decision": decision.to_dict(), "table": table,
              "notes": notes, "current_release": cur.get("id") if cur else None, "per_query": per_query}
    write_json_atomic(d / "evaluation.json", result)
    ctx.log("gate for %s: %s (%s)", run_id, "promote" if decision.promote else "refuse", "; ".join(decision.reasons))
    if decision.promote and ship:
        from training.releases.shipping import ship_vectors

        ship_vectors(ws, ctx, d / "model", candidate)
    return result


def trained_questions(models_dir: Path, release: Mapping[str, Any] | None) -> set[str]:
    """Fingerprints (:func:`training.learning.miners.query_hash`) of the questions a release learned from: its
    manifest's record, else its run's training data when the run folder is still there, else none known."""
    if not release:
        return set()
    data = release.get("data") or {}
    if "trained_query_hashes" in data:
        return set(data["trained_query_hashes"])
    try:  # a cross-validated run's final model has every question on its training side
        return set(question_hashes(load_split(run_dir(Path(models_dir), str(release.get("run_id")))).train))
    except (TrainingError, OSError, ValueError):
        return set()


def promote_step(ws: Workspace, ctx: Any, run_id: str, *, force: bool = False, reload: bool = False) -> dict[str, Any]:
    """Evaluate (unless ``runs/<id>/evaluation.json`` exists and was made against the release that is current now)
    and promote or refuse; record the decision."""
    models_dir = Path(ws.home) / "models"
    d = run_dir(models_dir, run_id)
    ev_path = d / "evaluation.json"
    ev = json.loads(ev_path.read_text(encoding="utf-8")) if ev_path.is_file() else None
    cur = current_release(models_dir)
    if ev is None or ev.get("current_release") != (cur.get("id") if cur else None):
        ev = evaluate_run(ws, ctx, run_id)  # the gate must compare with the release serving now
    dec = ev["decision"]
    decision = GateDecision(dec["promote"], dec["reasons"], dec["figures"])
    if (decision.promote or force) and not (d / "model" / VECTORS_FILE).is_file():
        from training.releases.shipping import ship_vectors

        ship_vectors(ws, ctx, d / "model")  # a forced promotion, or a cross-validated run's final model
    out = promote_run(Path(ws.home), run_id, decision, ws.store, force=force, registry=ws.releases)
    if out["decision"] == "promoted" and reload and ws.reload is not None:
        ws.reload()  # this process serves the new release at once; others on their next check
    ctx.log("promotion of %s: %s %s", run_id, out["decision"], out.get("release") or "")
    return out


class LoopOutcome:
    """Exit statuses of ``agro loop`` / ``agro bootstrap``: 0 promoted, 1 ran but nothing promoted."""

    PROMOTED = 0
    NOT_PROMOTED = 1


def run_loop(
    ws: Workspace,
    ctx: Any,
    sources: Sequence[str] = ("feedback",),
    *,
    golden_path: Path | None = None,
    corpus: str | None = None,
    promote: bool = True,
    reload: bool = False,
) -> dict[str, Any]:
    """Compact, mine, train, evaluate and (gate permitting) promote, once. Too few triplets ends with ``status`` 1.

    Compaction applies the retention rules first (:func:`training.releases.retention.compact`): query events older
    than ``ws.retention_days`` without feedback and incomplete model folders go.
    """
    from training.releases.retention import compact

    compacted = compact(ws.store, Path(ws.home), ws.retention_days)
    ctx.log(f"compacted: {compacted['events']} old events without feedback, {len(compacted['folders'])} folders")
    split = mine(ws, ctx, sources, golden_path=golden_path, corpus=corpus)
    ts = ws.settings.training
    folds = cv_folds(split, ts) if "bootstrap" not in sources else None
    usable = trainable_triplets(split, folds)
    if usable < ts.min_triplets:
        msg = (_bootstrap_shortfall(split, ts.min_triplets) if "bootstrap" in sources else
               f"Too few training triplets: {usable} (need {ts.min_triplets}). Send more feedback, "
               "add golden.json questions, or run `agro bootstrap`.")
        ctx.log(msg)
        d = run_dir(Path(ws.home) / "models", ctx.run_id)
        write_split(d, split)
        write_json_atomic(d / "run.json", {"run_id": ctx.run_id, "state": "skipped", "reason": msg,
                                           "split": split.info})
        return {"status": LoopOutcome.NOT_PROMOTED, "run_id": ctx.run_id, "decision": "skipped", "reason": msg}
    if ctx.cancelled():
        from training.learning.trainer import TrainingCancelled

        raise TrainingCancelled(f"run {ctx.run_id} was cancelled")
    export_triplets(ws, split)
    if folds is not None:
        return _run_cross_validated(ws, ctx, split, folds, sources, promote=promote, reload=reload)
    if ts.model_kind == "auto":
        return _run_both_kinds(ws, ctx, split, sources, promote=promote, reload=reload)
    run = train_step(ws, ctx, split, extra={"sources": list(sources)})
    ev = evaluate_run(ws, ctx, ctx.run_id)
    out: dict[str, Any] = {"run_id": ctx.run_id, "trained_sec": run.get("elapsed_sec"), "gate": ev["decision"],
                           "table": ev.get("table"), "mined": split.info.get("sources"), "blend": run.get("blend"),
                           "history": split.info.get("history"), "train_triplets": len(split.train)}
    if not promote:
        out.update(status=LoopOutcome.NOT_PROMOTED, decision="not-attempted")
        return out
    pr = promote_step(ws, ctx, ctx.run_id, reload=reload)
    out.update(decision=pr["decision"], release=pr.get("release"),
               status=LoopOutcome.PROMOTED if pr["decision"] == "promoted" else LoopOutcome.NOT_PROMOTED)
    return out


def trainable_triplets(split: MinedSplit, folds: list[set[str]] | None) -> int:
    """The triplets a run can learn from: the training side of a fixed split, or every triplet when the run is
    cross-validated (each fold's model trains on the others and the released one on all of them), so a few dozen
    questions are not refused for the share a fixed split would have held out."""
    return len(split.train) + (len(split.heldout) if folds is not None else 0)


def cv_folds(split: MinedSplit, ts: Any) -> list[set[str]] | None:
    """Query-key folds for cross-validation, or None when the fixed split holds out enough people-written
    questions (``cv_below``), cross-validation is off, or there are too few questions for ``cv_folds`` folds."""
    from training.learning.miners import SYNTHETIC_SOURCES, _side

    if ts.cv_folds < 2:
        return None
    human_held = {query_key(t.corpus, t.query) for t in split.heldout if t.source not in SYNTHETIC_SOURCES}
    if len(human_held) >= ts.cv_below:
        return None
    keys = sorted({query_key(t.corpus, t.query) for t in split.train + split.heldout
                   if t.source not in SYNTHETIC_SOURCES}, key=lambda k: (_side(k, ts.seed), k))
    if len(keys) < 2 * ts.cv_folds:
        return None
    return [set(keys[i::ts.cv_folds]) for i in range(ts.cv_folds)]


class _FoldCtx:
    """A job context for one fold: its own run folder, the parent's log, progress (within a share) and cancel."""

    def __init__(self, parent: Any, run_id: str, lo: float, hi: float) -> None:
        self.parent, self.run_id, self._lo, self._hi = parent, run_id, lo, hi

    def log(self, line: str, *args: Any) -> None:
        self.parent.log(f"[{self.run_id}] {line}", *args)

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.parent.progress(self._lo + (self._hi - self._lo) * fraction, message)

    def cancelled(self) -> bool:
        return self.parent.cancelled()


def _run_cross_validated(ws: Workspace, ctx: Any, split: MinedSplit, folds: list[set[str]], sources: Sequence[str],
                         *, promote: bool, reload: bool) -> dict[str, Any]:
    """k candidates, each trained without one fold and judged on it; the gate decides on the pooled per-question
    rows; then one model trained on every question is the run's candidate, released with that evidence."""
    ts = ws.settings.training
    models_dir = Path(ws.home) / "models"
    every = split.train + split.heldout
    k = len(folds)
    pooled: dict[str, list] = {}
    info = []
    ctx.log("cross-validating over %d questions in %d folds (a fixed split would hold out too few)",
            sum(len(f) for f in folds), k)
    for i, keys in enumerate(folds, 1):
        fctx = _FoldCtx(ctx, f"{ctx.run_id}-cv{i}", (i - 1) / (k + 1), i / (k + 1))
        held = [t for t in every if query_key(t.corpus, t.query) in keys]
        train = [t for t in every if query_key(t.corpus, t.query) not in keys]
        fsplit = MinedSplit(train, held, {**split.info, "cv": {"fold": i, "folds": k, "questions": len(keys)}})
        train_step(ws, fctx, fsplit, extra={"sources": list(sources), "cv_of": ctx.run_id}, fold=True)
        ev = evaluate_run(ws, fctx, fctx.run_id, ship=False)  # a fold's candidate is never released
        for c, rows in (ev.get("per_query") or {}).items():
            pooled.setdefault(c, []).extend(rows)
        figs = ev["decision"]["figures"]
        info.append({"fold": i, "run_id": fctx.run_id, "questions": len(keys), "decision": ev["decision"]["promote"],
                     "figures": {c: v for c, v in figs.items() if c in ("candidate", "retrieval", "current")}})
    decision = gate(pooled, delta=ts.promote_delta, min_queries=ts.promote_min_queries, seed=ts.seed)
    decision.figures["cross_validation"] = {"folds": info, "pooled_questions": len(pooled.get("candidate", []))}
    decision.reasons.insert(0, f"cross-validated: {k} folds, each candidate judged on questions it did not see "
                               f"({len(pooled.get('candidate', []))} pooled)")
    final = MinedSplit(every, [], {**split.info, "cv": {"folds": k, "trained_on": "every question"}})
    final_ctx = _FoldCtx(ctx, ctx.run_id, k / (k + 1), 0.97)
    run = train_step(ws, final_ctx, final, extra={"sources": list(sources), "cross_validated": k})
    cur = current_release(models_dir)
    result = {"run_id": ctx.run_id, "decision": decision.to_dict(), "table": None,
              "notes": [f"released with the pooled evidence of {k} cross-validation folds"],
              "current_release": cur.get("id") if cur else None}
    write_json_atomic(run_dir(models_dir, ctx.run_id) / "evaluation.json", result)
    ctx.log("gate for %s: %s (%s)", ctx.run_id, "promote" if decision.promote else "refuse",
            "; ".join(decision.reasons))
    out: dict[str, Any] = {"run_id": ctx.run_id, "trained_sec": run.get("elapsed_sec"), "gate": decision.to_dict(),
                           "table": None, "mined": split.info.get("sources"), "blend": run.get("blend"),
                           "train_triplets": len(every), "cross_validation": info}
    if not promote:
        out.update(status=LoopOutcome.NOT_PROMOTED, decision="not-attempted")
        return out
    pr = promote_step(ws, ctx, ctx.run_id, reload=reload)
    out.update(decision=pr["decision"], release=pr.get("release"),
               status=LoopOutcome.PROMOTED if pr["decision"] == "promoted" else LoopOutcome.NOT_PROMOTED)
    return out


def _run_both_kinds(ws: Workspace, ctx: Any, split: MinedSplit, sources: Sequence[str], *, promote: bool,
                    reload: bool) -> dict[str, Any]:
    """``model_kind=auto``: a bi-encoder candidate, then a cross-encoder one when the first took less than half
    of ``time_budget_sec``; each is judged by the gate on the same held-out questions, and the one with the larger
    paired MRR@10 gain among those the gate accepts is promoted (its run.json records the choice and why)."""
    import time

    ts = ws.settings.training
    models_dir = Path(ws.home) / "models"
    t0 = time.monotonic()
    tried: list[dict[str, Any]] = []
    for i, kind in enumerate(("bi-encoder", "cross-encoder")):
        spent = time.monotonic() - t0
        if i and spent > ts.time_budget_sec / 2:
            tried.append({"kind": kind, "skipped": f"the first kind took {spent:.0f} s, over half of "
                                                   f"AGRO_TRAINING_TIME_BUDGET_SEC {ts.time_budget_sec}"})
            continue
        sub = _FoldCtx(ctx, f"{ctx.run_id}-{'bi' if kind == 'bi-encoder' else 'ce'}", 0.45 * i, 0.45 * (i + 1))
        run = train_step(ws, sub, split, extra={"sources": list(sources), "kind_of": ctx.run_id}, kind=kind)
        ev = evaluate_run(ws, sub, sub.run_id)
        best = ev["decision"]["figures"].get("best_other")
        gain = (ev["decision"]["figures"].get(f"mrr_gain_vs_{best}") or {}).get("mean") if best else None
        tried.append({"kind": kind, "run_id": sub.run_id, "promote": ev["decision"]["promote"], "gain": gain,
                      "sec": round(time.monotonic() - t0 - spent, 1), "table": ev.get("table"),
                      "decision": ev["decision"], "trained_sec": run.get("elapsed_sec"), "blend": run.get("blend")})
    ran = [t for t in tried if "run_id" in t]
    accepted = [t for t in ran if t["promote"]]
    chosen = max(accepted or ran, key=lambda t: t["gain"] if t["gain"] is not None else float("-inf"))
    why = (f"{chosen['kind']}: the gate accepted it with the larger mean MRR@10 gain ({chosen['gain']:+.4f})"
           if accepted else f"{chosen['kind']}: neither kind passed the gate; this one came closer")
    choice = {"chosen": chosen["kind"], "run_id": chosen["run_id"], "why": why,
              "tried": [{k: v for k, v in t.items() if k not in ("table", "decision", "blend")} for t in tried]}
    d = run_dir(models_dir, chosen["run_id"])
    run_json = load_run(models_dir, chosen["run_id"])
    run_json["kind_choice"] = choice
    write_json_atomic(d / "run.json", run_json)
    ctx.log("model kind: %s", why)
    out: dict[str, Any] = {"run_id": ctx.run_id, "candidate_run": chosen["run_id"], "kind_choice": choice,
                           "trained_sec": chosen["trained_sec"], "gate": chosen["decision"], "table": chosen["table"],
                           "mined": split.info.get("sources"), "blend": chosen["blend"],
                           "history": split.info.get("history"), "train_triplets": len(split.train)}
    if not promote:
        out.update(status=LoopOutcome.NOT_PROMOTED, decision="not-attempted")
        return out
    pr = promote_step(ws, ctx, chosen["run_id"], reload=reload)
    out.update(decision=pr["decision"], release=pr.get("release"),
               status=LoopOutcome.PROMOTED if pr["decision"] == "promoted" else LoopOutcome.NOT_PROMOTED)
    return out


def _bootstrap_shortfall(split: MinedSplit, need: int) -> str:
    """What the corpus bootstrap mined, why it was not enough, and what to do next (never `agro bootstrap` again)."""
    counts = split.info.get("sources") or {}
    parts = []
    for key, n in counts.items():
        kind, _, corpus = key.partition(":")
        label = {"history": "git history questions", "bootstrap": "docstring pairs",
                 "bootstrap_usage": "call-site pairs", "identifiers": "identifier pairs"}.get(kind, kind)
        parts.append(f"{n} {label} in {corpus}")
    why = []
    for corpus, rep in (split.info.get("history") or {}).items():
        if not rep.get("git"):
            why.append(f"{corpus}: history not mined ({rep.get('reason')})")
        elif rep.get("skipped"):
            top = ", ".join(f"{n} {k}" for k, n in sorted(rep["skipped"].items(), key=lambda kv: -kv[1])[:4])
            why.append(f"{corpus}: {rep.get('scanned', 0)} commits read, skipped {top}")
    if any(k.startswith("bootstrap:") and n == 0 for k, n in counts.items()):
        why.append("no function or class carries a docstring or leading comment")
    return (f"agro bootstrap mined too little to train: {len(split.train)} training triplets (need {need}) from "
            f"{', '.join(parts) or 'nothing'}" + (f" ({'; '.join(why)})" if why else "") + ". Next: index a clone "
            "that keeps its git history (`agro index /path/to/clone`), or search and send feedback (MCP "
            "submit_feedback, or `agro feedback EVENT_ID used --doc-id PATH:START-END`) and then run `agro loop`, or "
            "write golden.json questions and run `agro loop --golden golden.json`.")


def run_bootstrap(ws: Workspace, ctx: Any, corpus: str | None = None, *, promote: bool = True,
                  reload: bool = False) -> dict[str, Any]:
    """The corpus bootstrap end to end: mine (doc, code) pairs of the indexed corpus, train, evaluate, promote."""
    return run_loop(ws, ctx, ("bootstrap",), corpus=corpus, promote=promote, reload=reload)
