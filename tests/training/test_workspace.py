"""The learning loop's typed workspace: a scratch embedded one, and generations reloaded only when current moves."""

from __future__ import annotations

from reranker.settings import RerankerSettings
from retrieval.settings import IndexSettings, RetrievalSettings
from training.settings import TrainingSettings
from training.workspace import LearningSettings, open_workspace


def _settings() -> LearningSettings:
    return LearningSettings(IndexSettings(), RetrievalSettings(), RerankerSettings(), TrainingSettings())


def test_a_scratch_workspace_indexes_ranks_and_reloads_a_generation_only_after_current_moves(
    tmp_path, sample_repo, embedder
):
    s = _settings()
    ws = open_workspace(tmp_path / "scratch", s, embedder=embedder)
    try:
        assert ws.corpora() == [] and ws.store.counts()["query_events"] == 0
        ws.indexes.build(sample_repo, "sample", s.index, s.retrieval, ws.embedder())
        assert ws.corpora() == ["sample"]
        first = ws.generation("sample")
        assert ws.generation("sample") is first  # loaded once
        hits = ws.path.retrieve(first, "where is the OAuth token validated", 3).hits
        assert hits and hits[0].chunk.path == "auth/oauth.py"
        (sample_repo / "auth" / "extra.py").write_text("def more():\n    return 1\n", encoding="utf-8")
        ws.indexes.build(sample_repo, "sample", s.index, s.retrieval, ws.embedder())
        second = ws.generation("sample")
        assert second is not first and second.generation_id != first.generation_id
    finally:
        ws.store.close()
