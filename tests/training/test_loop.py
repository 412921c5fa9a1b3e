"""The loop's mining step on a real index (MiniLM): which pairs the corpus bootstrap mines."""

from __future__ import annotations

import pytest

from agro_mcp.engine import Engine
from tests.conftest import write_repo
from training.loop import mine

FILES = {
    "geo/distance.py": '''
        def haversine_km(lat1, lon1, lat2, lon2):
            """Great-circle distance between two points on the earth, in kilometres."""
            dlat = lat2 - lat1
            dlon = lon2 - lon1
            return 6371 * (dlat * dlat + dlon * dlon) ** 0.5


        class RoutePlanner:
            """Orders a list of stops so that the total travel distance is short."""

            def __init__(self, stops):
                self.stops = list(stops)
                self.order = []
    ''',
    "app/trip.py": '''
        from geo.distance import RoutePlanner, haversine_km


        def plan_trip(stops):
            planner = RoutePlanner(stops)
            total = 0.0
            for a, b in zip(stops, stops[1:]):
                total += haversine_km(a[0], a[1], b[0], b[1])
            return planner, total
    ''',
}


class Ctx:
    def log(self, line, *args):
        pass

    def progress(self, fraction, message=None):
        pass

    def cancelled(self):
        return False


def test_bootstrap_mines_usage_pairs_from_call_sites_when_given_a_share(tmp_path, make_settings, embedder):
    repo = write_repo(tmp_path / "repo", FILES)
    eng = Engine(make_settings(AGRO_TRAINING_BOOTSTRAP_USAGE_SHARE="0.5", AGRO_TRAINING_HELDOUT_FRACTION="0.01"),
                 embedder=embedder)
    try:
        eng.index(repo, "trips")
        split = mine(eng.workspace, Ctx(), ["bootstrap"], corpus="trips")
    finally:
        eng.close()
    rows = split.train + split.heldout
    usage = [t for t in rows if t.source == "corpus_usage"]
    assert split.info["sources"]["bootstrap_usage:trips"] == 2 == len(usage)
    by_def = {t.positive_text.split("\n")[1]: t.query for t in usage}  # located text: "# path :: symbol", code
    assert "planner = RoutePlanner(stops)" in by_def["class RoutePlanner:"]
    assert "total += haversine_km(a[0], a[1], b[0], b[1])" in by_def["def haversine_km(lat1, lon1, lat2, lon2):"]
    assert all(t.positive_doc_id.startswith("geo/distance.py:") for t in usage)
    # retrieval ranks the call site first for its own lines: it is the usage pair's hard negative
    assert all(any(n.startswith("app/trip.py:") for n in t.negative_doc_ids) for t in usage)
    docs = [t for t in rows if t.source == "corpus_bootstrap"]
    assert {t.query for t in docs} == {"Great-circle distance between two points on the earth, in kilometres."}


UNDOCUMENTED = {
    "net/pool.py": '''
        def acquire_connection(pool, timeout=5.0):
            conn = pool.pop()
            conn.touch(timeout)
            return conn


        def release_connection(pool, conn):
            conn.reset()
            pool.append(conn)
            return len(pool)
    ''',
}


def test_bootstrap_without_docstrings_or_history_mines_identifier_pairs(tmp_path, make_settings, embedder):
    repo = write_repo(tmp_path / "repo", UNDOCUMENTED)
    eng = Engine(make_settings(AGRO_TRAINING_HELDOUT_FRACTION="0.01"), embedder=embedder)
    try:
        eng.index(repo, "net")
        split = mine(eng.workspace, Ctx(), ["bootstrap"], corpus="net")
    finally:
        eng.close()
    rows = split.train + split.heldout
    assert split.info["sources"] == {"history:net": 0, "bootstrap:net": 0, "identifiers:net": 2}
    assert not split.info["history"]["net"]["git"]
    by_query = {t.query: t for t in rows}
    pair = by_query["acquire connection (pool, timeout=5.0)"]
    assert pair.source == "corpus_identifier" and pair.positive_doc_id.startswith("net/pool.py:1-")
    assert "def acquire_connection" not in pair.positive_text and "conn.touch(timeout)" in pair.positive_text


