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

    model_kind: Literal["bi-encoder", "cross-encoder"] = Field(
        "bi-encoder", description="What a run trains: the embedding model (bi-encoder) or a cross-encoder."
    )
    bi_encoder_epochs: int = Field(4, ge=1, description="Epochs of a bi-encoder run (a cross-encoder run uses epochs).")
    bi_encoder_learning_rate: float = Field(2e-5, gt=0, description="Learning rate of a bi-encoder run.")
    bi_encoder_negatives: int = Field(
        1, ge=0, description="Mined hard negatives per question in a bi-encoder run (plus the batch's other answers)."
    )
    bi_encoder_max_steps: int = Field(
        120, ge=1, description="Cap on a bi-encoder run's optimiser steps (a large set trains on a seeded sample)."
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
    max_train_pairs: int | None = Field(6000, ge=10, description="Cap on (query, text) training pairs per run.")
    pretrain_cap: int = Field(4000, ge=10, description="agro pretrain: (docstring, code) pairs mined from its corpus.")
    pretrain_max_pairs: int = Field(8000, ge=10, description="agro pretrain: cap on (query, text) training pairs.")
    promote_delta: float = Field(0.02, ge=0, description="Relative MRR@10 gain required to promote.")
    promote_min_queries: int = Field(30, ge=1, description="Fewest held-out questions for a promotion.")
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
