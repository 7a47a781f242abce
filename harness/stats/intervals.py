"""Closed-form 95% intervals for means, clustered by item when items repeat (DESIGN.md, "Statistics").

With replicates, units of the same item are not independent: the item is the sampling unit, so the
interval is computed over per-item means (the cluster-mean approach), and n reports the items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int  # independent units (items when clustered)
    method: str

    def fmt(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def t_interval(values, level: float = 0.95) -> Interval:
    """Student-t interval for a mean of independent values."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "t")
    m = float(x.mean())
    if n == 1:
        return Interval(m, math.nan, math.nan, 1, "t")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return Interval(m, m - half, m + half, n, "t")


def wilson_interval(successes: float, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (good coverage near 0 and 1)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson")
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, centre - half, centre + half, n, "wilson")


def mean_interval(values, clusters=None, level: float = 0.95) -> Interval:
    """Mean with a 95% interval: Wilson for 0/1 data without repeats, else t over cluster means."""
    x = np.asarray(values, dtype=float)
    if clusters is not None and len(set(clusters)) < len(x):
        keys = np.asarray(clusters)
        means = [x[keys == k].mean() for k in dict.fromkeys(clusters)]
        iv = t_interval(means, level)  # the mean of item means (= the plain mean when balanced)
        return Interval(iv.mean, iv.lo, iv.hi, iv.n, "t over item means")
    if len(x) and np.isin(x, (0.0, 1.0)).all():
        return wilson_interval(float(x.sum()), len(x), level)
    return t_interval(x, level)
