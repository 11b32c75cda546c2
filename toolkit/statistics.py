"""How much an accuracy table can tell: binomial intervals, intervals over training seeds, paired tests.

An accuracy from n images has a standard error of about sqrt(p(1-p)/n): 4-7 points at the 48-128 held-out
images the purifier tables used (issue 28), enough to reverse the order of two defences. Every purifier
table therefore prints an interval beside each accuracy, and two defences evaluated on the same images are
compared with a paired test on the images where they disagree, not by their two means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at `level` (fractions, not percent)."""

    mean: float
    low: float
    high: float
    level: float = 0.95

    def percent(self) -> str:
        """`62.5 [53.9, 70.4]`: the form every table prints."""
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "level": self.level}


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def wilson(correct: np.ndarray | list[bool], level: float = 0.95) -> Interval:
    """Accuracy of one evaluation with its Wilson score interval (Wilson 1927), which stays inside [0, 1] and
    keeps its coverage at 0 or n successes where the normal approximation collapses to a point."""
    c = np.asarray(correct, dtype=bool)
    n = c.size
    if n == 0:
        raise ValueError("an accuracy needs at least one image")
    p, z = float(c.mean()), _z(level)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), level)


def over_seeds(values: list[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Mean of one figure over independent training seeds with Student's t interval (n - 1 degrees of
    freedom). One seed has no spread to estimate: its interval is the point itself, which the caller
    prints as "1 seed" rather than as certainty."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no seeds to summarise")
    m = float(v.mean())
    if v.size == 1:
        return Interval(m, m, m, level)
    half = float(t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return Interval(m, m - half, m + half, level)


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test of two defences on the same images: `only_a` images right under A alone,
    `only_b` right under B alone; `p_value` is two-sided (binomial on the discordant pairs, p = 1/2)."""

    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict:
        return {"only_a": self.only_a, "only_b": self.only_b, "p_value": self.p_value}


def mcnemar(correct_a: np.ndarray | list[bool], correct_b: np.ndarray | list[bool]) -> Paired:
    """Paired exact test: do A and B differ on these images beyond chance? Images both get right (or both
    wrong) carry no information about the difference, so only the discordant ones count."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results differ in length: {a.size} and {b.size} images")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return Paired(0, 0, 1.0)
    return Paired(only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue))
