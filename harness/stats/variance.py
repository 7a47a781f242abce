"""Variance comparisons between estimators: an interval on the ratio var(x) / var(y).

- ``method="f"`` (normal data, independent samples): with ``r = s_x^2 / s_y^2``,
  ``r / (sigma_x^2 / sigma_y^2) ~ F(n_x - 1, n_y - 1)``, so the interval is
  ``[r / F_{(1+level)/2}, r / F_{(1-level)/2}]`` (the classical F interval; e.g. Casella & Berger,
  *Statistical Inference*, 2002, ex. 9.23). Exact under normality, sensitive to heavy tails.
- ``method="bootstrap"``: BCa bootstrap of the ratio via ``scipy.stats.bootstrap``, resampling each
  sample independently, or the pairs jointly with ``paired=True`` (estimators evaluated on the same
  draws, whose variances are then correlated). No normality assumption; with few values
  (say n < 50) it tends to under-cover.
- :func:`chi2_variance_interval`: one sample variance with the classical chi-square interval.

An efficiency ratio ``(var_x · cost_x) / (var_y · cost_y)`` with known costs is this interval scaled
by ``cost_x / cost_y``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from harness.stats.intervals import Interval


def _ratio(x, y, axis=-1):
    return np.var(x, axis=axis, ddof=1) / np.var(y, axis=axis, ddof=1)


def variance_ratio_interval(x, y, *, level: float = 0.95, method: str = "f", seed=None, paired: bool = False,
                            n_resamples: int = 2000) -> Interval:
    """Ratio of sample variances ``var(x) / var(y)`` (ddof=1) with an interval at ``level``.

    ``method="f"``: F-distribution interval (normal, independent samples; ``paired`` not allowed).
    ``method="bootstrap"``: BCa bootstrap (``scipy.stats.bootstrap``) drawing only from
    ``np.random.default_rng(seed)``; ``seed`` is required. ``Interval.mean`` holds the ratio and
    ``n`` the number of independent units (``n_x + n_y``, or the pairs when ``paired``).
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    nx, ny = len(xa), len(ya)
    if paired and nx != ny:
        raise ValueError(f"paired samples differ in length: {nx} vs {ny}")
    n_units = nx if paired else nx + ny
    if nx < 2 or ny < 2:
        return Interval(math.nan, math.nan, math.nan, n_units, method, (0.0, math.inf))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = float(_ratio(xa, ya))
    if method == "f":
        if paired:
            raise ValueError("the F interval assumes independent samples; use method='bootstrap' with paired=True")
        lo = r / stats.f.ppf((1 + level) / 2, nx - 1, ny - 1)
        hi = r / stats.f.ppf((1 - level) / 2, nx - 1, ny - 1)
        return Interval(r, float(lo), float(hi), n_units, f"F({nx - 1}, {ny - 1})", (0.0, math.inf))
    if method == "bootstrap":
        if seed is None:
            raise ValueError("method='bootstrap' needs a seed (reproducible resampling)")
        res = stats.bootstrap((xa, ya), _ratio, n_resamples=n_resamples, paired=paired, vectorized=True,
                              axis=-1, confidence_level=level, method="BCa",
                              rng=np.random.default_rng(seed))
        ci = res.confidence_interval
        return Interval(r, float(ci.low), float(ci.high), n_units,
                        "BCa bootstrap" + (" (paired)" if paired else ""), (0.0, math.inf))
    raise ValueError(f"method must be 'f' or 'bootstrap', got {method!r}")


def chi2_variance_interval(values, level: float = 0.95) -> Interval:
    """Sample variance (ddof=1) of independent normal values with the classical chi-square interval
    ``[(n-1) s^2 / chi2_{(1+level)/2, n-1}, (n-1) s^2 / chi2_{(1-level)/2, n-1}]`` (never negative;
    exact under normality, too narrow for heavy tails, where a bootstrap is the safer choice)."""
    x = np.asarray(values, dtype=float).ravel()
    n = len(x)
    if n < 2:
        return Interval(math.nan, math.nan, math.nan, n, "chi-square", (0.0, math.inf))
    s2 = float(x.var(ddof=1))
    lo = (n - 1) * s2 / stats.chi2.ppf((1 + level) / 2, n - 1)
    hi = (n - 1) * s2 / stats.chi2.ppf((1 - level) / 2, n - 1)
    return Interval(s2, float(lo), float(hi), n, f"chi-square({n - 1})", (0.0, math.inf))
