"""Settings for mining, training, evaluation and promotion (environment prefix AGRO_TRAINING_; table [training])."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from retrieval.settings import AgroSettings

__all__ = ["TrainingSettings"]


class TrainingSettings(AgroSettings):
    """How candidates are mined, trained, judged and promoted."""

    model_config = SettingsConfigDict(env_prefix="AGRO_TRAINING_")
    section: ClassVar[str] = "training"

    model_kind: Literal["bi-encoder", "cross-encoder", "auto"] = Field(
        "bi-encoder", description="What a run trains: bi-encoder, cross-encoder, or auto (both; the gate picks)."
    )
    bi_encoder_epochs: int = Field(4, ge=1, description="Epochs of a bi-encoder run (a cross-encoder run uses epochs).")
    bi_encoder_learning_rate: float = Field(2e-5, gt=0, description="Learning rate of a bi-encoder run.")
    bi_encoder_negatives: int = Field(
        1, ge=0, description="Mined hard negatives per question in a bi-encoder run (plus the batch's other answers)."
    )
    bi_encoder_max_steps: int = Field(
        120, ge=1, description="Cap on a bi-encoder run's optimiser steps (a large set trains on a seeded sample)."
    )
    sample: Literal["random", "recent"] = Field(
        "random", description="Triplets a run past its caps trains on: a seeded sample, or people's and newest first."
    )
    bi_encoder_alpha: float = Field(
        0.8, ge=0, le=1, description="Blend weight an uncalibrated bi-encoder run is judged and served with."
    )
    base_model: str | None = Field(
        None, description="Base when no release of the run's kind exists (default: embedding model / pretrain base)."
    )
    loss: Literal["bce", "lambda", "mnrl"] = Field(
        "bce", description="Cross-encoder runs: bce, lambda or mnrl (bi-encoder runs always use MNRL)."
    )
    epochs: int = Field(1, ge=1, description="Epochs of a cross-encoder run.")
    min_steps: int = Field(
        200, ge=0, description="Cross-encoder runs from a fresh head: fewest optimiser steps (0 = exactly epochs)."
    )
    max_epochs: int = Field(30, ge=1, description="Ceiling on the epochs that min_steps may add.")
    calibrate_alpha: bool = Field(
        True, description="Serve a candidate with the blend weight that ranks a calibration slice best."
    )
    uncalibrated_alpha: float = Field(
        0.3, ge=0, le=1, description="Blend weight of a run that calibration does not move."
    )
    calibration_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of the training questions used for calibration."
    )
    calibration_min_queries: int = Field(
        30, ge=1, description="Fewest calibration (and fitting) questions for a calibrated weight."
    )
    batch_size: int = Field(16, ge=1, description="Training batch size.")
    learning_rate: float = Field(5e-5, gt=0, description="Learning rate of a cross-encoder run.")
    max_length: int = Field(256, ge=32, le=512, description="Tokens per training pair.")
    seed: int = Field(13, description="Seed of the held-out split and of training.")
    negatives_per_query: int = Field(4, ge=1, description="Negatives per triplet.")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of questions held out for evaluation.")
    min_triplets: int = Field(
        20, ge=1, description="Fewer triplets refuse to train (the message says how to get more)."
    )
    bootstrap_cap: int = Field(3000, ge=10, description="Cap on corpus-bootstrap pairs.")
    bootstrap_usage_share: float = Field(
        0.0, ge=0, le=1, description="Share of that cap given to (call site -> definition) pairs; 0 = docstrings only."
    )
    time_budget_sec: int = Field(
        1800, ge=0, description="auto trains the cross-encoder only if the bi-encoder took under half of this."
    )
    cv_folds: int = Field(5, ge=0, description="Cross-validation folds when people-written questions are few.")
    cv_below: int = Field(
        30, ge=0, description="Cross-validate when a fixed split would hold out fewer people-written questions."
    )
    history_enabled: bool = Field(True, description="agro bootstrap mines the git history of a corpus in a work tree.")
    history_max_questions: int = Field(1000, ge=1, description="Most history questions mined (newest commits first).")
    history_max_commits: int = Field(5000, ge=1, description="Most commits walked (merges excluded) per mining run.")
    history_max_age_days: int = Field(0, ge=0, description="Only commits younger than this many days (0 = any age).")
    history_max_files: int = Field(10, ge=1, description="A commit changing more files than this is skipped.")
    history_max_positives: int = Field(6, ge=1, description="Most chunks one commit's question has as answers.")
    history_with_docstrings: bool = Field(
        False, description="Also mine docstring pairs when the history alone gives enough to train on."
    )
    synthetic_only: Literal["refuse", "conservative"] = Field(
        "refuse", description="A candidate judged only on synthetic questions: refuse, or serve at synthetic_alpha."
    )
    synthetic_alpha: float = Field(
        0.2, ge=0, le=1, description="Blend weight of a release judged only on synthetic questions (conservative)."
    )
    max_train_pairs: int | None = Field(6000, ge=10, description="Cap on (query, text) training pairs per run.")
    pretrain_cap: int = Field(4000, ge=10, description="agro pretrain: (docstring, code) pairs mined from its corpus.")
    pretrain_max_pairs: int = Field(8000, ge=10, description="agro pretrain: cap on (query, text) training pairs.")
    promote_delta: float = Field(
        0.02, ge=0, description="Mean per-question MRR@10 gain to promote, as a share of the best alternative's MRR@10."
    )
    promote_min_queries: int = Field(
        6, ge=1, description="Fewest held-out questions for a decision (6: the fewest a 95% paired interval needs)."
    )
    ship_vectors_max: int = Field(
        20_000, ge=0, description="A bi-encoder release ships the vectors of at most this many indexed chunks (0 = none)."
    )
    ship_vectors_dtype: Literal["float16", "float32"] = Field(
        "float32", description="Storage of the shipped chunk vectors (float16: half the bytes; near-ties may swap)."
    )
    bf16: bool = Field(True, description="bf16 autocast in training when the CPU has native bf16.")
    student_layers: int | None = Field(
        None, ge=1, description="Train a layer-cut student with the base's first N transformer layers (unset = all)."
    )
    distill_teacher: str | None = Field(
        None, description="Teacher a student learns from (default: the uncut base when student_layers cuts it)."
    )
    distill_weight: float = Field(
        0.5, ge=0, le=1, description="Label = w x sigmoid(teacher logit) + (1 - w) x mined 0/1 label (loss bce)."
    )
