"""``agro pretrain``: a base reranker trained offline on documented code, published atomically, used by later runs."""

from __future__ import annotations

import json

import pytest

from agro_mcp.config import IndexSettings
from retrieval.discovery import discover_files
from tests.agro_mcp.test_cli_training import make_repo, run
from training.learning.bases import current_base
from training.learning.pretrain import STDLIB_IGNORES, stdlib_root
from training.learning.bases import resolve_base


def test_the_default_source_is_the_standard_library_without_its_tests_or_gui_tools():
    root = stdlib_root()
    assert (root / "os.py").is_file()
    found = discover_files(root, IndexSettings(extra_ignores=STDLIB_IGNORES))
    rel = {f.path for f in found.files}
    assert any(r.endswith("json/decoder.py") for r in rel) and any(r.endswith("collections/__init__.py") for r in rel)
    assert not any("/test/" in f"/{r}" or "/idlelib/" in f"/{r}" or "site-packages/" in r for r in rel)


@pytest.mark.slow
def test_pretrain_publishes_a_complete_base_that_later_runs_start_from(cli_env, capsys, monkeypatch):
    src = make_repo(cli_env / "documented")
    code, out, err = run(capsys, "pretrain", "--source", str(src), "--json")
    assert code == 0, err
    res = json.loads(out)
    home = cli_env / "home"
    base = current_base(home)
    assert base is not None and base["id"] == res["base"] and base["kind"] == "pretrained"
    assert base["source"] == str(src.resolve()) and base["train_triplets"] >= 5
    assert base["chunks"] >= 40 and base["heldout"]["n_queries"] > 0
    assert "MRR@10" in base["heldout"]["levels"]["fused+candidate"]["span"]  # judged on its own held-out pairs
    assert (home / "models" / "base" / "current").is_symlink()
    assert (home / "models" / "base" / base["id"] / "config.json").is_file()  # the model itself, loadable
    # the scratch home is gone, nothing reached the user's own indexes or runs
    assert not list((home / "models" / "base").glob(".work-*"))
    assert not (home / "models" / "current").exists()
    # later runs start from it when nothing more specific is set
    monkeypatch.delenv("AGRO_TRAINING_BASE_MODEL")
    picked = resolve_base(home / "models", None, cli_env / "w")
    assert picked.kind == "pretrained" and picked.release_id == base["id"]
    assert picked.ref == str((home / "models" / "base" / base["id"]).resolve())
    # a configured base still wins over it
    assert resolve_base(home / "models", str(cli_env / "tiny"), cli_env / "w").kind == "configured"


def test_pretrain_on_a_folder_without_documented_code_fails_clearly_and_publishes_nothing(cli_env, capsys):
    src = cli_env / "bare"
    src.mkdir()
    for i in range(5):
        (src / f"m{i}.py").write_text("\n\n".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(5)))
    code, _, err = run(capsys, "pretrain", "--source", str(src))
    assert code == 2 and "documented functions" in err
    assert current_base(cli_env / "home") is None
    assert not list((cli_env / "home" / "models" / "base").glob(".work-*"))
    code, _, err = run(capsys, "pretrain", "--source", str(cli_env / "missing"))
    assert code == 2 and "not a folder" in err


def test_an_incomplete_base_is_never_used_and_leftovers_of_a_killed_run_are_swept(cli_env, capsys):
    root = cli_env / "home" / "models" / "base"
    (root / "b1").mkdir(parents=True)
    (root / "b1" / "config.json").write_text("{}")  # copied, but killed before its manifest
    (root / "current").symlink_to("b1")
    assert current_base(cli_env / "home") is None
    assert resolve_base(cli_env / "home" / "models", None, cli_env / "w").kind == "backbone"
    (root / ".work-old").mkdir()
    (root / ".b2.partial").mkdir()
    code, _, err = run(capsys, "pretrain", "--source", str(cli_env / "missing"))
    assert code == 2  # refused before any work ...
    src = cli_env / "bare"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x\n")
    code, _, err = run(capsys, "pretrain", "--source", str(src))
    assert code == 2 and not (root / ".work-old").exists() and not (root / ".b2.partial").exists()  # ... swept here
