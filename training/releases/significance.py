"""Paired statistics for the promotion gate: is a candidate's per-question gain real on a small sample?

Pure functions over per-question values, each with a seed so the same inputs always give the same answer:

* :func:`bootstrap_mean_ci`: a percentile bootstrap interval of the mean of paired differences;
* :func:`sign_flip_p`: the two-sided sign-flip (paired permutation) p-value of "mean difference = 0" (exact for up to
  16 questions, seeded Monte Carlo above);
* :func:`min_questions`: the fewest questions on which a sign-flip test can reach a level at all (6 at 5%): below it,
  no interval can rule out chance, whatever the gain;
* :func:`paired_gain`: all of it for one candidate against one alternative.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["PairedGain", "bootstrap_mean_ci", "min_questions", "paired_gain", "sign_flip_p"]


def bootstrap_mean_ci(values: Sequence[float], *, resamples: int = 4000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded).

    Raises:
        ValueError: on no values, or ``level`` outside (0, 1).
    """
    if len(values) == 0:
        raise ValueError("bootstrap_mean_ci expects at least one value, but got none")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_mean_ci expects 0 < level < 1, but got {level}")
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def sign_flip_p(values: Sequence[float], *, resamples: int = 20000, seed: int = 0, exact_up_to: int = 16) -> float:
    """Two-sided p-value of a zero mean for paired differences, by flipping their signs.

    Under "no difference" each question's difference is as likely negative as positive; the p-value is the share
    of sign assignments whose mean is at least as far from zero as the observed one. Zero differences carry no
    sign and are kept (they dilute the mean, as they should).
    """
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    if n == 0:
        return 1.0
    observed = abs(arr.mean())
    tol = 1e-12
    if n <= exact_up_to:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        means = np.abs(signs @ arr) / n
        return float(np.mean(means >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(resamples, n))
    means = np.abs(signs @ arr) / n
    return float((np.sum(means >= observed - tol) + 1) / (resamples + 1))


def min_questions(level: float = 0.95) -> int:
    """Fewest questions on which a two-sided sign-flip test can reject "no difference" at ``1 - level``: every
    difference of one sign gives p = 2 / 2**n, so n must satisfy 2 / 2**n <= 1 - level (6 at 95%)."""
    return max(1, math.ceil(math.log2(2 / (1 - level))))


@dataclass(frozen=True, slots=True)
class PairedGain:
    """Candidate minus an alternative, question by question."""

    n: int
    mean: float
    ci: tuple[float, float]
    p_value: float
    wins: int
    losses: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = [round(x, 5) for x in self.ci]
        d["mean"] = round(self.mean, 5)
        d["p_value"] = round(self.p_value, 5)
        return d


def paired_gain(candidate: Sequence[float], other: Sequence[float], *, seed: int = 0,
                level: float = 0.95) -> PairedGain:
    """The paired gain of ``candidate`` over ``other`` (same questions, same order).

    Raises:
        ValueError: when the two differ in length or are empty.
    """
    if len(candidate) != len(other) or not candidate:
        raise ValueError(f"paired_gain expects two equally long non-empty sequences, but got {len(candidate)} "
                         f"and {len(other)} values")
    diffs = [float(a) - float(b) for a, b in zip(candidate, other)]
    return PairedGain(len(diffs), sum(diffs) / len(diffs), bootstrap_mean_ci(diffs, seed=seed, level=level),
                      sign_flip_p(diffs, seed=seed), sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))
