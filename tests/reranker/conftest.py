"""Tiny cross-encoders built locally (2 layers, hidden 64, the MiniLM vocabulary) and a models/ layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def build_tiny_cross_encoder(out: Path, seed: int = 0, num_labels: int = 1) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval.models import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=num_labels,
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_dir_b(tmp_path_factory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny_b") / "model", seed=1)


def make_release(models_dir: Path, release_id: str, src: Path, manifest: bool = True) -> Path:
    """Copy a model into models/releases/<id>/ and write manifest.json last."""
    import shutil

    dest = models_dir / "releases" / release_id
    shutil.copytree(src, dest)
    if manifest:
        (dest / "manifest.json").write_text(json.dumps({"id": release_id, "metrics": {"mrr@10": 0.5}}))
    return dest


def point_current(models_dir: Path, release_id: str) -> None:
    """Atomic switch: a new symlink beside ``current``, then os.replace."""
    tmp = models_dir / f".current.{release_id}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(Path("releases") / release_id)
    os.replace(tmp, models_dir / "current")


@pytest.fixture
def models_dir(tmp_path, tiny_dir, tiny_dir_b) -> Path:
    d = tmp_path / "models"
    (d / "releases").mkdir(parents=True)
    (d / "runs").mkdir()
    make_release(d, "r1", tiny_dir)
    make_release(d, "r2", tiny_dir_b)
    return d
