import importlib.util
import logging
import subprocess
from pathlib import Path

import pytest

from agro_mcp.config import ENV_SECTIONS, SECTIONS, ConfigError, load_settings
from retrieval.settings import IndexSettings
from reranker.settings import RerankerSettings
from training.events.sqlite import SqliteEventStore

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Every variable name the settings had before pydantic-settings; each must keep working.
KNOWN_NAMES = [
    "AGRO_HOME", "AGRO_DEFAULT_CORPUS", "AGRO_ADMIN_ENABLED", "AGRO_ADMIN_WAIT_TIMEOUT_SEC", "AGRO_LOG_LEVEL",
    "AGRO_LLM_BASE_URL", "AGRO_LLM_MODEL", "AGRO_LLM_API_KEY", "AGRO_LLM_TIMEOUT_SEC", "AGRO_ANSWER_CONTEXT_TOKENS",
    "AGRO_BACKEND", "AGRO_DATABASE_URL", "AGRO_DB_POOL_SIZE", "AGRO_INDEX_MAX_FILE_BYTES", "AGRO_INDEX_EXTRA_IGNORES",
    "AGRO_INDEX_RESPECT_GITIGNORE", "AGRO_INDEX_INDEX_SECRETS", "AGRO_INDEX_MAX_CHUNK_LINES",
    "AGRO_INDEX_WINDOW_LINES", "AGRO_INDEX_WINDOW_OVERLAP", "AGRO_INDEX_EMBED_BATCH", "AGRO_INDEX_KEEP_GENERATIONS",
    "AGRO_RETRIEVAL_EMBED_MODEL", "AGRO_RETRIEVAL_EMBED_DTYPE", "AGRO_RETRIEVAL_EMBED_MAX_TOKENS",
    "AGRO_RETRIEVAL_QUERY_WINDOWS", "AGRO_RETRIEVAL_BM25_K1", "AGRO_RETRIEVAL_BM25_B", "AGRO_RETRIEVAL_RRF_K",
    "AGRO_RETRIEVAL_DENSE_FUSION", "AGRO_RETRIEVAL_DENSE_FUSION_EXPONENT", "AGRO_RETRIEVAL_LEXICAL_CANDIDATES",
    "AGRO_RETRIEVAL_DENSE_CANDIDATES", "AGRO_RETRIEVAL_MAX_QUERY_CHARS", "AGRO_RETRIEVAL_MAX_QUERY_TERMS",
    "AGRO_RETRIEVAL_STALE_CHECK_TTL_SEC", "AGRO_RETRIEVAL_LEXICAL_POSTINGS_PER_TERM",
    "AGRO_RETRIEVAL_LEXICAL_POSTINGS_BUDGET", "AGRO_RETRIEVAL_HNSW_EF_SEARCH", "AGRO_RETRIEVAL_HNSW_M",
    "AGRO_RETRIEVAL_HNSW_EF_CONSTRUCTION", "AGRO_RERANKER_ENABLED", "AGRO_RERANKER_MODEL_PATH",
    "AGRO_RERANKER_DENSE_WEIGHT", "AGRO_RERANKER_ALPHA", "AGRO_RERANKER_TOPN", "AGRO_RERANKER_BATCH",
    "AGRO_RERANKER_MAXLEN", "AGRO_RERANKER_QUERY_MAX_TOKENS", "AGRO_RERANKER_LONG_QUERY_FACTOR",
    "AGRO_RERANKER_LONG_QUERY_MODE", "AGRO_RERANKER_LONG_QUERY_WINDOWS", "AGRO_RERANKER_LONG_QUERY_POOL",
    "AGRO_RERANKER_BACKEND", "AGRO_RERANKER_TIMEOUT_MS", "AGRO_RERANKER_RELOAD_ON_CHANGE",
    "AGRO_RERANKER_RELOAD_PERIOD_SEC", "AGRO_RERANKER_CACHE_SIZE", "AGRO_RERANKER_PREWARM", "AGRO_RERANKER_THREADS",
    "AGRO_TRAINING_MODEL_KIND", "AGRO_TRAINING_BI_ENCODER_EPOCHS", "AGRO_TRAINING_BI_ENCODER_LEARNING_RATE",
    "AGRO_TRAINING_BI_ENCODER_NEGATIVES", "AGRO_TRAINING_BI_ENCODER_MAX_STEPS", "AGRO_TRAINING_BI_ENCODER_ALPHA",
    "AGRO_TRAINING_BASE_MODEL", "AGRO_TRAINING_LOSS", "AGRO_TRAINING_EPOCHS", "AGRO_TRAINING_MIN_STEPS",
    "AGRO_TRAINING_MAX_EPOCHS", "AGRO_TRAINING_CALIBRATE_ALPHA", "AGRO_TRAINING_UNCALIBRATED_ALPHA",
    "AGRO_TRAINING_CALIBRATION_FRACTION", "AGRO_TRAINING_CALIBRATION_MIN_QUERIES", "AGRO_TRAINING_BATCH_SIZE",
    "AGRO_TRAINING_LEARNING_RATE", "AGRO_TRAINING_MAX_LENGTH", "AGRO_TRAINING_SEED",
    "AGRO_TRAINING_NEGATIVES_PER_QUERY", "AGRO_TRAINING_HELDOUT_FRACTION", "AGRO_TRAINING_MIN_TRIPLETS",
    "AGRO_TRAINING_BOOTSTRAP_CAP", "AGRO_TRAINING_BOOTSTRAP_USAGE_SHARE", "AGRO_TRAINING_MAX_TRAIN_PAIRS",
    "AGRO_TRAINING_PRETRAIN_CAP", "AGRO_TRAINING_PRETRAIN_MAX_PAIRS", "AGRO_TRAINING_PROMOTE_DELTA",
    "AGRO_TRAINING_PROMOTE_MIN_QUERIES", "AGRO_TRAINING_BF16", "AGRO_TRAINING_STUDENT_LAYERS",
    "AGRO_TRAINING_DISTILL_TEACHER", "AGRO_TRAINING_DISTILL_WEIGHT",
]

