"""Fine-tune a reranker candidate: a bi-encoder (``SentenceTransformerTrainer``, the default) or a cross-encoder
(``CrossEncoderTrainer``), per ``TrainingSettings.model_kind``.

A run writes only to ``models/runs/<run_id>/``: ``data/`` (the mined split), ``model/`` (the candidate, never
served from there) and ``run.json`` (config, base model, data hashes, split, per-epoch metrics, state), replaced
atomically at each change of state. The base is the current release when there is one, else
``TrainingSettings.base_model``, else the pre-trained base of ``agro pretrain`` (``models/base/current``), else the
offline MiniLM backbone with a fresh head.

With ``TrainingSettings.student_layers`` the base is cut to its first N transformer layers (a faster student). When
it was cut from a trained model (or ``distill_teacher`` names one) and the loss is ``bce``, the student is distilled:
each pair's label blends the teacher's sigmoid score with the mined 0/1 label (``distill_weight``). The candidate is
saved and judged like any other.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retrieval.atomic import atomic_write, write_json_atomic
from retrieval.errors import AgroUserError
from training.learning.bases import BaseModel, resolve_base
from training.learning.miners import SYNTHETIC_SOURCES, MinedSplit, Triplet, data_hash, question_hashes

__all__ = [
    "TrainingCancelled",
    "TrainingError",
    "load_run",
    "load_split",
    "planned_epochs",
    "run_dir",
    "train_run",
    "write_json_atomic",
    "write_split",
]

logger = logging.getLogger(__name__)

_RUN_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_CHARS_PER_TOKEN = 8


class TrainingError(AgroUserError, RuntimeError):
    """Training cannot run as asked (too little data, bad base model); the message says what to do."""


class TrainingCancelled(TrainingError):
    """The run was cancelled; its folder is marked cancelled and is never promoted."""


def run_dir(models_dir: Path, run_id: str) -> Path:
    """``models/runs/<run_id>``, refusing ids that could name a path outside it."""
    if not run_id or not set(run_id) <= _RUN_ID_OK or run_id.startswith("."):
        raise TrainingError(f"run_id expects letters, digits, '-', '_' or '.', but got {run_id!r}")
    runs = (Path(models_dir) / "runs").resolve()
    d = (runs / run_id).resolve()
    if d.parent != runs:
        raise TrainingError(f"run {run_id!r} resolves outside {runs}; candidates must live in models/runs")
    return d


def load_run(models_dir: Path, run_id: str) -> dict[str, Any]:
    """The run's ``run.json``.

    Raises:
        TrainingError: unknown run or unreadable manifest.
    """
    d = run_dir(models_dir, run_id)
    try:
        return json.loads((d / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"No run {run_id!r} in {d.parent}: list runs with `agro runs`") from None
    except ValueError as exc:
        raise TrainingError(f"run {run_id}: run.json is unreadable ({exc})") from None


def _write_jsonl(path: Path, rows: Sequence[Triplet]) -> None:
    with atomic_write(path) as fh:
        for t in rows:
            fh.write(json.dumps(t.to_dict(with_corpus=True), ensure_ascii=False) + "\n")


def write_split(d: Path, split: MinedSplit) -> None:
    """Save a mined split into a run folder (``data/train.jsonl``, ``data/heldout.jsonl``, ``data/split.json``)."""
    _write_jsonl(d / "data" / "train.jsonl", split.train)
    _write_jsonl(d / "data" / "heldout.jsonl", split.heldout)
    write_json_atomic(d / "data" / "split.json", split.info)


def load_split(d: Path) -> MinedSplit:
    def read(p: Path) -> list[Triplet]:
        with open(p, encoding="utf-8") as fh:
            return [Triplet.from_dict(json.loads(line)) for line in fh if line.strip()]

    try:
        return MinedSplit(read(d / "data" / "train.jsonl"), read(d / "data" / "heldout.jsonl"),
                          json.loads((d / "data" / "split.json").read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise TrainingError(f"{d} has no mined data ({exc.filename}); run `agro mine` or `agro train`") from None


def _datasets(train: Sequence[Triplet], loss_name: str, negatives: int, max_chars: int):
    from datasets import Dataset

    def cut(s: str) -> str:
        return s[:max_chars]

    if loss_name == "bce":
        q, d, y = [], [], []
        for t in train:
            q.append(t.query)
            d.append(cut(t.positive_text))
            y.append(1.0)
            for n in t.negative_texts[:negatives]:
                q.append(t.query)
                d.append(cut(n))
                y.append(0.0)
        return Dataset.from_dict({"query": q, "response": d, "label": y}), len(q)
    if loss_name == "lambda":
        rows = {"query": [], "docs": [], "labels": []}
        for t in train:
            docs = [cut(t.positive_text)] + [cut(n) for n in t.negative_texts[:negatives]]
            rows["query"].append(t.query)
            rows["docs"].append(docs)
            rows["labels"].append([1] + [0] * (len(docs) - 1))
        return Dataset.from_dict(rows), sum(len(x) for x in rows["docs"])
    usable = [t for t in train if t.negative_texts]
    n_neg = min([negatives] + [len(t.negative_texts) for t in usable]) if usable else 0
    if n_neg == 0:
        raise TrainingError("loss 'mnrl' needs triplets with negatives; none has any. Use loss 'bce'.")
    cols: dict[str, list[str]] = {"query": [], "positive": []}
    for i in range(n_neg):
        cols[f"negative_{i + 1}"] = []
    for t in usable:
        cols["query"].append(t.query)
        cols["positive"].append(cut(t.positive_text))
        for i in range(n_neg):
            cols[f"negative_{i + 1}"].append(cut(t.negative_texts[i]))
    return Dataset.from_dict(cols), len(usable) * (n_neg + 1)


def _loss(name: str, model):
    from sentence_transformers.cross_encoder import losses

    if name == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    if name == "lambda":
        return losses.LambdaLoss(model)
    return losses.MultipleNegativesRankingLoss(model)


def train_run(
    models_dir: Path,
    run_id: str,
    split: MinedSplit,
    settings: Any,
    *,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    extra: dict[str, Any] | None = None,
    max_train_pairs: int | None = None,
    embed_model: str | None = None,
) -> dict[str, Any]:
    """Train a candidate on ``split.train`` into ``models/runs/<run_id>/model`` and return its ``run.json``.

    Args:
        models_dir: ``AGRO_HOME/models``.
        run_id: the job's run id (the folder name).
        split: mined data; only ``train`` is trained on, ``heldout`` is saved for the promoter.
        settings: :class:`training.settings.TrainingSettings`.
        progress: ``(fraction, message)`` after each step.
        cancelled: polled between steps; True stops the run (:class:`TrainingCancelled`).
        extra: more fields for ``run.json`` (sources, corpora).
        max_train_pairs: cap on (query, text) pairs (triplets are sampled down, seeded), to bound the time.
        embed_model: the embedding model a bi-encoder run starts from when there is no release or base_model.

    Raises:
        TrainingError: too few triplets, or a base model that cannot be loaded.
        TrainingCancelled: when ``cancelled()`` turned True.
    """
    d = run_dir(models_dir, run_id)
    train = list(split.train)
    if len(train) < settings.min_triplets:
        raise TrainingError(
            f"Too few training triplets: {len(train)} (need at least {settings.min_triplets}, "
            f"AGRO_TRAINING_MIN_TRIPLETS). Get more: send feedback (submit_feedback 'used' / 'correct_location'), "
            "add golden.json questions, or run `agro bootstrap` to mine the corpus itself."
        )
    negatives = settings.negatives_per_query
    if max_train_pairs is not None and len(train) * (1 + negatives) > max_train_pairs:
        keep = max(settings.min_triplets, max_train_pairs // (1 + negatives))
        train = budget_rows(train, keep, settings.sample, settings.seed)
        logger.info("run %s: kept %d triplets (%s) to stay under %d pairs", run_id, len(train), settings.sample,
                    max_train_pairs)
    d.mkdir(parents=True, exist_ok=True)
    write_split(d, split)
    kind = getattr(settings, "model_kind", "cross-encoder")
    kind = "bi-encoder" if kind == "auto" else kind  # a single run of auto's first kind (the loop trains both)
    student_layers = getattr(settings, "student_layers", None) if kind == "cross-encoder" else None
    base = resolve_base(models_dir, settings.base_model, d, num_layers=student_layers, kind=kind,
                        embed_model=embed_model)
    from reranker.model import UNTRAINED_MARKER, cpu_has_native_bf16

    bf16 = bool(settings.bf16 and cpu_has_native_bf16())
    bi = kind == "bi-encoder"
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "state": "running",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_kind": kind,
        "base_model": {"ref": base.ref, "kind": base.kind, "release_id": base.release_id},
        "config": {
            "loss": "mnrl" if bi else settings.loss, "epochs": settings.bi_encoder_epochs if bi else settings.epochs,
            "batch_size": settings.batch_size,
            "learning_rate": settings.bi_encoder_learning_rate if bi else settings.learning_rate,
            "max_length": settings.max_length, "seed": settings.seed,
            "negatives_per_query": negatives, "bf16": bf16, "max_train_pairs": max_train_pairs,
            "student_layers": student_layers,
        },
        "data": {
            "train_hash": data_hash(split.train), "heldout_hash": data_hash(split.heldout),
            "trained_triplets": len(train), "trained_hash": data_hash(train),
            "sources": sorted({t.source for t in split.train}),
            # which questions it learned from: a later gate must not judge this release on them
            "trained_query_hashes": question_hashes(split.train),
        },
        "split": {k: v for k, v in split.info.items() if k != "heldout_query_hashes"},
        "heldout_query_hashes": split.info.get("heldout_query_hashes", []),
        "epochs": [],
        **(extra or {}),
    }
    write_json_atomic(d / "run.json", manifest)
    t0 = time.perf_counter()
    try:
        fit = _fit_bi_encoder if bi else _fit
        model_dir = fit(d, base, train, settings, bf16, manifest, progress, cancelled)
    except TrainingCancelled:
        manifest.update(state="cancelled", finished_at=_now(), elapsed_sec=round(time.perf_counter() - t0, 1))
        write_json_atomic(d / "run.json", manifest)
        raise
    except BaseException as exc:
        manifest.update(state="failed", error=str(exc)[:2000], finished_at=_now())
        write_json_atomic(d / "run.json", manifest)
        raise
    if (model_dir / UNTRAINED_MARKER).exists():  # pragma: no cover - save_pretrained writes a fresh folder
        (model_dir / UNTRAINED_MARKER).unlink()
    if base.kind == "backbone":
        shutil.rmtree(d / "base", ignore_errors=True)
    manifest.update(state="succeeded", finished_at=_now(), elapsed_sec=round(time.perf_counter() - t0, 1),
                    model_dir="model")
    write_json_atomic(d / "run.json", manifest)
    logger.info("run %s trained in %.0fs on %d triplets (base %s %s)", run_id, manifest["elapsed_sec"],
                len(train), base.kind, base.release_id or base.ref)
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _teacher_ref(base: BaseModel, base_layers: int | None, settings: Any) -> str | None:
    """The distillation teacher: ``distill_teacher``, else the trained base when the student is cut from it."""
    explicit = getattr(settings, "distill_teacher", None)
    if explicit:
        from retrieval.models import resolve_model_ref

        return resolve_model_ref(explicit)
    if base.kind == "backbone" or base_layers is None or base_layers <= settings.student_layers:
        return None  # a fresh head knows nothing; an uncut base would only teach itself
    return base.ref


def teacher_labels(teacher_ref: str, queries: Sequence[str], texts: Sequence[str], hard: Sequence[float],
                   weight: float, max_length: int, cancelled: Callable[[], bool] | None = None) -> list[float]:
    """Soft labels for (query, text) pairs: ``weight * sigmoid(teacher logit) + (1 - weight) * hard``.

    The teacher is loaded like a served model (fp32, safetensors only, never an untrained head) and scores each
    query's texts together.
    """
    import numpy as np

    from reranker.model import CrossEncoderScorer, RerankerLoadError

    try:
        teacher = CrossEncoderScorer.load(teacher_ref, backend="fp32", maxlen=max_length)
    except RerankerLoadError as exc:
        raise TrainingError(f"cannot load the distillation teacher {teacher_ref}: {exc}") from exc
    by_query: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_query.setdefault(q, []).append(i)
    logits = np.zeros(len(queries), dtype=np.float64)
    for q, idx in by_query.items():
        if cancelled is not None and cancelled():
            raise TrainingCancelled("cancelled while the teacher scored the training pairs")
        logits[idx] = teacher.score(q, [texts[i] for i in idx], batch=16)
    soft = 1.0 / (1.0 + np.exp(-logits))
    return [float(weight * s + (1.0 - weight) * h) for s, h in zip(soft, hard)]


def _make_student(model: Any, base: BaseModel, dataset: Any, settings: Any, manifest: dict,
                  cancelled: Callable[[], bool] | None) -> Any:
    """Cut ``model`` (a sentence-transformers CrossEncoder) to ``student_layers`` and distil labels into ``dataset``."""
    from reranker.model import cut_layers, model_layers

    hf = model.model
    base_layers = model_layers(hf)
    teacher = _teacher_ref(base, base_layers, settings)
    weight = float(getattr(settings, "distill_weight", 0.5))
    info: dict[str, Any] = {"base_layers": base_layers, "teacher": teacher, "weight": weight, "distilled": False}
    if teacher is not None and settings.loss == "bce" and weight > 0:
        t0 = time.perf_counter()
        labels = teacher_labels(teacher, dataset["query"], dataset["response"], dataset["label"], weight,
                                settings.max_length, cancelled)
        dataset = dataset.remove_columns("label").add_column("label", labels)
        info.update(distilled=True, teacher_sec=round(time.perf_counter() - t0, 1))
    elif teacher is not None:
        info["note"] = f"distillation needs loss 'bce' and distill_weight > 0 (loss {settings.loss!r}); hard labels"
    info["student_layers"] = cut_layers(hf, settings.student_layers)
    manifest["student"] = info
    logger.info("run %s: student with %d of %s layers (teacher %s, distilled %s)", manifest["run_id"],
                info["student_layers"], base_layers, teacher, info["distilled"])
    return dataset


TRAINED_BASES = ("release", "pretrained", "embedder")


def planned_epochs(steps_per_epoch: int, settings: Any, base_kind: str = "backbone") -> int:
    """``settings.epochs``, raised so the run takes at least ``min_steps`` steps, but never past ``max_epochs``.

    ``min_steps`` is for a head that starts untrained. A base that already ranks (a release, the pre-trained base)
    trains exactly ``epochs``: measured on docstring_httpx, 18 epochs of 34 feedback questions took the pre-trained
    base from span MRR@10 0.464 to 0.411 on the test half (it forgot what it knew).
    """
    if base_kind in TRAINED_BASES:
        return settings.epochs
    min_steps = getattr(settings, "min_steps", 0) or 0
    need = -(-min_steps // max(1, steps_per_epoch))
    return max(settings.epochs, min(need, max(settings.max_epochs, settings.epochs)))


def _fit(d: Path, base: BaseModel, train: list[Triplet], settings: Any, bf16: bool, manifest: dict,
         progress, cancelled) -> Path:
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )

    try:
        model = CrossEncoder(base.ref, num_labels=1, max_length=settings.max_length, device="cpu",
                             local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the base model {base.ref} ({base.kind}): {exc}") from exc
    dataset, n_pairs = _datasets(train, settings.loss, settings.negatives_per_query,
                                 settings.max_length * _CHARS_PER_TOKEN)
    manifest["data"]["trained_pairs"] = n_pairs
    manifest["data"]["query_tokens_max"] = _query_tokens_max(model.tokenizer, train)
    student_layers = getattr(settings, "student_layers", None)
    if student_layers is not None:
        dataset = _make_student(model, base, dataset, settings, manifest, cancelled)
    state = _TrainState(d, manifest, progress, cancelled)
    n_steps_epoch = max(1, -(-len(dataset) // settings.batch_size))
    epochs = planned_epochs(n_steps_epoch, settings, base.kind)
    manifest["config"]["epochs_run"] = epochs
    args = CrossEncoderTrainingArguments(
        **_trainer_args(d, settings, epochs, n_steps_epoch, bf16, settings.learning_rate))
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=_loss(settings.loss, model),
                                  callbacks=[state.callback()])
    return _train_and_save(trainer, state, lambda tmp: model.save_pretrained(str(tmp)))


def _query_tokens_max(tokenizer: Any, train: Sequence[Triplet]) -> int:
    """The longest training question in the model's tokens: serving keeps the fused order for queries far longer
    (RerankerSettings.long_query_factor), which the model never learned from."""
    return max((len(tokenizer(t.query, add_special_tokens=False, verbose=False)["input_ids"]) for t in train), default=0)


def _trainer_args(d: Path, settings: Any, epochs: int, n_steps_epoch: int, bf16: bool, lr: float) -> dict[str, Any]:
    """The Hugging Face trainer arguments both kinds of run share (CPU, no checkpoints, no stdout progress)."""
    return dict(
        output_dir=str(d / "trainer_tmp"), num_train_epochs=epochs, per_device_train_batch_size=settings.batch_size,
        learning_rate=lr, warmup_steps=max(0, int(0.1 * n_steps_epoch * epochs)), seed=settings.seed,
        data_seed=settings.seed, bf16=bf16, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=max(1, n_steps_epoch // 20), disable_tqdm=True, dataloader_num_workers=0,
    )


class _TrainState:
    """Progress, cancellation and per-epoch metrics of one run, shared by both kinds of trainer."""

    def __init__(self, d: Path, manifest: dict, progress, cancelled) -> None:
        self.d, self.manifest, self.progress, self.cancelled = d, manifest, progress, cancelled
        self.was_cancelled = False
        self.last_poll = 0.0
        self.epoch_losses: list[float] = []
        self.t_fit = time.perf_counter()

    def callback(self):
        from transformers import TrainerCallback

        st = self

        class _Hooks(TrainerCallback):
            def on_log(self, args, tstate, control, logs=None, **kw):
                if logs and "loss" in logs:
                    st.epoch_losses.append(float(logs["loss"]))

            def on_step_end(self, args, tstate, control, **kw):
                if st.progress is not None and tstate.max_steps:
                    st.progress(tstate.global_step / tstate.max_steps,
                                f"step {tstate.global_step}/{tstate.max_steps}, epoch {tstate.epoch or 0:.2f}")
                now = time.monotonic()
                if st.cancelled is not None and now - st.last_poll >= 1.0:
                    st.last_poll = now
                    if st.cancelled():
                        st.was_cancelled = True
                        control.should_training_stop = True
                        control.should_epoch_stop = True

            def on_epoch_end(self, args, tstate, control, **kw):
                losses = st.epoch_losses
                row = {"epoch": round(tstate.epoch or 0, 3), "step": tstate.global_step,
                       "train_loss": sum(losses) / len(losses) if losses else None,
                       "elapsed_sec": round(time.perf_counter() - st.t_fit, 1)}
                st.epoch_losses = []
                st.manifest["epochs"].append(row)
                write_json_atomic(st.d / "run.json", st.manifest)
                logger.info("run %s epoch %s: loss %s", st.manifest["run_id"], row["epoch"], row["train_loss"])

        return _Hooks()


def _train_and_save(trainer: Any, state: _TrainState, save: Callable[[Path], None]) -> Path:
    """Train, then write the model to ``model/`` through a temporary folder renamed into place."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # it print()s logs to stdout, which a stdio server must never do
    trainer.remove_callback(ProgressCallback)
    d = state.d
    state.t_fit = time.perf_counter()
    trainer.train()
    shutil.rmtree(d / "trainer_tmp", ignore_errors=True)
    if state.was_cancelled:
        raise TrainingCancelled(f"run {state.manifest['run_id']} was cancelled")
    out = d / "model"
    tmp = d / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def budget_rows(rows: Sequence[Triplet], most: int, mode: str, seed: int) -> list[Triplet]:
    """At most ``most`` of ``rows``, for a run whose step cap cannot cover them all.

    ``random``: a seeded sample. ``recent``: questions people wrote first (feedback, golden), then git history in
    mined order (newest commit first), then a seeded sample of synthetic pairs; every row kept keeps its place.
    The future a history run is judged on looks more like last month's commits than like the first year's.
    """
    if len(rows) <= most:
        return list(rows)
    rng = random.Random(seed)
    if mode == "random":
        keep = set(rng.sample(range(len(rows)), most))
    else:
        order = [i for i, t in enumerate(rows) if t.source not in SYNTHETIC_SOURCES and t.source != "git_history"]
        order += [i for i, t in enumerate(rows) if t.source == "git_history"]
        synthetic = [i for i, t in enumerate(rows) if t.source in SYNTHETIC_SOURCES]
        rng.shuffle(synthetic)
        keep = set((order + synthetic)[:most])
    return [t for i, t in enumerate(rows) if i in keep]


