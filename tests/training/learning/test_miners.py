"""Miners on crafted stores with known expected triplets.

Tests taking ``store`` run on both event-store backends (tests/training/conftest.py).
"""

from __future__ import annotations

from types import SimpleNamespace

from retrieval.types import Chunk
from training.learning.miners import (
    Triplet,
    extract_doc_pair,
    extract_usage_pairs,
    heldout_questions,
    mine_bootstrap,
    mine_feedback,
    mine_golden,
    split_by_query,
)
from training.events.records import ChunkText, QueryEvent, ResultRecord


def add_event(store, event_id, query, docs, corpus="c"):
    results = tuple(
        ResultRecord(rank=i, doc_id=f"{d}.py:1-5", path=f"{d}.py", start_line=1, end_line=5, chunk_hash=f"h{d}")
        for i, d in enumerate(docs, 1)
    )
    texts = [ChunkText(f"h{d}", f"text of {d}", f"{d}.py", symbol="X.y" if d == "c" else None) for d in docs]
    store.insert_event(QueryEvent(event_id, 1.0, corpus, query, len(docs), results=results), texts)


def by_pos(triplets):
    return {t.positive_doc_id: t for t in triplets}


def test_used_positive_gets_explicit_then_skip_above_then_lower_negatives(store):
    add_event(store, "e1", "where is x", ["a", "b", "c", "d", "e"])
    store.add_feedback("e1", "thumbs_down", doc_id="a.py:1-5", ts=2.0)
    store.add_feedback("e1", "used", doc_id="c.py:1-5", ts=3.0)
    (t,) = mine_feedback(store, negatives_per_query=3)
    # Texts are what the reranker scores: the chunk under its location header (path, and symbol when known).
    assert (t.query, t.positive_doc_id, t.positive_text, t.source) == (
        "where is x", "c.py:1-5", "# c.py :: X.y\ntext of c", "click_feedback")
    assert t.negative_doc_ids == ["a.py:1-5", "b.py:1-5", "d.py:1-5"]
    assert t.negative_texts == ["# a.py\ntext of a", "# b.py\ntext of b", "# d.py\ntext of d"]


def test_without_fill_only_explicit_and_skip_above_negatives(store):
    add_event(store, "e1", "q", ["a", "b", "c", "d"])
    store.add_feedback("e1", "click", doc_id="b.py:1-5", ts=2.0)
    (t,) = mine_feedback(store, fill_negatives=False)
    assert t.negative_doc_ids == ["a.py:1-5"]


def test_two_positives_both_stay_positives_and_never_negatives(store):
    add_event(store, "e1", "q", ["a", "b", "c", "d"])
    store.add_feedback("e1", "thumbs_up", doc_id="b.py:1-5", ts=2.0)
    store.add_feedback("e1", "rating", doc_id="d.py:1-5", rating=5, ts=2.5)
    got = by_pos(mine_feedback(store, fill_negatives=False))
    assert set(got) == {"b.py:1-5", "d.py:1-5"}
    assert got["b.py:1-5"].negative_doc_ids == ["a.py:1-5"]
    assert got["d.py:1-5"].negative_doc_ids == ["a.py:1-5", "c.py:1-5"]


def test_low_rating_is_a_negative_and_latest_signal_wins(store):
    add_event(store, "e1", "q", ["a", "b", "c"])
    store.add_feedback("e1", "thumbs_up", doc_id="a.py:1-5", ts=2.0)
    store.add_feedback("e1", "rating", doc_id="a.py:1-5", rating=1, ts=3.0)  # changed their mind
    store.add_feedback("e1", "used", doc_id="c.py:1-5", ts=4.0)
    (t,) = mine_feedback(store, fill_negatives=False)
    assert t.positive_doc_id == "c.py:1-5"
    assert t.negative_doc_ids == ["a.py:1-5", "b.py:1-5"]


def test_thumbs_down_alone_gives_no_triplet(store):
    add_event(store, "e1", "q", ["a", "b"])
    store.add_feedback("e1", "thumbs_down", doc_id="a.py:1-5", ts=2.0)
    assert mine_feedback(store) == []


def test_late_feedback_is_picked_up_by_the_next_mining_run(store):
    add_event(store, "e1", "first", ["a", "b"])
    add_event(store, "e2", "second", ["a", "b"])
    store.add_feedback("e1", "used", doc_id="b.py:1-5", ts=2.0)
    assert [t.query for t in mine_feedback(store)] == ["first"]
    store.add_feedback("e2", "used", doc_id="a.py:1-5", ts=9.0)
    assert sorted(t.query for t in mine_feedback(store)) == ["first", "second"]


