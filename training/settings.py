"""Settings for mining, training, evaluation and promotion (env prefix AGRO_TRAINING_)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrainingSettings"]


class TrainingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_kind: Literal["bi-encoder", "cross-encoder", "auto"] = Field(
        "bi-encoder",
        description="What a run trains. auto: a bi-encoder and (within time_budget_sec) a cross-encoder candidate, "
        "and the gate picks the better. bi-encoder (default): the embedding model fine-tuned on the mined triplets "
        "(MultipleNegativesRankingLoss, hard negatives) and served as a reranker of the fused head by cosine; it starts "
        "from a model that already ranks. cross-encoder: a sequence classifier (CrossEncoderTrainer), from the release, "
        "base_model, the agro pretrain base or a fresh MiniLM head. Measured on the docstring collections' test halves "
        "(bench_learning), feedback on half the questions lifted the other half's MRR@10 over the best of BM25, dense "
        "and fused by -1% to +22% with bi-encoder runs (+11% or more at both levels on httpx and jinja), and by -2% to "
        "+12% with cross-encoder runs.",
    )
    bi_encoder_epochs: int = Field(
        4, ge=1, description="Epochs of a bi-encoder run (a cross-encoder uses epochs). Measured on the docstring test "
        "halves: 4 ranked better than 2 (httpx file / span MRR@10 0.777 / 0.596 vs 0.753 / 0.567; jinja 0.803 / 0.575 vs "
        "0.763 / 0.532).")
    bi_encoder_learning_rate: float = Field(
        2e-5, gt=0, description="Learning rate of a bi-encoder run (a cross-encoder uses learning_rate).")
    bi_encoder_negatives: int = Field(
        1, ge=0, description="Mined hard negatives per question in a bi-encoder run (the batch's other answers are "
        "negatives too). Measured on the docstring collections: 1 ranked the test halves better than 4 (httpx span "
        "MRR@10 0.628 vs 0.605; boltons 0.56 with 4, below dense), and trains ~2x faster.",
    )
    bi_encoder_max_steps: int = Field(
        120, ge=1, description="Cap on a bi-encoder run's optimiser steps (a large bootstrap set trains on a seeded "
        "sample of this many batches per epoch instead of all of it), to keep a run within ~15 min on 2 cores.",
    )
    bi_encoder_alpha: float = Field(
        0.8, ge=0, le=1,
        description="Blend weight an uncalibrated bi-encoder run is served and judged with (uncalibrated_alpha is the "
        "cross-encoder's). Measured on the docstring test halves (dense weight 0.5): 0.8 ranked best on jinja, 2-3% "
        "below httpx's best (1.0) and 5% below boltons' best at span level (0.5); 0.5 lost 10-14% on httpx.",
    )
    base_model: str | None = Field(None, description="Base when no release exists (local dir or hub id).")
    loss: Literal["bce", "lambda", "mnrl"] = "bce"
    epochs: int = Field(1, ge=1)
    min_steps: int = Field(
        200, ge=0,
        description="Fewest optimiser steps a run takes: small data sets get more epochs (at most max_epochs) so a "
        "fresh head is not left near random after a handful of steps. 0 = exactly `epochs`. A base that already ranks "
        "(a release, the agro pretrain base) always trains exactly `epochs`.",
    )
    max_epochs: int = Field(30, ge=1, description="Ceiling on the epochs that min_steps may add.")
    calibrate_alpha: bool = Field(
        True, description="Set a calibration slice of the training queries aside and serve the candidate with the "
        "blend weight (alpha) that ranks it best; an explicit AGRO_RERANKER_ALPHA always wins.",
    )
    uncalibrated_alpha: float = Field(
        0.3, ge=0, le=1,
        description="Blend weight a run is served and judged with when it has too few questions to calibrate one "
        "(recorded in its blend). Measured on the docstring collections' test halves with candidates trained on "
        "feedback (bench_learning --blend-grid, dense weight 0.5): 0.3 ranked best at span level on jinja and "
        "boltons, 0.5 on httpx (+5%); 0.7 (the reranker default, kept for models not trained here) lost 4-22% span "
        "MRR@10 against 0.3.",
    )
    calibration_fraction: float = Field(0.2, gt=0, lt=1, description="Share of training queries used to calibrate.")
    calibration_min_queries: int = Field(
        30, ge=1,
        description="Fewest calibration questions (and fitting questions) for a calibrated alpha; the dense weight "
        "is weighed from calibration_min_queries / calibration_fraction training questions. Measured on the docstring "
        "collections: calibrating on 10-14 questions moved alpha away from the best weight of the test half in 2 of 3 "
        "runs.",
    )
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    max_length: int = Field(256, ge=32, le=512)
    seed: int = 13
    negatives_per_query: int = Field(4, ge=1)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    min_triplets: int = Field(20, ge=1)
    bootstrap_cap: int = Field(3000, ge=10)
    bootstrap_usage_share: float = Field(
        0.0, ge=0, le=1,
        description="Share of the bootstrap cap given to (call-site snippet -> the definition it calls) pairs, "
        "questions that look like pasted code rather than documentation; 0 = docstring pairs only.",
    )
    time_budget_sec: int = Field(
        1800, ge=0, description="With model_kind=auto, the cross-encoder is trained only when the bi-encoder "
        "candidate (training and judging) took less than half of this.")
    cv_folds: int = Field(
        5, ge=0, description="Folds of the cross-validation used when people-written questions are too few for a "
        "fixed held-out split (0 or 1 = never cross-validate).")
    cv_below: int = Field(
        30, ge=0, description="Cross-validate when a fixed split would hold out fewer people-written questions than "
        "this: k candidates each judged on the fold it did not see, one model trained on all released with the "
        "pooled evidence.")
    history_enabled: bool = Field(
        True, description="agro bootstrap mines the corpus's git history (commit message -> the chunks it changed) "
        "when the corpus root is a git work tree.")
    history_max_questions: int = Field(1000, ge=1, description="Most history questions mined (newest commits first).")
    history_max_commits: int = Field(5000, ge=1, description="Most commits walked (merges excluded) per mining run.")
    history_max_age_days: int = Field(0, ge=0, description="Only commits younger than this many days (0 = any age).")
    history_max_files: int = Field(
        10, ge=1, description="A commit changing more files than this is skipped (too broad).")
    history_max_positives: int = Field(6, ge=1, description="Most chunks one commit's question has as answers.")
    history_with_docstrings: bool = Field(
        False, description="Also mine docstring pairs when the history gives questions (off: history alone).")
    synthetic_only: Literal["refuse", "conservative"] = Field(
        "refuse", description="A candidate the gate could judge only on synthetic questions (docstrings, "
        "identifiers): refuse it, or promote it served at synthetic_alpha.")
    synthetic_alpha: float = Field(0.2, ge=0, le=1, description="Blend weight of a release judged only on synthetic "
                                   "questions (with synthetic_only=conservative).")
    max_train_pairs: int | None = Field(6000, ge=10, description="Cap on (query, text) training pairs per run.")
    pretrain_cap: int = Field(4000, ge=10, description="agro pretrain: (docstring, code) pairs mined from its corpus.")
    pretrain_max_pairs: int = Field(
        8000, ge=10, description="agro pretrain: cap on (query, text) training pairs (500 steps at batch 16).",
    )
    promote_delta: float = Field(
        0.02, ge=0, description="Mean per-question MRR@10 gain required to promote, as a share of the best "
        "alternative's MRR@10 (0.02 = 2%).")
    promote_min_queries: int = Field(
        6, ge=1, description="Fewest held-out questions a gate decision may rest on; 6 is the fewest on which a 95% "
        "paired interval can exclude chance at all, so on small samples the interval decides.")
    bf16: bool = Field(True, description="bf16 autocast when the CPU supports it.")
    student_layers: int | None = Field(
        None, ge=1,
        description="Train a layer-cut student: keep only the base model's first N transformer layers (a base with "
        "N or fewer is used as it is). Scoring time falls about in proportion (MiniLM-L6 cut to 2 layers: ~3x "
        "faster). Unset = train the base at its full depth. The candidate is judged by the promotion gate as usual.",
    )
    distill_teacher: str | None = Field(
        None,
        description="Teacher whose scores a student learns (local dir or hub id of a trained cross-encoder). Default: "
        "the uncut base (the current release or base_model) when student_layers cuts it; a fresh backbone head is "
        "never a teacher.",
    )
    distill_weight: float = Field(
        0.5, ge=0, le=1,
        description="With a teacher and loss 'bce': each pair's label = w * sigmoid(teacher logit) + (1 - w) * its "
        "mined 0/1 label (1 = match the teacher only, 0 = ignore it).",
    )
