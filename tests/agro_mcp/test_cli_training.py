"""The learning-loop commands of ``agro``, in process, on a small generated repository."""

from __future__ import annotations

import json

import pytest

from agro_mcp.cli import main

WORDS = ["parse", "render", "cache", "merge", "split", "encode", "decode", "validate", "format", "compress",
         "hash", "sort", "filter", "group", "resolve", "load", "store", "index", "rank", "score"]
NOUNS = ["header", "token", "template", "path", "config", "record", "stream", "buffer", "query", "schema"]


def make_repo(root):
    root.mkdir()
    n = 0
    for f in range(6):
        parts = []
        for j in range(8):
            v, o = WORDS[(f * 8 + j) % len(WORDS)], NOUNS[(f * 3 + j) % len(NOUNS)]
            body = "\n".join(f"    step_{k} = {o}_{n} + {k}" for k in range(6))
            parts.append(f'def {v}_{o}_{n}({o}_{n}):\n    """{v.title()} the {o} number {n} and return it '
                         f'for the {NOUNS[j % len(NOUNS)]} module."""\n{body}\n    return step_5\n')
            n += 1
        (root / f"mod{f}.py").write_text("\n\n".join(parts))
    return root


@pytest.fixture
def env(cli_env):
    return cli_env


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_bootstrap_then_jobs_runs_promote_and_rollback_from_the_cli(env, capsys, monkeypatch):
    monkeypatch.setenv("AGRO_TRAINING_CALIBRATION_MIN_QUERIES", "3")  # this small repo gives ~7 calibration questions
    repo = make_repo(env / "repo")
    assert run(capsys, "index", str(repo), "--corpus", "demo")[0] == 0
    code, out, err = run(capsys, "bootstrap", "--corpus", "demo")
    # docstring questions only (no git history here): the gate refuses whatever they say (AGRO_TRAINING_SYNTHETIC_ONLY)
    assert code == 1, err
    assert "gate: REFUSE" in out and "judged only on synthetic questions" in out and "refused" in out
    code, out, _ = run(capsys, "jobs", "--json")
    jobs = json.loads(out)["jobs"]
    assert jobs[0]["kind"] == "bootstrap" and jobs[0]["state"] == "succeeded"
    run_id = jobs[0]["run_id"]
    code, out, _ = run(capsys, "jobs", "--runs")
    assert json.loads(out)["runs"][0]["run_id"] == run_id
    # forcing a promotion is possible and recorded; rollback then has no parent
    # the run was calibrated on questions it was not trained on, and its release is served with that alpha
    run_json = json.loads((env / "home" / "models" / "runs" / run_id / "run.json").read_text())
    blend = run_json["blend"]
    assert blend["alpha"] in [float(a) for a in blend["mrr_by_alpha"]] and blend["n_queries"] >= 3
    assert run_json["split"]["calibration"]["queries"] == blend["n_queries"]
    assert blend["views"] == ["demo"]  # calibrated on the same docstring-free view the gate judges on
    # the dense weight was weighed on the training questions (3 / 0.2 = 15 needed), on the same kind of view
    weighing = blend["dense_weighing"]
    assert weighing["n_queries"] >= 15 and blend["dense_weight"] in [float(w) for w in weighing["mrr_by_dense_weight"]]
    # the gate scored the docstring questions on a view of the index without their answers' docstrings
    evaluation = json.loads((env / "home" / "models" / "runs" / run_id / "evaluation.json").read_text())
    assert any("without their answers' docstrings" in n for n in evaluation["notes"])
    assert evaluation["decision"]["figures"]["judged_on"]["questions"] == "synthetic only"
    code, out, err = run(capsys, "promote", run_id, "--force")
    assert code == 0 and "PROMOTED" in out
    manifest = json.loads((env / "home" / "models" / "current" / "manifest.json").read_text())
    assert manifest["blend"]["alpha"] == blend["alpha"]
    assert manifest["blend"]["dense_weight"] == blend["dense_weight"]
    code, out, err = run(capsys, "rollback")
    assert code == 2 and "no parent" in err  # the forced release is the first one


def test_user_errors_exit_2_with_a_message(env, capsys):
    code, _, err = run(capsys, "feedback", "nope", "used", "--doc-id", "a.py:1-2")
    assert code == 2 and "Unknown event_id" in err
    code, _, err = run(capsys, "promote", "no-such-run")
    assert code == 2 and "No run 'no-such-run'" in err
    code, _, err = run(capsys, "rollback")
    assert code == 2 and "No current release" in err
    code, _, err = run(capsys, "loop")
    assert code == 1 or code == 2


def test_golden_add_appends_a_validated_row(env, capsys, tmp_path):
    g = tmp_path / "golden.json"
    g.write_text("[]")
    code, out, err = run(capsys, "golden", "add", "--q", "where are tokens parsed", "--repo", "demo",
                         "--span", "src/tok.py:3-9", "--file", str(g))
    assert code == 0, err
    (row,) = json.loads(g.read_text())
    assert row["expect_spans"] == [{"path": "src/tok.py", "start_line": 3, "end_line": 9}]
    code, _, err = run(capsys, "golden", "add", "--q", "x", "--repo", "demo", "--span", "bad", "--file", str(g))
    assert code == 2


def test_admin_actions_answer_or_say_what_to_do(env):
    from agro_mcp.config import load_settings
    from agro_mcp.engine import Engine
    from training.releases.admin import AdminError, run_admin_action

    eng = Engine(load_settings())
    try:
        st = run_admin_action(eng.workspace, "status")
        assert st == {"jobs": [], "training_lock": None, "current_release": None}
        assert run_admin_action(eng.workspace, "runs") == {"runs": [], "releases": []}
        for action, kw, msg in [("eval_latest", {}, "No evaluation yet"), ("logs", {}, "needs run_id"),
                                ("cancel", {"run_id": "nope"}, "Unknown run_id"), ("rollback", {}, "No current release"),
                                ("promote", {}, "No succeeded training run"), ("train", {"run_id": "../x"}, "run_id"),
                                ("bogus", {}, "action expects")]:
            with pytest.raises(AdminError, match=msg):
                run_admin_action(eng.workspace, action, **kw)
        rid = run_admin_action(eng.workspace, "mine")["run_id"]
        import time

        for _ in range(200):
            job = run_admin_action(eng.workspace, "status", run_id=rid)["job"]
            if job["state"] in ("succeeded", "failed"):
                break
            time.sleep(0.05)
        assert job["state"] == "succeeded" and job["result"]["train"] == 0
        assert any("mined" in line for line in run_admin_action(eng.workspace, "logs", run_id=rid)["lines"])
    finally:
        eng.close()


def test_bootstrap_that_mines_nothing_says_why_and_a_next_step_other_than_itself(env, capsys):
    repo = env / "bare"
    repo.mkdir()
    (repo / "m.py").write_text("def f(x):\n    return x\n\n\nX = 1\n")
    assert run(capsys, "index", str(repo), "--corpus", "bare")[0] == 0
    code, out, err = run(capsys, "bootstrap", "--corpus", "bare")
    assert code == 1
    assert "mined too little to train" in out and "history not mined" in out and "not in a git work tree" in out
    assert "0 docstring pairs in bare" in out and "0 identifier pairs in bare" in out
    assert "agro loop" in out and "run `agro bootstrap`" not in out
