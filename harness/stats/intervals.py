"""Closed-form intervals for means that stay inside what the quantity can be.

One confidence level serves every report (``LEVEL``; ``ALPHA = 1 - LEVEL`` is the level of every test
a report states), and each interval carries the support of its quantity so that a reader (and the
report test) can check it:

- proportions (0/1 outcomes): the Wilson score interval (Wilson 1927), inside [0, 1] by
  construction. When items repeat (replicates), units of one item are not independent: the item is
  the sampling unit, and the interval is Wilson's at the *effective* sample size
  ``n_eff = p (1 - p) / SE^2`` with ``SE`` the standard error of the mean of item means (Kish's
  design effect; Korn & Graubard 1998 use the same effective n with Clopper-Pearson for clustered
  survey proportions). Without repeats ``n_eff = n`` and this is the plain Wilson interval.
- unbounded means: Student-t over item means (the cluster-mean approach), support the real line.
- means of non-negative quantities (variances, squared errors, traces): a scaled chi-square interval
  with Satterthwaite's effective degrees of freedom ``nu = 2 m^2 / SE^2`` (Satterthwaite 1946; for a
  single sample variance it is the classical chi-square interval), which is never negative.
- a t-interval for a quantity whose *true* value has a known range while its unbiased estimate may
  leave it (an ANOVA variance component, a cosine) is intersected with that range
  (:func:`within_support`); intersecting a confidence set with the parameter space keeps its coverage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # the confidence level of every reported interval
ALPHA = 1 - LEVEL  # the level of every reported test, so that "significant" and "interval excludes 0" agree
REAL_LINE = (-math.inf, math.inf)


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int  # independent units (items when clustered)
    method: str
    support: tuple[float, float] = REAL_LINE  # what the quantity can be: the interval never leaves it

    def fmt(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if math.isnan(self.lo) or math.isnan(self.hi):
            return f"{self.mean:.{digits}f} (n = {self.n}: no interval)"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def inside_support(self) -> bool:
        """Both limits within the support (a NaN limit counts as inside: no interval is claimed)."""
        lo_s, hi_s = self.support
        return all(math.isnan(x) or lo_s - 1e-12 <= x <= hi_s + 1e-12 for x in (self.lo, self.hi))


def t_interval(values, level: float = LEVEL) -> Interval:
    """Student-t interval for a mean of independent values (support: the real line)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "t")
    m = float(x.mean())
    if n == 1:
        return Interval(m, math.nan, math.nan, 1, "t")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return Interval(m, m - half, m + half, n, "t")


def within_support(iv: Interval, lo: float, hi: float, what: str = "") -> Interval:
    """``iv`` intersected with ``[lo, hi]``, the range of the true value (coverage is kept: the true
    value lies in the range, so it lies in the intersection whenever it lies in ``iv``). The estimate is
    truncated to the range too (an unbiased estimate of a variance component can fall below 0), and an
    interval wholly outside the range becomes the nearest end of it."""
    clip = lambda x: min(hi, max(lo, x)) if not math.isnan(x) else x  # noqa: E731
    if math.isnan(iv.lo):
        return Interval(clip(iv.mean), iv.lo, iv.hi, iv.n, iv.method, (lo, hi))
    # an interval wholly outside the range (the estimate strayed beyond it) shrinks to the nearest end
    return Interval(clip(iv.mean), clip(iv.lo), clip(iv.hi), iv.n, f"{iv.method} ∩ {what or f'[{lo:g}, {hi:g}]'}",
                    (lo, hi))


def wilson_interval(successes: float, n: float, level: float = LEVEL, *, units: int | None = None) -> Interval:
    """Wilson score interval for a proportion ``successes / n``, inside [0, 1].

    ``n`` may be an effective (non-integer) sample size; ``units`` is the reported n (default ``n``).
    """
    reported = int(round(n)) if units is None else units
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson", (0.0, 1.0))
    z = stats.norm.ppf(0.5 + level / 2)
    p = min(1.0, max(0.0, successes / n))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), reported, "wilson", (0.0, 1.0))


def _item_means(x: np.ndarray, clusters) -> np.ndarray:
    keys = np.asarray(clusters)
    return np.array([x[keys == k].mean() for k in dict.fromkeys(clusters)])


