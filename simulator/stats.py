"""Summaries over seeds: means with Student-t 95% intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {(self.high - self.low) / 2:.4f}"


def mean_ci(values: np.ndarray | list[float], level: float = 0.95) -> Interval:
    """Mean and two-sided t interval; a single value gives a zero-width interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("values must not be empty")
    m = float(v.mean())
    if v.size == 1:
        return Interval(m, m, m)
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return Interval(m, m - half, m + half)
