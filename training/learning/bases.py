"""Where a training run starts: the current release, a configured model, the pre-trained base of ``agro pretrain``
(``models/base/current``) or a fresh head; and the manifest of a model folder a ``current`` link points at."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BaseModel", "base_dir", "current_base", "pointed_manifest", "resolve_base"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BaseModel:
    """Where a run starts from: ``kind`` is ``release``, ``configured``, ``pretrained`` or ``backbone`` (fresh head)."""

    ref: str
    kind: str
    release_id: str | None = None


def pointed_manifest(link: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of the folder ``link`` points at (with ``_dir``), or None when there is none: a folder
    without its manifest is incomplete and never used."""
    link = Path(link)
    if not link.exists():
        return None
    target = link.resolve()
    try:
        m = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {**m, "_dir": str(target)} if isinstance(m, dict) else None


def base_dir(home: Path) -> Path:
    return Path(home) / "models" / "base"


def current_base(home: Path) -> dict[str, Any] | None:
    """The manifest of ``models/base/current`` with ``_dir`` set, or None when there is no complete base."""
    return pointed_manifest(base_dir(home) / "current")


def resolve_base(models_dir: Path, base_model: str | None, workdir: Path, num_layers: int | None = None,
                 kind: str = "cross-encoder", embed_model: str | None = None) -> BaseModel:
    """Where a run of ``kind`` starts.

    cross-encoder: the current release (if it is one), else ``base_model``, else the pre-trained base
    (``models/base/current``, made by ``agro pretrain``), else a fresh-head MiniLM cross-encoder built in ``workdir``
    (``num_layers`` only shapes that case; a release or a configured base is cut when training loads it).

    bi-encoder: the current release (if it is one), else ``base_model`` (a sentence-transformers folder or hub id),
    else the embedding model ``embed_model`` (default: the offline MiniLM), which already ranks code.
    """
    from reranker.model import is_bi_encoder_dir

    current = Path(models_dir) / "current"
    if current.exists():
        target = current.resolve()
        try:
            manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict):
            logger.warning("models/current -> %s has no manifest; not used as a base", target)
        elif is_bi_encoder_dir(target) == (kind == "bi-encoder"):
            return BaseModel(str(target), "release", str(manifest.get("id") or target.name))
        else:
            logger.info("models/current is not a %s; the %s run starts from its own base", kind, kind)
    from retrieval.models import resolve_model_ref

    if base_model:
        return BaseModel(resolve_model_ref(base_model), "configured")
    if kind == "bi-encoder":
        return BaseModel(resolve_model_ref(embed_model), "embedder")
    pre = current_base(Path(models_dir).parent)
    if pre is not None:
        return BaseModel(pre["_dir"], "pretrained", str(pre.get("id")))
    from reranker.model import create_from_backbone

    out = create_from_backbone(Path(workdir) / "base", num_layers=num_layers)
    return BaseModel(str(out), "backbone")