def _bi_encoder_rows(train: Sequence[Triplet], negatives: int) -> tuple[list[Triplet], int]:
    """The triplets a bi-encoder run can use and n, its hard negatives per row: the fewest among the triplets that
    have any (at most ``negatives``); triplets with fewer are left out, unless none has any (n = 0)."""
    with_negs = [t for t in train if t.negative_texts]
    n_neg = min([negatives] + [len(t.negative_texts) for t in with_negs]) if with_negs else 0
    return (with_negs if n_neg else list(train)), n_neg


def _bi_encoder_dataset(rows: Sequence[Triplet], n_neg: int, max_chars: int):
    """(anchor, positive, negative_1..n) rows for MultipleNegativesRankingLoss; with n = 0, (anchor, positive) and
    the batch's other positives are the negatives."""
    from datasets import Dataset

    cols: dict[str, list[str]] = {"anchor": [t.query for t in rows],
                                  "positive": [t.positive_text[:max_chars] for t in rows]}
    for i in range(n_neg):
        cols[f"negative_{i + 1}"] = [t.negative_texts[i][:max_chars] for t in rows]
    return Dataset.from_dict(cols)


def _fit_bi_encoder(d: Path, base: BaseModel, train: list[Triplet], settings: Any, bf16: bool, manifest: dict,
                    progress, cancelled) -> Path:
    """Fine-tune a sentence-transformers bi-encoder with MultipleNegativesRankingLoss (in-batch and hard negatives)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from reranker.model import is_bi_encoder_dir

    try:
        model = SentenceTransformer(base.ref, device="cpu", local_files_only=Path(base.ref).exists(),
                                    trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the base model {base.ref} ({base.kind}): {exc}") from exc
    if base.kind != "release" and not is_bi_encoder_dir(base.ref) and Path(base.ref).is_dir():
        raise TrainingError(f"the base model {base.ref} ({base.kind}) is a cross-encoder, not a sentence-transformers "
                            "bi-encoder: set AGRO_TRAINING_MODEL_KIND=cross-encoder to train cross-encoders, or point "
                            "AGRO_TRAINING_BASE_MODEL at a bi-encoder (e.g. the embedding model)")
    if not any(type(m).__name__ == "Pooling" for m in model):
        raise TrainingError(f"the base model {base.ref} ({base.kind}) is not a sentence-transformers bi-encoder "
                            "(no pooling module); set AGRO_TRAINING_MODEL_KIND=cross-encoder to train a cross-encoder")
    model.max_seq_length = settings.max_length
    rows, n_neg = _bi_encoder_rows(train, settings.bi_encoder_negatives)
    epochs = settings.bi_encoder_epochs
    most = settings.bi_encoder_max_steps * settings.batch_size // max(1, epochs)
    if len(rows) > most:  # bounded run time: every epoch trains on the same `most` rows
        logger.info("run %s: bi-encoder trains on %d of its %d triplets (AGRO_TRAINING_SAMPLE %s, "
                    "AGRO_TRAINING_BI_ENCODER_MAX_STEPS %d)",
                    manifest["run_id"], most, len(rows), settings.sample, settings.bi_encoder_max_steps)
        manifest["data"]["sampled"] = {"mode": settings.sample, "of": len(rows), "kept": most}
        rows = budget_rows(rows, most, settings.sample, settings.seed)
    dataset = _bi_encoder_dataset(rows, n_neg, settings.max_length * _CHARS_PER_TOKEN)
    n_pairs = len(rows) * (1 + n_neg)
    manifest["data"]["trained_pairs"] = n_pairs
    manifest["data"]["query_tokens_max"] = _query_tokens_max(model.tokenizer, train)
    state = _TrainState(d, manifest, progress, cancelled)
    n_steps_epoch = max(1, -(-len(dataset) // settings.batch_size))
    manifest["config"]["epochs_run"] = epochs
    manifest["config"]["negatives_per_query"] = settings.bi_encoder_negatives
    args = SentenceTransformerTrainingArguments(
        **_trainer_args(d, settings, epochs, n_steps_epoch, bf16, settings.bi_encoder_learning_rate),
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a query's second positive is no negative of its first
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[state.callback()])
    return _train_and_save(trainer, state, lambda tmp: model.save(str(tmp)))
