"""The loop's mining step on a real index (MiniLM): which pairs the corpus bootstrap mines."""

from __future__ import annotations


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
