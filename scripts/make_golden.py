"""Regenerate golden.json: its questions, with spans resolved by symbol name (ast) from the current sources.

Run after moving code: python scripts/make_golden.py
"""
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.evaluation.golden import GoldenItem, GoldenSpan, dump_golden_rows

ROOT = Path(__file__).resolve().parents[1]
Q = [
 ("where are secret files excluded from indexing", ["retrieval/discovery.py", "retrieval/settings.py"], [("retrieval/discovery.py", "is_secret_name")]),
 ("which file name patterns count as secrets and are never indexed by default", ["retrieval/settings.py"], [("retrieval/settings.py", "DEFAULT_SECRET_PATTERNS")]),
 ("which folders like node_modules and .venv are ignored by default", ["retrieval/settings.py"], [("retrieval/settings.py", "DEFAULT_IGNORES")]),
 ("how does gitignore matching decide whether a file is ignored when nested .gitignore files disagree", ["retrieval/discovery.py"], [("retrieval/discovery.py", "_is_ignored")]),
 ("how are binary and minified files detected and skipped during discovery", ["retrieval/discovery.py"], [("retrieval/discovery.py", "_sniff")]),
 ("how is a file with invalid utf-8 bytes read for indexing", ["retrieval/discovery.py"], [("retrieval/discovery.py", "read_text")]),
 ("how is the language of a file detected from its name or extension", ["retrieval/discovery.py"], [("retrieval/discovery.py", "detect_language")]),
 ("where does file discovery make sure symlinks do not escape the repository root", ["retrieval/discovery.py"], [("retrieval/discovery.py", "_within")]),
 ("how does the directory walk decide which files to index", ["retrieval/discovery.py"], [("retrieval/discovery.py", "discover_files")]),
 ("how are camelCase and snake_case identifiers split into BM25 tokens", ["retrieval/tokenize.py"], [("retrieval/tokenize.py", "code_tokens"), ("retrieval/tokenize.py", "_identifier_tokens")]),
 ("how is the BM25 score of every chunk computed for a query", ["retrieval/lexical.py"], [("retrieval/lexical.py", "BM25Index.scores")]),
 ("why do we implement BM25 ourselves instead of using rank-bm25 or bm25s", ["retrieval/lexical.py"], []),
 ("how is the BM25 index saved to disk and loaded back", ["retrieval/lexical.py"], [("retrieval/lexical.py", "BM25Index.save"), ("retrieval/lexical.py", "BM25Index.load")]),
 ("how is reciprocal rank fusion computed", ["retrieval/search.py"], [("retrieval/search.py", "rrf")]),
 ("how are very long queries such as GitHub issues cut down to their rarest terms before BM25", ["retrieval/search.py"], [("retrieval/search.py", "query_terms")]),
 ("how is a path glob like **/*.py turned into a regex for filtering results", ["retrieval/search.py"], [("retrieval/search.py", "glob_to_regex")]),
 ("how are the top k scores selected and ties broken", ["retrieval/search.py"], [("retrieval/search.py", "top_k_indices")]),
 ("where are the path_glob and language filters applied during search", ["retrieval/search.py"], [("retrieval/search.py", "_filter_mask")]),
 ("what does the search function do in bm25, dense and fused mode", ["retrieval/search.py"], [("retrieval/search.py", "search")]),
 ("how is a Python file split into chunks along functions and classes", ["retrieval/chunking.py"], [("retrieval/chunking.py", "chunk_file")]),
 ("what happens to a function longer than max_chunk_lines when chunking", ["retrieval/chunking.py"], [("retrieval/chunking.py", "_break_rows")]),
 ("how are files without a tree-sitter grammar chunked into line windows", ["retrieval/chunking.py"], [("retrieval/chunking.py", "window_chunks")]),
 ("how are markdown files chunked", ["retrieval/chunking.py"], [("retrieval/chunking.py", "_markdown")]),
 ("where are tree-sitter parsers created for each language", ["retrieval/chunking.py"], [("retrieval/chunking.py", "_parser")]),
 ("which rules map Go receivers and Rust impl blocks to chunk symbols", ["retrieval/chunking.py"], [("retrieval/chunking.py", "_GoRules"), ("retrieval/chunking.py", "_RustRules")]),
 ("what text does the embedding model see for each chunk", ["retrieval/index.py"], [("retrieval/index.py", "document_text")]),
 ("which tokens does BM25 index for a chunk, path and symbol included", ["retrieval/index.py"], [("retrieval/index.py", "document_tokens")]),
 ("how is a new index generation published atomically", ["retrieval/index.py"], [("retrieval/index.py", "_publish")]),
 ("how are old index generations garbage collected", ["retrieval/index.py"], [("retrieval/index.py", "_gc")]),
 ("how does an incremental refresh re-embed only added and changed files", ["retrieval/index.py"], [("retrieval/index.py", "build_index")]),
 ("how is the number of stale files since the last index computed", ["retrieval/index.py"], [("retrieval/index.py", "stale_files")]),
 ("what error does a search get when the corpus was never indexed", ["retrieval/index.py"], [("retrieval/index.py", "load_current")]),
 ("which characters are allowed in a corpus id", ["retrieval/index.py"], [("retrieval/index.py", "validate_corpus_id")]),
 ("how do two processes avoid writing the same corpus index at the same time", ["retrieval/index.py"], [("retrieval/index.py", "_writer_lock")]),
 ("which index settings force a full rebuild when they change", ["retrieval/index.py"], [("retrieval/index.py", "_chunk_params")]),
 ("how is a query longer than the embedding model's window embedded", ["retrieval/embed.py"], [("retrieval/embed.py", "Embedder.encode_query")]),
 ("how are chunk embeddings computed in batches and normalised", ["retrieval/embed.py"], [("retrieval/embed.py", "Embedder.encode_documents")]),
 ("how do we detect whether the CPU has native bf16 support", ["retrieval/models.py"], [("retrieval/models.py", "cpu_has_native_bf16")]),
 ("where do the offline all-MiniLM-L6-v2 weights come from", ["retrieval/models.py"], [("retrieval/models.py", "minilm_path")]),
 ("how is a model reference like auto or a hub id resolved to something from_pretrained can load", ["retrieval/models.py"], [("retrieval/models.py", "resolve_model_ref")]),
 ("how is a doc_id of the form path:start-end parsed and validated", ["retrieval/types.py"], [("retrieval/types.py", "parse_doc_id")]),
 ("how is the content hash of a chunk computed", ["retrieval/types.py"], [("retrieval/types.py", "chunk_hash")]),
 ("which scores does a search hit carry from each ranking stage", ["retrieval/types.py"], [("retrieval/types.py", "Hit")]),
 ("where is it checked that the chunk window overlap is smaller than the window", ["retrieval/settings.py"], [("retrieval/settings.py", "IndexSettings._check_window")]),
 ("how is the reranker hot-reloaded when models/current changes", ["reranker/manager.py"], [("reranker/manager.py", "RerankerManager.check")]),
 ("how does the reranker manager notice model weights rewritten in place", ["reranker/manager.py"], [("reranker/manager.py", "_weights_stamp")]),
 ("why is no reranker loaded and where is the reason reported", ["reranker/manager.py"], [("reranker/manager.py", "RerankerManager.none_reason")]),
 ("how are cross-encoder scores blended with the fused retrieval scores", ["reranker/stage.py"], [("reranker/stage.py", "blend_scores"), ("reranker/stage.py", "minmax")]),
 ("what happens when the cross-encoder takes longer than timeout_ms", ["reranker/stage.py"], [("reranker/stage.py", "_score_with_deadline")]),
 ("how are hits beyond the reranked top n scored so they stay below the head", ["reranker/stage.py"], [("reranker/stage.py", "tail_scores")]),
 ("how does the rerank stage fall back to the fused order on errors", ["reranker/stage.py"], [("reranker/stage.py", "rerank")]),
 ("where are cross-encoder scores cached between searches", ["reranker/cache.py"], [("reranker/cache.py", "ScoreCache")]),
 ("how is int8 dynamic quantization applied to the cross-encoder", ["reranker/model.py"], [("reranker/model.py", "Int8Backend")]),
 ("how is a long query truncated in the cross-encoder input", ["reranker/model.py"], [("reranker/model.py", "CrossEncoderScorer._cap_query"), ("reranker/model.py", "CrossEncoderScorer.encode")]),
 ("how does model loading refuse a folder without safetensors or an untrained head", ["reranker/model.py"], [("reranker/model.py", "_check_model_dir")]),
 ("how is a fresh cross-encoder created from the MiniLM backbone", ["reranker/model.py"], [("reranker/model.py", "create_from_backbone")]),
 ("how does the auto backend choose between bf16 and fp32", ["reranker/model.py"], [("reranker/model.py", "resolve_backend_name")]),
 ("what are the default reranker alpha, topn and maxlen settings", ["reranker/settings.py"], [("reranker/settings.py", "RerankerSettings")]),
 ("how is a correct_location feedback checked against the files of the corpus", ["training/events/feedback.py"], [("training/events/feedback.py", "_check_location"), ("training/events/feedback.py", "_relative_path")]),
 ("how is feedback validated against the event it names and stored", ["training/events/feedback.py"], [("training/events/feedback.py", "submit_feedback")]),
 ("where does the server write query events", ["training/events/base.py"], [("training/events/base.py", "StoreBase.log_query")]),
 ("how are exact repeats of the same feedback deduplicated", ["training/events/records.py"], [("training/events/records.py", "dedupe_key")]),
 ("which SQLite pragmas make the event store durable under concurrent writers", ["training/events/sqlite.py"], [("training/events/sqlite.py", "SqliteEventStore._connect")]),
 ("how are schema migrations of agro.db applied", ["training/events/sqlite.py"], [("training/events/sqlite.py", "SqliteEventStore._migrate")]),
 ("how do we prevent two training jobs from running at once in one data home", ["training/events/sqlite_jobs.py"], [("training/events/sqlite_jobs.py", "SqliteJobs.acquire_lock")]),
 ("how are jobs whose process died marked as failed", ["training/events/sqlite_jobs.py"], [("training/events/sqlite_jobs.py", "SqliteJobs.reap_dead_jobs")]),
 ("how are seeds-format query logs with malformed lines imported", ["training/events/logs_io.py"], [("training/events/logs_io.py", "import_logs")]),
 ("how are JSONL exports written without leaving a half-written file", ["training/events/logs_io.py"], [("training/events/logs_io.py", "write_jsonl_atomic")]),
 ("how are the seeds' thumbsup and star ratings mapped to our feedback signals", ["training/events/logs_io.py"], [("training/events/logs_io.py", "_feedback_fields")]),
 ("how are MRR@10 and nDCG@10 computed for evaluation", ["training/evaluation/metrics.py"], [("training/evaluation/metrics.py", "reciprocal_rank"), ("training/evaluation/metrics.py", "ndcg_at")]),
 ("how are expected paths matched against results without loose substring matches", ["training/evaluation/metrics.py"], [("training/evaluation/metrics.py", "path_matches")]),
 ("how is span-level relevance judged when results overlap gold line ranges", ["training/evaluation/metrics.py"], [("training/evaluation/metrics.py", "judge_spans")]),
 ("how is a bootstrap confidence interval computed for small evaluation sets", ["training/evaluation/metrics.py"], [("training/evaluation/metrics.py", "bootstrap_ci")]),
 ("where is golden.json validated and how are bad rows reported", ["training/evaluation/golden.py"], [("training/evaluation/golden.py", "load_golden")]),
 ("how does adding a golden question avoid losing concurrent additions", ["training/evaluation/golden.py"], [("training/evaluation/golden.py", "add_golden")]),
 ("how is a benchmark collection from ../shared/bench loaded for evaluation", ["training/evaluation/datasets.py"], [("training/evaluation/datasets.py", "load_bench")]),
 ("where is the Base -> Reranked comparison table formatted", ["training/evaluation/report.py"], [("training/evaluation/report.py", "format_table")]),
 ("where is latest.json with the evaluation results written", ["training/evaluation/report.py"], [("training/evaluation/report.py", "save_report")]),
 ("where is the evaluation history plotted as a png", ["training/evaluation/plot.py"], [("training/evaluation/plot.py", "plot_history")]),
 ("which training hyper-parameters and promotion thresholds can be configured", ["training/settings.py"], [("training/settings.py", "TrainingSettings")]),
 ("how are AGRO_ environment variables and agro.toml merged into the settings", ["agro_mcp/config.py"], [("agro_mcp/config.py", "load_settings")]),
 ("how are list-valued environment variables like extra ignores parsed", ["retrieval/settings.py"], [("retrieval/settings.py", "IndexSettings._split_patterns")]),
 ("which folders may agro.toml be read from, and never the working folder", ["agro_mcp/config.py"], [("agro_mcp/config.py", "config_path")]),
 ("why is llm_base_url never taken from a repository's agro.toml", ["agro_mcp/config.py"], [("agro_mcp/config.py", "_drop_off_machine")]),
 ("where is the common base class of all agro exceptions", ["retrieval/errors.py"], [("retrieval/errors.py", "AgroError"), ("retrieval/errors.py", "AgroUserError")]),
 ("where is the default data home ~/.agro set", ["agro_mcp/config.py"], [("agro_mcp/config.py", "ServerSettings")]),
]

def find(path, sym):
    tree = ast.parse((ROOT / path).read_text())
    parts = sym.split(".")
    body = tree.body
    node = None
    for part in parts:
        node = None
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part:
                node = n
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                tgts = n.targets if isinstance(n, ast.Assign) else [n.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in tgts):
                    node = n
        if node is None:
            raise SystemExit(f"{path}: {sym} not found")
        body = getattr(node, "body", [])
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return start, node.end_lineno

items = []
for q, paths, spans in Q:
    sp = [GoldenSpan(path=p, start_line=s, end_line=e) for p, sym in spans for s, e in [find(p, sym)]]
    items.append(GoldenItem(q=q, repo="agro-mcp", expect_paths=paths, expect_spans=sp))
assert len({i.q for i in items}) == len(items)
(ROOT / "golden.json").write_text(dump_golden_rows(items))
print(len(items), "items;", sum(len(i.expect_spans) for i in items), "spans")
