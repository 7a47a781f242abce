"""Bootstrap intervals for any statistic, resampling rows or whole items (cluster bootstrap).

Methods (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993):

- ``"percentile"``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the bootstrap
  distribution of the statistic (ch. 13).
- ``"bca"``: bias-corrected and accelerated percentile interval (Efron 1987; ch. 14): the quantile
  levels are shifted by the bias correction ``z0 = Phi^-1(share of bootstrap values below the
  estimate)`` (ties count half, as in ``scipy.stats.bootstrap``) and the acceleration ``a``
  estimated by the jackknife, ``a = sum(d^3) / (6 * sum(d^2)^1.5)`` with ``d = mean(jack) - jack``.

With ``clusters`` (one label per row, e.g. the item id when an item is answered several times) the
*clusters* are resampled with replacement and the statistic is computed on the pooled rows of the
chosen clusters (cluster bootstrap; Davison & Hinkley, *Bootstrap Methods and their Application*,
1997, sec. 3.8; Field & Welsh 2007); the jackknife for BCa then leaves out one cluster at a time.
The interval's ``n`` is the number of clusters, the independent units.

Every function takes a ``seed`` and draws from ``np.random.default_rng(seed)`` only; the global
NumPy random state is never used. The batch form resamples several datasets of the same shape with
the *same* resample indices (as ``scipy.stats.bootstrap`` does for batched data), so row ``i`` of
``bootstrap_interval_batch(data, seed=s)`` equals ``bootstrap_interval(data[i], seed=s)``.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, NamedTuple

import numpy as np
from scipy.special import ndtr, ndtri

from harness.stats.intervals import Interval

METHODS = ("percentile", "bca")
_BUDGET = 2_000_000  # elements per gathered block: bounds memory whatever the data size


class BatchIntervals(NamedTuple):
    """Vectorised result of :func:`bootstrap_interval_batch`: one entry per dataset."""

    estimate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int  # independent units per dataset (clusters when clustered, else rows)
    method: str


def _along_last_axis(statistic: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """``statistic`` applied along the last axis (vectorised when it accepts ``axis``)."""
    try:
        vectorised = "axis" in inspect.signature(statistic).parameters
    except (TypeError, ValueError):  # builtins without a signature
        vectorised = False
    if vectorised:
        return lambda x: np.asarray(statistic(x, axis=-1), dtype=float)
    return lambda x: np.apply_along_axis(lambda v: float(statistic(v)), -1, x).astype(float)


def _factorize(clusters, n: int) -> tuple[np.ndarray, int]:
    """Integer codes 0..K-1 for any hashable labels (first-seen order)."""
    if clusters is None:
        return np.arange(n), n
    labels = list(clusters)
    if len(labels) != n:
        raise ValueError(f"clusters has {len(labels)} labels for {n} values")
    index: dict = {}
    codes = np.fromiter((index.setdefault(k, len(index)) for k in labels), dtype=np.intp, count=n)
    return codes, len(index)


def _row_quantiles(sorted_rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row quantile ``q[i]`` of ``sorted_rows[i]`` with linear interpolation (numpy's default)."""
    r = sorted_rows.shape[1]
    pos = np.clip(q, 0.0, 1.0) * (r - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, r - 1)
    frac = pos - lo
    rows = np.arange(sorted_rows.shape[0])
    a, b = sorted_rows[rows, lo], sorted_rows[rows, hi]
    return a + frac * (b - a)