def test_bootstrap_on_a_git_work_tree_mines_history_and_holds_out_the_newest_commits(tmp_path, make_settings,
                                                                                        embedder):
    from tests.training.learning.test_history import Repo

    repo = Repo(tmp_path / "repo")
    names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    files: dict[str, str] = {}
    for i, n in enumerate(names):
        files[f"pkg/{n}.py"] = f"def compute_{n}(value):\n    total = value + {i}\n    return total * {i + 1}\n"
        repo.commit(f"Add the {n} computation for the report totals", {f"pkg/{n}.py": files[f"pkg/{n}.py"]})
    eng = Engine(make_settings(AGRO_TRAINING_HELDOUT_FRACTION="0.3", AGRO_TRAINING_MIN_TRIPLETS="5"), embedder=embedder)
    try:
        eng.index(repo.root, "calc")
        split = mine(eng.workspace, Ctx(), ["bootstrap"], corpus="calc")
    finally:
        eng.close()
    assert split.info["sources"] == {"history:calc": 10}  # history alone: docstring pairs are not mined beside it
    held = {t.query for t in split.heldout}
    assert held == {f"Add the {n} computation for the report totals" for n in names[-3:]}  # the newest three
    assert {t.source for t in split.train + split.heldout} == {"git_history"}
    newest = next(t for t in split.heldout if "kappa" in t.query)
    assert newest.positive_doc_id == "pkg/kappa.py:1-3" and "pkg/kappa.py:1-3" not in newest.negative_doc_ids
    report = split.info["history"]["calc"]
    assert report["mined"] == 10 and report["heldout_questions"] == 3
    assert "split by time" in split.info["method"]


TOPICS = {
    "mail/smtp.py": ("send_mail", "deliver an email message through the smtp relay"),
    "img/resize.py": ("resize_image", "shrink a picture to thumbnail width and height"),
    "db/migrate.py": ("apply_migration", "upgrade the database schema to the newest version"),
    "auth/otp.py": ("verify_code", "check a one time password from the authenticator app"),
    "geo/tz.py": ("local_time", "convert a timestamp into the timezone of a city"),
    "pay/refund.py": ("issue_refund", "return money to the card of a customer order"),
}


