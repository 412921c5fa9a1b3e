import importlib
import inspect
import pkgutil

import pytest

from retrieval.errors import AgroError, AgroUserError

PACKAGES = ["retrieval", "reranker", "training", "agro_mcp"]


def _our_exception_classes() -> list[type]:
    found = []
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{name}."):
            if info.name.endswith("__main__"):
                continue
            mod = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(mod, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found.append(obj)
    return found


def test_every_exception_class_has_the_one_root():
    classes = _our_exception_classes()
    assert len(classes) >= 20
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, AgroError)]
    assert not strays, f"not under AgroError: {strays}"


@pytest.mark.parametrize(
    "path",
    ["agro_mcp.config.ConfigError", "agro_mcp.engine.UserError", "retrieval.index.NoIndexError",
     "retrieval.pgdb.DatabaseUnavailableError", "training.events.feedback.FeedbackError",
     "training.releases.jobs.JobBusyError", "training.releases.promote.PromotionError",
     "training.learning.trainer.TrainingError", "training.evaluation.datasets.EvalError",
     "training.releases.admin.AdminError", "training.evaluation.golden.GoldenError",
     "training.events.records.StoreVersionError"],
)
def test_errors_a_caller_can_fix_are_user_errors_and_keep_their_old_bases(path):
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, AgroUserError)
    assert issubclass(cls, (ValueError, RuntimeError))  # existing `except ValueError` callers still catch them


def test_internal_signals_are_not_user_errors():
    from reranker.model import ScoringCancelled

    assert issubclass(ScoringCancelled, AgroError) and not issubclass(ScoringCancelled, AgroUserError)
