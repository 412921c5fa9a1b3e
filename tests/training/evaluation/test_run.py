"""An evaluation run over the search pipeline, ranked through the one ranking path."""

import json
from pathlib import Path

import pytest

from training.evaluation.datasets import EvalError
from training.evaluation.run import run_evaluation


def test_run_evaluation_rejects_an_empty_golden_file(tmp_path):
    (tmp_path / "golden.json").write_text("[]")
    with pytest.raises(EvalError, match="empty"):
        run_evaluation(tmp_path / "golden.json", tmp_path / "home", configs=("bm25",))


def test_an_evaluation_scores_exactly_what_the_ranking_path_serves(tmp_path, sample_repo, embedder):
    import json

    from reranker.manager import LoadedReranker
    from reranker.model import CrossEncoderScorer
    from reranker.path import RankingPath
    from reranker.settings import RerankerSettings
    from retrieval.backend import EmbeddedIndexBackend
    from retrieval.settings import IndexSettings, RetrievalSettings
    from tests.reranker.conftest import build_tiny_cross_encoder

    golden = tmp_path / "golden.json"
    questions = ["where is the OAuth token validated", "how are retries backed off"]
    golden.write_text(json.dumps([{"q": q, "repo": "sample", "expect_paths": ["auth/oauth.py"]} for q in questions]))
    model = LoadedReranker(scorer=CrossEncoderScorer.load(build_tiny_cross_encoder(tmp_path / "tiny"), backend="fp32"),
                           model_id="tiny")
    st = RerankerSettings(topn=5)
    path = RankingPath(RetrievalSettings(), st, lambda: embedder, model)
    be = EmbeddedIndexBackend(tmp_path / "home")
    be.build(sample_repo, "sample", IndexSettings(), RetrievalSettings(), embedder)
    report = run_evaluation(golden, tmp_path / "home", configs=("fused", "fused+rerank"), rerank_path=path,
                            reranker_settings=st, embedder=embedder, roots={"sample": sample_repo}, k=10)
    gen = be.load_current("sample")
    for i, q in enumerate(questions):
        served = path.rank(gen, q, 10, rerank=True).hits
        assert report.runs["fused+rerank"][f"golden-{i:04d}"] == [(h.chunk.path, h.chunk.start_line, h.chunk.end_line)
                                                                 for h in served]


def test_a_golden_file_elsewhere_never_re_roots_an_indexed_corpus(tmp_path, embedder):
    """Issue 20, finding 5, from any face: the golden file's folder is not indexed in place of the corpus's root."""
    from retrieval.backend import EmbeddedIndexBackend
    from retrieval.settings import IndexSettings, RetrievalSettings
    from tests.conftest import write_repo

    repo = write_repo(tmp_path / "sample")
    backend = EmbeddedIndexBackend(tmp_path / "home")
    backend.build(repo, "sample", IndexSettings(), RetrievalSettings(), embedder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "evil.py").write_text("def backoff_delays():\n    return 'pwned'\n")
    golden = [{"q": "exponential backoff with jitter", "repo": "sample", "expect_paths": ["utils/retry.py"]}]
    (elsewhere / "golden.json").write_text(json.dumps(golden))

    report = run_evaluation(elsewhere / "golden.json", tmp_path / "home", configs=("bm25",), embedder=embedder,
                            index_backend=backend)

    gen = backend.load_current("sample")
    assert Path(gen.root) == repo and "evil.py" not in gen.files
    assert report.metrics["bm25"]["file"]["MRR@10"] == 1.0  # answered from the real corpus