@pytest.mark.slow
def test_few_golden_questions_are_cross_validated_and_one_model_is_released_with_the_pooled_evidence(
        tmp_path, make_settings, embedder):
    """Twelve questions meet AGRO_TRAINING_MIN_TRIPLETS=12 together: the loop cross-validates them although each
    fold trains on eight and a fixed split would train on fewer than twelve."""
    import json

    from tests.reranker.conftest import build_tiny_cross_encoder
    from training.releases.jobs import run_job
    from training.loop import run_loop

    files = {path: f"def {fn}(item):\n    # {words}\n    result = item\n    return result\n"
             for path, (fn, words) in TOPICS.items()}
    repo = write_repo(tmp_path / "repo", files)
    golden = []
    for path, (fn, words) in TOPICS.items():
        golden.append({"q": f"how do we {words}", "repo": "jobs", "expect_paths": [path]})
        golden.append({"q": f"where is the code that will {words.split(' ', 2)[-1]}", "repo": "jobs",
                       "expect_paths": [path]})
    (tmp_path / "golden.json").write_text(json.dumps(golden))
    tiny = build_tiny_cross_encoder(tmp_path / "tiny")
    settings = make_settings(AGRO_TRAINING_MODEL_KIND="cross-encoder", AGRO_TRAINING_BASE_MODEL=str(tiny),
                             AGRO_TRAINING_MIN_TRIPLETS="12", AGRO_TRAINING_MAX_LENGTH="64",
                             AGRO_TRAINING_MIN_STEPS="0", AGRO_TRAINING_CALIBRATE_ALPHA="0",
                             AGRO_TRAINING_CV_FOLDS="3", AGRO_RERANKER_TOPN="10", AGRO_RERANKER_ENABLED="1")
    eng = Engine(settings, embedder=embedder)
    try:
        eng.index(repo, "jobs")
        run_id, res = run_job(eng.store, settings.server.home, "loop",
                              lambda ctx: run_loop(eng.workspace, ctx, ["golden"],
                                                   golden_path=tmp_path / "golden.json"))
    finally:
        eng.close()
    folds = res["cross_validation"]
    assert [f["fold"] for f in folds] == [1, 2, 3] and sum(f["questions"] for f in folds) == 12
    runs = settings.server.home / "models" / "runs"
    assert all((runs / f["run_id"] / "model").is_dir() for f in folds)  # k candidates
    final = json.loads((runs / run_id / "run.json").read_text())
    assert final["cross_validated"] == 3 and final["state"] == "succeeded"
    assert final["split"]["cv"] == {"folds": 3, "trained_on": "every question"}
    evaluation = json.loads((runs / run_id / "evaluation.json").read_text())
    gate = evaluation["decision"]
    assert gate["figures"]["n_queries"] == 12  # every question judged once, by a model that did not see it
    assert gate["reasons"][0].startswith("cross-validated: 3 folds")
    assert res["decision"] in ("promoted", "refused")


@pytest.mark.slow
def test_model_kind_auto_trains_both_kinds_and_records_which_the_gate_chose(tmp_path, make_settings, embedder):
    import json

    from training.releases.jobs import run_job
    from training.loop import run_loop

    files = {path: f"def {fn}(item):\n    # {words}\n    result = item\n    return result\n"
             for path, (fn, words) in TOPICS.items()}
    repo = write_repo(tmp_path / "repo", files)
    golden = [{"q": f"how do we {words}", "repo": "jobs", "expect_paths": [path]}
              for path, (_, words) in TOPICS.items()]
    (tmp_path / "golden.json").write_text(json.dumps(golden))
    settings = make_settings(AGRO_TRAINING_MODEL_KIND="auto", AGRO_TRAINING_MIN_TRIPLETS="3",
                             AGRO_TRAINING_MAX_LENGTH="64",
                             AGRO_TRAINING_MIN_STEPS="0", AGRO_TRAINING_CALIBRATE_ALPHA="0",
                             AGRO_TRAINING_BI_ENCODER_MAX_STEPS="2", AGRO_TRAINING_CV_FOLDS="0",
                             AGRO_TRAINING_HELDOUT_FRACTION="0.5", AGRO_RERANKER_TOPN="10",
                             AGRO_RERANKER_ENABLED="1")
    eng = Engine(settings, embedder=embedder)
    try:
        eng.index(repo, "jobs")
        run_id, res = run_job(eng.store, settings.server.home, "loop",
                              lambda ctx: run_loop(eng.workspace, ctx, ["golden"],
                                                   golden_path=tmp_path / "golden.json"))
    finally:
        eng.close()
    choice = res["kind_choice"]
    assert [t["kind"] for t in choice["tried"]] == ["bi-encoder", "cross-encoder"]
    runs = settings.server.home / "models" / "runs"
    kinds = {json.loads((runs / t["run_id"] / "run.json").read_text())["model_kind"] for t in choice["tried"]}
    assert kinds == {"bi-encoder", "cross-encoder"}
    chosen = json.loads((runs / res["candidate_run"] / "run.json").read_text())
    assert chosen["kind_choice"]["chosen"] == chosen["model_kind"] and choice["why"].startswith(chosen["model_kind"])
    assert res["decision"] in ("promoted", "refused")


