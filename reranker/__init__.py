"""Cross-encoder rerank stage: model resolution and hot-reload, CPU backends, the blend, a score cache.

torch and transformers are imported only when a model is loaded.
"""

from reranker.cache import ScoreCache
from reranker.manager import NO_MODEL_REASON, LoadedReranker, RerankerManager
from reranker.model import (
    UNTRAINED_MARKER,
    CrossEncoderScorer,
    RerankerLoadError,
    cpu_has_native_bf16,
    cpu_has_vnni,
    create_from_backbone,
    cut_layers,
)
from reranker.settings import RerankerSettings
from reranker.stage import RerankOutcome, blend_scores, rerank

__all__ = [
    "NO_MODEL_REASON",
    "UNTRAINED_MARKER",
    "CrossEncoderScorer",
    "LoadedReranker",
    "RerankOutcome",
    "RerankerLoadError",
    "RerankerManager",
    "RerankerSettings",
    "ScoreCache",
    "blend_scores",
    "cpu_has_native_bf16",
    "cpu_has_vnni",
    "create_from_backbone",
    "cut_layers",
    "rerank",
]
