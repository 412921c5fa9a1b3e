import json
import multiprocessing
from pathlib import Path

import pytest

from training.evaluation.golden import GoldenError, GoldenItem, GoldenSpan, add_golden, load_golden

REPO_ROOT = Path(__file__).resolve().parents[3]


def _write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


GOOD = {"q": "where is rrf computed", "repo": "agro-mcp", "expect_paths": ["retrieval/fusion.py"]}


def test_unknown_key_names_row_and_key(tmp_path):
    bad = dict(GOOD, q="other")
    bad["expect_path"] = bad.pop("expect_paths")
    p = _write(tmp_path / "golden.json", [GOOD] * 12 + [bad])
    with pytest.raises(GoldenError) as exc:
        load_golden(p)
    assert str(exc.value).startswith("golden.json row 12: key 'expect_path' is not allowed")
    assert "(expected q, repo, expect_paths, expect_spans)" in str(exc.value)


def test_missing_key_and_bad_span_name_row_and_key(tmp_path):
    p = _write(tmp_path / "golden.json", [GOOD, {"repo": "x", "expect_paths": ["a.py"]}])
    with pytest.raises(GoldenError, match=r"row 1: key 'q' is required"):
        load_golden(p)
    span = {"path": "a.py", "start_line": 9, "end_line": 3}
    p = _write(tmp_path / "golden.json", [dict(GOOD, expect_spans=[span])])
    with pytest.raises(GoldenError, match=r"row 0: key 'expect_spans.0'.*end_line"):
        load_golden(p)
    p = _write(tmp_path / "golden.json", [dict(GOOD, expect_spans=[dict(span, end_line=10, symbol="f")])])
    with pytest.raises(GoldenError, match=r"row 0: key 'symbol' in expect_spans.0 is not allowed"):
        load_golden(p)


def test_row_without_any_gold_or_with_blank_question_is_rejected(tmp_path):
    p = _write(tmp_path / "golden.json", [dict(GOOD, expect_paths=[])])
    with pytest.raises(GoldenError, match=r"row 0: .*at least one path"):
        load_golden(p)
    p = _write(tmp_path / "golden.json", [dict(GOOD, q="  ")])
    with pytest.raises(GoldenError, match=r"row 0: key 'q'"):
        load_golden(p)


def test_spans_alone_are_enough_and_paths_are_normalised():
    item = GoldenItem(q="x", repo="r", expect_spans=[GoldenSpan(path="./a/b.py", start_line=1, end_line=2)])
    assert item.expect_spans[0].path == "a/b.py"
    with pytest.raises(ValueError):
        GoldenItem(q="x", repo="r", expect_paths=["../etc/passwd"])


def test_not_a_list_or_not_json_is_a_golden_error(tmp_path):
    with pytest.raises(GoldenError, match="JSON list"):
        load_golden(_write(tmp_path / "golden.json", {"q": "x"}))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(GoldenError, match="not valid JSON"):
        load_golden(tmp_path / "broken.json")


def test_add_golden_appends_and_round_trips(tmp_path):
    p = tmp_path / "golden.json"
    assert add_golden(p, GOOD) == 0
    span_item = GoldenItem(
        q="how is the reranker hot-reloaded", repo="agro-mcp", expect_paths=["reranker/model.py"],
        expect_spans=[GoldenSpan(path="reranker/model.py", start_line=3, end_line=9)],
    )
    assert add_golden(p, span_item) == 1
    items = load_golden(p)
    assert [i.q for i in items] == [GOOD["q"], span_item.q]
    assert items[1] == span_item
    assert "expect_spans" not in json.loads(p.read_text())[0]
    assert not list(tmp_path.glob(".golden.json.*.tmp"))


def test_add_golden_rejects_duplicate_and_leaves_a_broken_file_untouched(tmp_path):
    p = tmp_path / "golden.json"
    add_golden(p, GOOD)
    with pytest.raises(GoldenError, match="already has"):
        add_golden(p, dict(GOOD))
    p.write_text('[{"q": "x", "repo": "r", "expect_path": ["a"]}]')
    before = p.read_bytes()
    with pytest.raises(GoldenError, match="row 0"):
        add_golden(p, dict(GOOD, q="new"))
    assert p.read_bytes() == before


def _adder(path: str, start: int) -> None:
    for i in range(start, start + 10):
        add_golden(path, {"q": f"question {i}", "repo": "r", "expect_paths": ["a.py"]})


def test_concurrent_add_golden_loses_nothing(tmp_path):
    p = tmp_path / "golden.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_adder, args=(str(p), n * 100)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(load_golden(p)) == 40


def test_repo_golden_json_is_valid_and_every_expected_path_exists():
    items = load_golden(REPO_ROOT / "golden.json")
    assert len(items) >= 60
    assert all(it.repo == "agro-mcp" for it in items)
    assert len({it.q.casefold() for it in items}) == len(items)
    for i, it in enumerate(items):
        for path in it.expect_paths + [s.path for s in it.expect_spans]:
            assert (REPO_ROOT / path).is_file(), f"row {i}: {path} does not exist"
        for s in it.expect_spans:
            n_lines = len((REPO_ROOT / s.path).read_text(encoding="utf-8").splitlines())
            assert s.end_line <= n_lines, f"row {i}: {s.path}:{s.start_line}-{s.end_line} is past the end"