EVIL = '[server]\nllm_base_url = "http://evil.example/v1"\nllm_api_key = "planted"\nllm_model = "m"\n' \
       'database_url = "postgresql://evil.example/db"\n[reranker]\nalpha = 0.11\n'


def all_env_names() -> list[str]:
    return [cls.env_name(f) for cls in SECTIONS.values() for f in cls.model_fields]


def _gen_doc_module():
    spec = importlib.util.spec_from_file_location("gen_settings_doc", ROOT / "scripts" / "gen_settings_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_env_values_reach_every_section(tmp_path):
    s = load_settings(
        env={"AGRO_HOME": str(tmp_path), "AGRO_RERANKER_ALPHA": "0.5", "AGRO_RERANKER_ENABLED": "0",
             "AGRO_INDEX_EXTRA_IGNORES": "a/, *.snap", "AGRO_RETRIEVAL_RRF_K": "10", "AGRO_TRAINING_EPOCHS": "2"},
        config_file=tmp_path / "none.toml",
    )
    assert s.server.home == tmp_path.resolve()
    assert s.reranker.alpha == 0.5 and s.reranker.enabled is False
    assert s.index.extra_ignores == ["a/", "*.snap"]
    assert s.retrieval.rrf_k == 10 and s.training.epochs == 2


def test_list_settings_accept_json_from_the_environment(tmp_path):
    s = load_settings(env={"AGRO_HOME": str(tmp_path), "AGRO_INDEX_EXTRA_IGNORES": '["a,b/", "c/"]'})
    assert s.index.extra_ignores == ["a,b/", "c/"]


def test_every_known_variable_name_is_still_read(tmp_path):
    assert sorted(all_env_names()) == sorted(set(all_env_names()))  # no two fields share a name
    missing = [n for n in KNOWN_NAMES if n not in all_env_names()]
    assert not missing, f"renamed or removed: {missing}"
    assert ENV_SECTIONS["server"] == "AGRO_" and ENV_SECTIONS["reranker"] == "AGRO_RERANKER_"


def test_empty_environment_values_mean_unset(tmp_path):
    s = load_settings(env={"AGRO_HOME": str(tmp_path), "AGRO_RERANKER_TOPN": "", "AGRO_LLM_MODEL": ""})
    assert s.reranker.topn == 50 and s.server.llm_model is None


def test_toml_file_is_read_and_environment_wins(tmp_path):
    cfg = tmp_path / "agro.toml"
    cfg.write_text('[reranker]\nalpha = 0.9\ntopn = 20\n[index]\nextra_ignores = ["x/"]\n')
    s = load_settings(env={"AGRO_HOME": str(tmp_path), "AGRO_RERANKER_TOPN": "5"}, config_file=cfg)
    assert s.reranker.alpha == 0.9 and s.reranker.topn == 5 and s.index.extra_ignores == ["x/"]
    assert {"alpha", "topn"} <= s.reranker.model_fields_set and "batch" not in s.reranker.model_fields_set


def test_agro_home_toml_is_read_with_its_off_machine_settings(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "agro.toml").write_text(EVIL)
    s = load_settings(env={"AGRO_HOME": str(home)})
    assert s.reranker.alpha == 0.11
    assert s.server.llm_base_url == "http://evil.example/v1" and s.server.llm_api_key == "planted"


def test_agro_config_names_the_one_file(tmp_path):
    home, cfg = tmp_path / "home", tmp_path / "etc" / "agro.toml"
    home.mkdir()
    cfg.parent.mkdir()
    (home / "agro.toml").write_text("[reranker]\ntopn = 7\n")
    cfg.write_text("[reranker]\nalpha = 0.4\n")
    s = load_settings(env={"AGRO_HOME": str(home), "AGRO_CONFIG": str(cfg)})
    assert s.reranker.alpha == 0.4 and s.reranker.topn == 50


def test_a_working_folder_agro_toml_is_never_read(tmp_path, monkeypatch):
    repo, home = tmp_path / "cloned", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    (repo / "agro.toml").write_text(EVIL + "[index]\nindex_secrets = true\n")
    monkeypatch.chdir(repo)
    s = load_settings(env={"AGRO_HOME": str(home)})
    assert s.server.llm_base_url is None and s.server.llm_api_key is None and s.server.database_url is None
    assert s.reranker.alpha == 0.7 and s.index.index_secrets is False


def test_a_relative_agro_config_is_refused(tmp_path, monkeypatch):
    (tmp_path / "agro.toml").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="AGRO_CONFIG expects an absolute path"):
        load_settings(env={"AGRO_HOME": str(tmp_path / "home"), "AGRO_CONFIG": "agro.toml"})