def _feedback_triplets(n):
    from training.learning.miners import Triplet

    return [Triplet(f"where do we handle case {i}", f"def case_{i}(): pass", f"m.py:{i}-{i}", ["x"], ["n.py:1-2"],
                    "feedback", "c") for i in range(n)]


def test_a_cross_validated_loop_counts_every_question_against_the_triplet_minimum():
    from training.learning.miners import split_by_query
    from training.loop import cv_folds, trainable_triplets
    from training.settings import TrainingSettings

    ts = TrainingSettings(min_triplets=20, cv_folds=5, cv_below=30, heldout_fraction=0.2)
    split = split_by_query(_feedback_triplets(20), ts.heldout_fraction, ts.seed)
    assert len(split.train) < ts.min_triplets  # a fixed split alone would refuse to train on these 20 questions
    folds = cv_folds(split, ts)
    assert folds is not None and sum(len(f) for f in folds) == 20
    assert trainable_triplets(split, folds) == 20 >= ts.min_triplets
    assert trainable_triplets(split, None) == len(split.train)


@pytest.mark.slow
def test_the_next_loop_compares_with_the_current_release_only_on_questions_it_did_not_learn_from(
        tmp_path, make_settings, embedder):
    """A release trained on every golden question would be judged on its own training data by the next loop; the
    gate leaves those questions out of that comparison (here all of them, so it refuses and says why)."""
    import json

    from tests.reranker.conftest import build_tiny_cross_encoder
    from training.loop import promote_step, run_loop, trained_questions
    from training.releases.jobs import run_job
    from training.releases.promote import current_release

    files = {path: f"def {fn}(item):\n    # {words}\n    result = item\n    return result\n"
             for path, (fn, words) in TOPICS.items()}
    repo = write_repo(tmp_path / "repo", files)
    golden = [{"q": f"how do we {words}", "repo": "jobs", "expect_paths": [path]}
              for path, (fn, words) in TOPICS.items()]
    golden += [{"q": f"where is the code that will {words.split(' ', 2)[-1]}", "repo": "jobs", "expect_paths": [path]}
               for path, (fn, words) in TOPICS.items()]
    (tmp_path / "golden.json").write_text(json.dumps(golden))
    tiny = build_tiny_cross_encoder(tmp_path / "tiny")
    settings = make_settings(AGRO_TRAINING_MODEL_KIND="cross-encoder", AGRO_TRAINING_BASE_MODEL=str(tiny),
                             AGRO_TRAINING_MIN_TRIPLETS="12", AGRO_TRAINING_MAX_LENGTH="64",
                             AGRO_TRAINING_MIN_STEPS="0", AGRO_TRAINING_CALIBRATE_ALPHA="0",
                             AGRO_TRAINING_CV_FOLDS="3", AGRO_RERANKER_TOPN="10", AGRO_RERANKER_ENABLED="1",
                             AGRO_TRAINING_PROMOTE_MIN_QUERIES="6")
    models = settings.server.home / "models"
    eng = Engine(settings, embedder=embedder)
    try:
        eng.index(repo, "jobs")
        loop = lambda ctx: run_loop(eng.workspace, ctx, ["golden"], golden_path=tmp_path / "golden.json")  # noqa: E731
        first, res = run_job(eng.store, settings.server.home, "loop", loop)
        if res["decision"] != "promoted":
            run_job(eng.store, settings.server.home, "promote",
                    lambda ctx: promote_step(eng.workspace, ctx, first, force=True))
        cur = current_release(models)
        assert cur["data"]["trained_query_hashes"] and len(trained_questions(models, cur)) == 12
        second, res = run_job(eng.store, settings.server.home, "loop", loop)
    finally:
        eng.close()
    gate = res["gate"]
    assert res["decision"] == "refused"
    assert any("only 0 of the 12 held-out questions are new to the current release" in r for r in gate["reasons"])
    assert "mrr_gain_vs_retrieval" in gate["figures"]  # retrieval never trained: compared on all twelve