def test_correct_location_missing_from_results_uses_the_index_and_every_hit_is_skip_above(store):
    add_event(store, "e1", "q", ["a", "b", "c"])
    store.add_feedback("e1", "correct_location", doc_id="z.py:10-12", path="z.py", start_line=10, end_line=12, ts=2.0)

    def lookup(corpus, path, start, end):
        assert (corpus, path, start, end) == ("c", "z.py", 10, 12)
        return "z.py:8-20", "def z(): pass"

    (t,) = mine_feedback(store, chunk_lookup=lookup)
    assert (t.positive_doc_id, t.positive_text) == ("z.py:8-20", "def z(): pass")
    assert t.negative_doc_ids == ["a.py:1-5", "b.py:1-5", "c.py:1-5"]
    assert mine_feedback(store) == []  # no index to find the text: skipped, not invented


def test_correct_location_overlapping_a_result_marks_that_result(store):
    add_event(store, "e1", "q", ["a", "b"])
    store.add_feedback("e1", "correct_location", doc_id="b.py:2-4", path="b.py", start_line=2, end_line=4, ts=2.0)
    (t,) = mine_feedback(store, fill_negatives=False)
    assert t.positive_doc_id == "b.py:1-5" and t.negative_doc_ids == ["a.py:1-5"]


def _trip(q, corpus="c", pos="p.py:1-2"):
    return Triplet(q, "code", pos, [], [], "x", corpus)


def test_split_is_by_query_seeded_and_stable_as_data_grows():
    trips = [_trip(f"question {i}") for i in range(200)] + [_trip("question 7", pos="other.py:1-2")]
    s1 = split_by_query(trips, 0.25, seed=13)
    held = {t.query for t in s1.heldout}
    assert held and not held & {t.query for t in s1.train}
    assert 20 < len(held) < 80
    s2 = split_by_query(trips + [_trip(f"new {i}") for i in range(50)], 0.25, seed=13)
    assert held <= {t.query for t in s2.heldout}
    assert s1.info["heldout_queries"] == len(held) and s1.info["seed"] == 13
    assert {t.query for t in split_by_query(trips, 0.25, seed=14).heldout} != held


def test_heldout_questions_group_positives_by_query():
    rows = heldout_questions([_trip("Q one", pos="a.py:1-2"), _trip("q  ONE", pos="b.py:3-4"), _trip("two")])
    assert [(r["query"], r["gold"]) for r in rows] == [("Q one", ["a.py:1-2", "b.py:3-4"]), ("two", ["p.py:1-2"])]


def test_extract_doc_pair_python_docstring_removed_from_code():
    text = 'def add(a, b):\n    """Add two numbers and return the sum.\n\n    More.\n    """\n    return a + b\n    # end\n'
    q, code = extract_doc_pair(text, "python")
    assert q == "Add two numbers and return the sum."
    assert '"""' not in code and "def add(a, b):" in code and "return a + b" in code


def test_extract_doc_pair_leading_comments_and_refusals():
    js = "// Parse the header line into a map of fields.\nfunction parse(h) {\n  return h.split(':');\n}\n"
    assert extract_doc_pair(js, "javascript") == ("Parse the header line into a map of fields.",
                                                   "function parse(h) {\n  return h.split(':');\n}\n")
    assert extract_doc_pair('def f():\n    """Short."""\n    return 1\n    pass\n', "python") is None
    assert extract_doc_pair("def f():\n    return 1\n", "python") is None


def _chunk(path, start, text, lang="python"):
    return Chunk.make(path, start, start + text.count("\n"), lang, None, text)


def test_mine_bootstrap_dedups_caps_and_skips_the_positive_as_negative():
    doc = 'def f{i}(x):\n    """Compute the frobnication of x for item {i}."""\n    y = x\n    return y * {i}\n'
    chunks = [_chunk(f"m{i}.py", 1, doc.format(i=i)) for i in range(6)]
    chunks.append(_chunk("dup.py", 1, doc.format(i=0)))  # same docstring and code: deduplicated
    chunks.append(_chunk("plain.py", 1, "x = 1\ny = 2\n"))

    def rank(q, corpus):
        return [SimpleNamespace(chunk=c) for c in chunks]

    got = mine_bootstrap(chunks, rank, "c", cap=4, negatives_per_query=2, seed=1)
    assert len(got) == 4
    for t in got:
        assert t.source == "corpus_bootstrap" and t.corpus == "c"
        assert t.query.startswith("Compute the frobnication") and '"""' not in t.positive_text
        assert t.positive_text.startswith(f"# {t.positive_doc_id.split(':')[0]}\n")
        assert t.positive_doc_id not in t.negative_doc_ids and len(t.negative_doc_ids) == 2
    assert len({t.query for t in got}) == 4