def test_a_missing_agro_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        load_settings(env={"AGRO_CONFIG": str(tmp_path / "nope.toml")})


def test_off_machine_settings_in_an_indexed_corpus_file_are_ignored(tmp_path, caplog):
    home, corpus = tmp_path / "home", tmp_path / "corpus"
    home.mkdir()
    (corpus / "sub").mkdir(parents=True)
    SqliteEventStore(home / "agro.db").register_corpus("corpus", corpus)
    (corpus / "sub" / "agro.toml").write_text(EVIL)
    with caplog.at_level(logging.WARNING, logger="agro_mcp.config"):
        s = load_settings(env={"AGRO_HOME": str(home), "AGRO_CONFIG": str(corpus / "sub" / "agro.toml")})
    assert s.server.llm_base_url is None and s.server.llm_api_key is None and s.server.database_url is None
    assert s.server.llm_model == "m" and s.reranker.alpha == 0.11  # the rest of a file the user named still applies
    assert "llm_base_url ignored" in caplog.text and "indexed corpus" in caplog.text
    assert "planted" not in caplog.text


def test_off_machine_settings_in_a_git_work_tree_are_ignored(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "agro.toml").write_text(EVIL)
    s = load_settings(env={"AGRO_HOME": str(tmp_path / "home"), "AGRO_CONFIG": str(repo / "agro.toml"),
                           "AGRO_LLM_BASE_URL": "http://127.0.0.1:8080/v1"})
    assert s.server.llm_base_url == "http://127.0.0.1:8080/v1" and s.server.llm_api_key is None


def test_settings_built_directly_never_read_the_environment(monkeypatch):
    monkeypatch.setenv("AGRO_RERANKER_ALPHA", "0.2")
    monkeypatch.setenv("AGRO_INDEX_MAX_FILE_BYTES", "5000")
    assert RerankerSettings().alpha == 0.7 and IndexSettings().max_file_bytes == 1_000_000
    assert load_settings(env={"AGRO_RERANKER_ALPHA": "0.2"}).reranker.alpha == 0.2


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"AGRO_RERANKER_ALPHA": "2"}, "AGRO_RERANKER_ALPHA \\(reranker.alpha\\)"),
        ({"AGRO_RERANKER_TOPN": "many"}, "reranker.topn"),
        ({"AGRO_INDEX_WINDOW_LINES": "10", "AGRO_INDEX_WINDOW_OVERLAP": "10"}, "window_overlap"),
        ({"AGRO_INDEX_EXTRA_IGNORES": "[oops"}, "AGRO_INDEX_EXTRA_IGNORES"),
        ({"AGRO_BACKEND": "mysql"}, "AGRO_BACKEND"),
    ],
)
def test_bad_values_name_the_setting(tmp_path, env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(env=env, config_file=tmp_path / "none.toml")


def test_unknown_toml_table_is_rejected(tmp_path):
    cfg = tmp_path / "agro.toml"
    cfg.write_text("[rerankr]\nalpha = 1\n")
    with pytest.raises(ConfigError, match="unknown table"):
        load_settings(env={}, config_file=cfg)


def test_unknown_toml_key_is_rejected(tmp_path):
    cfg = tmp_path / "agro.toml"
    cfg.write_text("[reranker]\nalpah = 1\n")
    with pytest.raises(ConfigError, match="alpah"):
        load_settings(env={}, config_file=cfg)


def test_every_setting_has_a_one_line_description():
    bad = [cls.env_name(n) for cls in SECTIONS.values() for n, f in cls.model_fields.items()
           if not f.description or "\n" in f.description or len(f.description) > 110]
    assert not bad, f"need one short line (figures go to bench/RESULTS.md): {bad}"


def test_settings_doc_is_up_to_date():
    mod = _gen_doc_module()
    doc = ROOT / "docs" / "settings.md"
    assert doc.is_file() and doc.read_text(encoding="utf-8") == mod.render(), (
        "docs/settings.md is out of date; run: python scripts/gen_settings_doc.py"
    )
    assert all(f"`{n}`" in doc.read_text() for n in all_env_names())


def test_readme_starts_with_the_two_scripts_that_exist():
    text = README.read_text()
    root = README.parent
    assert "scripts/run.sh" in text and "scripts/test.sh" in text
    assert (root / "scripts/run.sh").is_file() and (root / "scripts/test.sh").is_file()
    assert "scripts/test.sh" in (root / ".ci/run").read_text()
