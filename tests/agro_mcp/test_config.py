from pathlib import Path

import pytest

from agro_mcp.config import ENV_SECTIONS, ConfigError, Settings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def all_env_names() -> list[str]:
    names = []
    for section, prefix in ENV_SECTIONS.items():
        model = Settings.model_fields[section].annotation
        names += [prefix + f.upper() for f in model.model_fields]
    return names


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


def test_toml_file_is_read_and_environment_wins(tmp_path):
    cfg = tmp_path / "agro.toml"
    cfg.write_text('[reranker]\nalpha = 0.9\ntopn = 20\n[index]\nextra_ignores = ["x/"]\n')
    s = load_settings(env={"AGRO_HOME": str(tmp_path), "AGRO_RERANKER_TOPN": "5"}, config_file=cfg)
    assert s.reranker.alpha == 0.9 and s.reranker.topn == 5 and s.index.extra_ignores == ["x/"]


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"AGRO_RERANKER_ALPHA": "2"}, "reranker.alpha"),
        ({"AGRO_RERANKER_TOPN": "many"}, "reranker.topn"),
        ({"AGRO_INDEX_WINDOW_LINES": "10", "AGRO_INDEX_WINDOW_OVERLAP": "10"}, "window_overlap"),
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


def test_readme_starts_with_the_two_scripts_that_exist():
    text = README.read_text()
    root = README.parent
    assert "scripts/run.sh" in text and "scripts/test.sh" in text
    assert (root / "scripts/run.sh").is_file() and (root / "scripts/test.sh").is_file()
    assert "scripts/test.sh" in (root / ".ci/run").read_text()