def _sym_chunk(path, start, symbol, text):
    return Chunk.make(path, start, start + text.count("\n"), "python", symbol, text)


def _usage_corpus():
    return [
        _sym_chunk("pkg/geo.py", 1, "haversine",
                   "def haversine(a, b):\n    d = a - b\n    return d * 2\n"),
        _sym_chunk("pkg/geo.py", 10, "Route",
                   "class Route:\n    def __init__(self, stops):\n        self.stops = stops\n"),
        # "save" is defined twice: a call to it cannot be resolved, so it yields no pair
        _sym_chunk("pkg/a.py", 1, "A.save", "    def save(self):\n        return 1\n"),
        _sym_chunk("pkg/b.py", 1, "B.save", "    def save(self):\n        return 2\n"),
        _sym_chunk("app/main.py", 1, "plan",
                   "def plan(points):\n    # haversine(x) in a comment is not a call\n    route = Route(points)\n"
                   "    total = 0\n    for a, b in zip(points, points[1:]):\n        total += geo.haversine(a, b)\n"
                   "    obj.save()\n    return total\n"),
        # a call inside the definition's own chunk does not count
        _sym_chunk("pkg/geo.py", 20, "again", "def again(a):\n    x = haversine(a, a)\n    return x\n"),
    ]


def test_extract_usage_pairs_pair_a_call_site_with_the_unique_definition_it_calls():
    got = {d.symbol: q for q, d in extract_usage_pairs(_usage_corpus())}
    # haversine is called from app/main.py and from pkg/geo.py's own file: the other file's call site is chosen
    assert set(got) == {"haversine", "Route"}
    assert "total += geo.haversine(a, b)" in got["haversine"] and "x = haversine(a, a)" not in got["haversine"]
    assert got["Route"].startswith("def plan(points):")  # the window starts up to 3 lines above the call
    assert "route = Route(points)" in got["Route"] and not got["Route"].startswith(" ")


def test_mine_bootstrap_gives_usage_pairs_their_share_and_fills_the_cap():
    doc = 'def f{i}(x):\n    """Compute the frobnication of x for item {i}."""\n    y = x\n    return y * {i}\n'
    chunks = _usage_corpus() + [_sym_chunk(f"m{i}.py", 1, f"f{i}", doc.format(i=i)) for i in range(6)]

    def rank(q, corpus):  # like lexical retrieval: chunks holding the question's last line first
        return [SimpleNamespace(chunk=c) for c in sorted(chunks, key=lambda c: q.splitlines()[-1] not in c.text)]

    half = mine_bootstrap(chunks, rank, "c", cap=4, usage_share=0.5, negatives_per_query=2, seed=1)
    assert sorted(t.source for t in half) == ["corpus_bootstrap"] * 2 + ["corpus_usage"] * 2
    for t in half:
        if t.source == "corpus_usage":
            assert t.positive_doc_id in {"pkg/geo.py:1-4", "pkg/geo.py:10-13"}
            assert "app/main.py:1-9" in t.negative_doc_ids  # the call site, which holds the snippet verbatim
            assert t.positive_doc_id not in t.negative_doc_ids
    # 6 docstring pairs, 2 usage pairs: a share of 0.75 of 8 cannot be met, so docstring pairs fill the cap
    full = mine_bootstrap(chunks, rank, "c", cap=8, usage_share=0.75, negatives_per_query=2, seed=1)
    assert sorted(t.source for t in full) == ["corpus_bootstrap"] * 6 + ["corpus_usage"] * 2
    assert all(t.source == "corpus_bootstrap" for t in mine_bootstrap(chunks, rank, "c", cap=8, seed=1))


def test_mine_golden_matches_spans_and_path_suffixes():
    chunks = [_chunk("src/a/auth.py", 1, "x\n"), _chunk("src/b/other.py", 1, "y\n"), _chunk("tests/auth.py", 40, "z\n")]
    item = SimpleNamespace(q="how", repo="c", expect_paths=["a/auth.py"], expect_spans=[])

    got = mine_golden([item], lambda q, c: [SimpleNamespace(chunk=ch) for ch in chunks])
    assert [t.positive_doc_id for t in got] == ["src/a/auth.py:1-2"]
    assert got[0].negative_doc_ids == ["src/b/other.py:1-2", "tests/auth.py:40-41"]
    assert got[0].source == "golden"