def percentile_limits(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval from bootstrap values ``boot[..., n_resamples]``."""
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    return lo, hi


def bca_limits(theta: np.ndarray, boot: np.ndarray, jack: np.ndarray, level: float):
    """BCa interval (Efron 1987) from estimates ``theta[b]``, ``boot[b, R]`` and jackknife ``jack[b, K]``.

    The share of bootstrap values below the estimate is clipped to ``[1/(2R), 1 - 1/(2R)]`` so the
    bias correction stays finite when the estimate lies outside the bootstrap distribution.
    """
    r = boot.shape[1]
    below = ((boot < theta[:, None]).sum(1) + (boot <= theta[:, None]).sum(1)) / (2 * r)
    z0 = ndtri(np.clip(below, 0.5 / r, 1 - 0.5 / r))
    d = jack.mean(1, keepdims=True) - jack
    num = (d**3).sum(1)
    den = 6.0 * (d**2).sum(1) ** 1.5
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    s = np.sort(boot, axis=1)
    out = []
    for tail in ((1 - level) / 2, (1 + level) / 2):
        za = ndtri(tail)
        q = ndtr(z0 + (z0 + za) / (1 - a * (z0 + za)))
        out.append(_row_quantiles(s, q))
    return out[0], out[1]


def bootstrap_distribution(data, statistic: Callable = np.mean, *, n_resamples: int, seed, clusters=None,
                           jackknife: bool = False):
    """Estimates, bootstrap values and (optionally) jackknife values for each row of ``data[B, n]``.

    Returns ``(theta[B], boot[B, n_resamples], jack[B, K] or None, K)``. Rows (or, with
    ``clusters``, whole clusters) are drawn with replacement; the same draws serve every dataset.
    ``np.mean`` takes a fast exact path (cluster sums and sizes); any other statistic is applied
    to the pooled rows of each resample (vectorised if it accepts ``axis``).
    """
    x = np.asarray(data, dtype=float)
    if x.ndim != 2:
        raise ValueError("data must be 2-D: [datasets, values]")
    b, n = x.shape
    codes, k = _factorize(clusters, n)
    rng = np.random.default_rng(seed)
    stat = _along_last_axis(statistic)
    theta = stat(x)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    boot = np.empty((b, n_resamples))
    jack = None
    rc = max(1, min(n_resamples, _BUDGET // max(k, 1)))

    if statistic is np.mean:
        sums = np.add.reduceat(x[:, order], starts, axis=1) if k < n else x[:, order]
        for r0 in range(0, n_resamples, rc):
            r1 = min(n_resamples, r0 + rc)
            idx = rng.integers(0, k, size=(r1 - r0, k))
            counts = np.bincount((idx + k * np.arange(r1 - r0)[:, None]).ravel(),
                                 minlength=(r1 - r0) * k).reshape(r1 - r0, k).astype(float)
            boot[:, r0:r1] = (sums @ counts.T) / (counts @ sizes)
        if jackknife:
            total = sums.sum(1, keepdims=True)
            jack = (total - sums) / (n - sizes) if k > 1 else np.full((b, 1), math.nan)
        return theta, boot, jack, k

    balanced = k > 0 and np.all(sizes == sizes[0])
    members = order.reshape(k, sizes[0]) if balanced else None
    for r0 in range(0, n_resamples, rc):
        r1 = min(n_resamples, r0 + rc)
        idx = rng.integers(0, k, size=(r1 - r0, k))
        if balanced:
            rows = members[idx].reshape(r1 - r0, n)  # [r, n] row indices of the pooled clusters
            bc = max(1, _BUDGET // max(n * (r1 - r0), 1))
            for d0 in range(0, b, bc):
                boot[d0:d0 + bc, r0:r1] = stat(x[d0:d0 + bc][:, rows])
        else:
            for j, pick in enumerate(idx):
                rows = np.concatenate([order[starts[c]:starts[c] + sizes[c]] for c in pick])
                boot[:, r0 + j] = stat(x[:, rows])
    if jackknife:
        jack = np.empty((b, k))
        for c in range(k):
            jack[:, c] = stat(x[:, codes != c])
    return theta, boot, jack, k


def bootstrap_interval_batch(data, statistic: Callable = np.mean, *, n_resamples: int = 2000,
                             level: float = 0.95, seed, method: str = "percentile",
                             clusters=None) -> BatchIntervals:
    """:func:`bootstrap_interval` for each row of ``data[B, n]`` (same clusters for every row).

    Used by simulation studies (coverage checks); row ``i`` equals the single-dataset call on
    ``data[i]`` with the same seed.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = np.asarray(data, dtype=float)
    name = ("cluster " if clusters is not None else "") + ("BCa" if method == "bca" else "percentile") + " bootstrap"
    theta, boot, jack, k = bootstrap_distribution(x, statistic, n_resamples=n_resamples, seed=seed,
                                                  clusters=clusters, jackknife=method == "bca")
    if k < 2:
        nan = np.full(x.shape[0], math.nan)
        return BatchIntervals(theta, nan, nan.copy(), k, name)
    if method == "bca":
        lo, hi = bca_limits(theta, boot, jack, level)
    else:
        lo, hi = percentile_limits(boot, level)
    return BatchIntervals(theta, lo, hi, k, name)


def bootstrap_interval(values, statistic: Callable = np.mean, *, n_resamples: int = 2000, level: float = 0.95,
                       seed, method: str = "percentile", clusters=None) -> Interval:
    """Bootstrap interval for ``statistic(values)`` (percentile or BCa; Efron & Tibshirani 1993).

    ``clusters``: one label per value; when given, whole clusters (items) are resampled rather than
    rows (cluster bootstrap), the statistic is computed on the pooled rows, and ``n`` counts
    clusters. ``statistic`` may accept ``axis`` (vectorised) or take a 1-D array. Pure: draws only
    from ``np.random.default_rng(seed)``. Fewer than two units give a NaN interval.
    """
    x = np.asarray(values, dtype=float).ravel()
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, method)
    res = bootstrap_interval_batch(x[None, :], statistic, n_resamples=n_resamples, level=level, seed=seed,
                                   method=method, clusters=clusters)
    return Interval(float(res.estimate[0]), float(res.lo[0]), float(res.hi[0]), res.n, res.method)
