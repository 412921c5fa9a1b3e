"""Which datasets a tool call may name: the corpus's own golden.json or one in ``AGRO_HOME/datasets/``.

A dataset never names a path elsewhere on disk, and a golden file is evaluated against the corpora as they are
indexed: its folder is never indexed in place of a corpus's root (issue 20, finding 5). The CLI takes any path the
user names (``agro evaluate <path>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.errors import AgroUserError
from retrieval.redact import clip
from training.workspace import Workspace

__all__ = ["DATASETS_DIR", "DatasetError", "dataset_generations", "resolve_dataset"]


class DatasetError(AgroUserError, ValueError):
    """A dataset a tool call may not use; the message says which it may."""


DATASETS_DIR = "datasets"


def _refusal(home: Path, dataset: str) -> DatasetError:
    return DatasetError(
        f"dataset expects 'golden' (the corpus's own golden.json; 'golden:<corpus>' for another corpus), 'heldout', "
        f"or the name of a file or folder in {home / DATASETS_DIR}, but got {clip(dataset)}. Paths elsewhere are not "
        "read from a tool call: copy the file there, or run it from a terminal: agro evaluate <path>"
    )


def _only_corpus(ws: Workspace, corpus: str | None) -> str:
    known = ws.corpora()
    if corpus:
        if corpus not in known:
            raise DatasetError(f"Unknown corpus {clip(corpus)}. Known corpora: {', '.join(known) or 'none yet'}")
        return corpus
    if len(known) != 1:
        raise DatasetError(f"dataset 'golden' needs the corpus when several (or none) are indexed: 'golden:<corpus>' "
                         f"with one of {', '.join(known) or 'none yet'}")
    return known[0]


def resolve_dataset(ws: Workspace, dataset: str) -> Path:
    """The file or folder a tool call's ``dataset`` names: the corpus's own golden.json or one in AGRO_HOME/datasets.

    Raises:
        DatasetError: any other path, an unknown name, or a corpus without a golden.json.
    """
    home = Path(ws.home)
    if dataset == "golden" or dataset.startswith("golden:"):
        corpus = _only_corpus(ws, dataset.partition(":")[2] or None)
        root = Path(ws.generation(corpus).root)
        path = root / "golden.json"
        if not path.is_file():
            raise DatasetError(f"corpus {corpus!r} has no golden.json at its root ({root}); add questions with "
                             f"`agro golden add`, or put a dataset in {home / DATASETS_DIR}")
        return path
    folder = (home / DATASETS_DIR).resolve()
    if not dataset or dataset.startswith(".") or any(sep in dataset for sep in ("/", "\\", "\x00")):
        raise _refusal(home, dataset)
    path = folder / dataset
    try:
        exists = path.exists() and path.resolve().is_relative_to(folder)
    except (OSError, ValueError):
        exists = False
    if not exists:
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise DatasetError(f"no dataset {clip(dataset)} in {folder} (there: {', '.join(names[:20]) or 'none'}); "
                         "'golden' uses the corpus's own golden.json")
    return path


def dataset_generations(ws: Workspace, path: Path) -> dict[str, Any] | None:
    """For a golden file: the current generation of every corpus it asks about (none is ever indexed or re-rooted
    from the dataset's folder); DatasetError when it names a corpus that is not indexed."""
    from training.evaluation.golden import GoldenError, load_golden

    golden = path / "golden.json" if path.is_dir() and not (path / "queries.jsonl").exists() else path
    if not golden.is_file():
        return None  # a bench collection in AGRO_HOME/datasets: its corpora are built from there
    try:
        repos = sorted({it.repo for it in load_golden(golden)})
    except (GoldenError, OSError) as exc:
        raise DatasetError(str(exc)) from None
    known = set(ws.corpora())
    missing = [r for r in repos if r not in known]
    if missing:
        raise DatasetError(f"the dataset asks about corpora that are not indexed: {', '.join(missing)}. Index them "
                         "first: agro index /path/to/repo --corpus <id>")
    return {r: ws.generation(r) for r in repos}
