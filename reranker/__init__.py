"""Cross-encoder rerank stage: model resolution and hot-reload, CPU backends, the blend, a score cache.

torch and transformers are imported only when a model is loaded. The names below resolve lazily, so importing
``reranker.settings`` (the settings loader, the stdio proxy) does not import numpy or the model code.
"""

from importlib import import_module

_WHERE = {
    "ScoreCache": "reranker.cache",
    "NO_MODEL_REASON": "reranker.manager",
    "LoadedReranker": "reranker.manager",
    "RerankerManager": "reranker.manager",
    "UNTRAINED_MARKER": "reranker.model",
    "CrossEncoderScorer": "reranker.model",
    "RerankerLoadError": "reranker.model",
    "cpu_has_native_bf16": "reranker.model",
    "cpu_has_vnni": "reranker.model",
    "create_from_backbone": "reranker.model",
    "cut_layers": "reranker.model",
    "RerankerSettings": "reranker.settings",
    "RerankOutcome": "reranker.stage",
    "blend_scores": "reranker.stage",
    "rerank": "reranker.stage",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'reranker' has no attribute {name!r}")