def proportion_interval(values, clusters=None, level: float = LEVEL) -> Interval:
    """Mean of outcomes in [0, 1] (0/1 per unit) with a Wilson interval; with repeated items (or
    fractional values), at the effective sample size.

    The estimate is the mean of item means (the plain mean when every item has the same number of
    replicates); ``n`` reports the items. ``n_eff = p (1 - p) / SE^2`` with ``SE^2 = var(item means) / k``,
    capped at the number of units; when every item mean is the same (``SE = 0``), ``n_eff = k``.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson", (0.0, 1.0))
    repeats = clusters is not None and len(set(clusters)) < len(x)
    if not repeats and np.isin(x, (0.0, 1.0)).all():
        return wilson_interval(float(x.sum()), len(x), level)
    means = _item_means(x, clusters) if repeats else x
    k = len(means)
    p = float(means.mean())
    se2 = float(means.var(ddof=1)) / k if k > 1 else 0.0
    n_eff = k if se2 <= 0 or p in (0.0, 1.0) else min(len(x), p * (1 - p) / se2)
    iv = wilson_interval(p * n_eff, n_eff, level, units=k)
    return Interval(p, iv.lo, iv.hi, k, f"wilson (effective n {n_eff:.0f} of {len(x)} units, clustered by item)",
                    (0.0, 1.0))


def mean_interval(values, clusters=None, level: float = LEVEL) -> Interval:
    """Mean with an interval that stays in the values' range: Wilson for 0/1 outcomes (effective n when
    items repeat), the chi-square interval when every value is non-negative (a count, a variance, a
    cost), else Student-t; each over item means when items repeat (n = items)."""
    x = np.asarray(values, dtype=float)
    if len(x) and np.isin(x, (0.0, 1.0)).all():
        return proportion_interval(x, clusters, level)
    repeats = clusters is not None and len(set(clusters)) < len(x)
    units = _item_means(x, clusters) if repeats else x
    if len(x) and (x >= 0).all():
        iv = nonnegative_mean_interval(units, level)
    else:
        iv = t_interval(units, level)  # the mean of item means (= the plain mean when balanced)
    return Interval(iv.mean, iv.lo, iv.hi, iv.n, iv.method + (" over item means" if repeats else ""), iv.support)


def nonnegative_mean_interval(values, level: float = LEVEL) -> Interval:
    """Mean of non-negative values (per-item variances, squared errors, traces) with a scaled chi-square
    interval, never below 0.

    With ``m`` the mean and ``SE^2 = var / k`` over the ``k`` values, ``m`` is approximated as
    ``m · chi2_nu / nu`` with ``nu = 2 m^2 / SE^2`` (Satterthwaite 1946), giving
    ``[nu m / chi2_{(1+level)/2, nu}, nu m / chi2_{(1-level)/2, nu}]``. Negative inputs (beyond
    rounding, which is set to 0) are an error.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    k = len(x)
    if k == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "chi-square", (0.0, math.inf))
    scale = float(np.abs(x).max()) if k else 0.0
    x = np.where((x < 0) & (x >= -1e-9 * scale), 0.0, x)  # rounding of a difference of sums, not a sign
    if (x < 0).any():
        raise ValueError(f"nonnegative_mean_interval: {int((x < 0).sum())} negative value(s), e.g. {x[x < 0][0]!r}")
    m = float(x.mean())
    if k == 1:
        return Interval(m, math.nan, math.nan, 1, "chi-square", (0.0, math.inf))
    se2 = float(x.var(ddof=1)) / k
    if se2 == 0 or m == 0 or not math.isfinite(se2):
        lo = hi = m if se2 == 0 else math.nan
        return Interval(m, lo, hi, k, "chi-square (no spread)", (0.0, math.inf))
    nu = 2 * m * m / se2
    lo = nu * m / stats.chi2.ppf((1 + level) / 2, nu)
    hi = nu * m / stats.chi2.ppf((1 - level) / 2, nu)
    return Interval(m, float(lo), float(hi), k, f"chi-square (Satterthwaite df {nu:.1f})", (0.0, math.inf))
