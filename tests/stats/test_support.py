"""Every interval stays inside what its quantity can be, and keeps its coverage there.

Proportions with replicates (the accuracy of a cell whose items are answered several times) get a
Wilson interval at the effective sample size; a Student-t interval over item means near 1 leaves
[0, 1] (what reports used to print, e.g. 0.977 [0.950, 1.004]). Means of variances get the
Satterthwaite chi-square interval, never negative, where the t-interval over a few items often is.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.stats.intervals import (
    ALPHA,
    LEVEL,
    mean_interval,
    nonnegative_mean_interval,
    proportion_interval,
    t_interval,
    wilson_interval,
    within_support,
)
from harness.stats.variance import chi2_variance_interval

N_SIMS = 1000
LO, HI = 0.93, 0.97


def test_one_level_for_every_report():
    assert math.isclose(LEVEL + ALPHA, 1.0) and LEVEL == 0.95


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (97, 100), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    iv = wilson_interval(k, n)
    assert iv.lo == pytest.approx(ci.low, abs=1e-12) and iv.hi == pytest.approx(ci.high, abs=1e-12)
    assert iv.support == (0.0, 1.0) and iv.inside_support()


def _clustered_binary(rng, mean, conc, k, reps):
    p = rng.beta(mean * conc, (1 - mean) * conc, size=(N_SIMS, k))
    y = (rng.random((N_SIMS, k, reps)) < p[..., None]).astype(float)
    return y.reshape(N_SIMS, k * reps), np.repeat(np.arange(k), reps)


@pytest.mark.parametrize("mean,k,reps", [(0.7, 30, 4), (0.95, 60, 4)])
def test_clustered_proportion_coverage_inside_unit_interval(mean, k, reps):
    rng = np.random.default_rng(201)
    y, items = _clustered_binary(rng, mean, 4.0, k, reps)
    ivs = [proportion_interval(row, items) for row in y]
    assert all(0.0 <= iv.lo <= iv.mean <= iv.hi <= 1.0 for iv in ivs)
    assert ivs[0].n == k and "effective n" in ivs[0].method
    cov = float(np.mean([iv.lo <= mean <= iv.hi for iv in ivs]))
    assert LO <= cov <= HI, cov
    if mean > 0.9:  # the t-interval over item means it replaces leaves [0, 1] here, and under-covers
        t = [t_interval(row.reshape(k, reps).mean(1)) for row in y]
        assert sum(iv.hi > 1 for iv in t) > 10
        assert float(np.mean([iv.lo <= mean <= iv.hi for iv in t])) < LO


def test_mean_interval_picks_by_support():
    assert mean_interval([1, 0, 0, 1]).method == "wilson"
    near_one = [1.0] * 40 + [0.0] + [1.0] * 3 + [0.0] * 2  # items repeated: 2 replicates each
    iv = mean_interval(near_one, clusters=[i // 2 for i in range(len(near_one))])
    assert iv.n == 23 and iv.hi <= 1.0 and iv.inside_support()
    assert mean_interval([0.5, 2.0, 3.0]).support == (0.0, math.inf)
    assert mean_interval([-0.5, 2.0, 3.0]).method == "t"
    assert mean_interval([1.0, 1.0, 1.0], clusters=["a", "a", "b"]).lo > 0.3  # all correct: not [1, 1]


def test_nonnegative_mean_interval_coverage_never_negative():
    """Per-item sample variances (R = 5 normal draws; 20 items): the chi-square interval covers about
    95% and is never negative; the t-interval over the same values dips below 0 at few items."""
    rng = np.random.default_rng(202)
    v = rng.normal(size=(N_SIMS, 20, 5)).var(2, ddof=1)
    ivs = [nonnegative_mean_interval(row) for row in v]
    assert all(iv.lo >= 0 and iv.support == (0.0, math.inf) for iv in ivs)
    cov = float(np.mean([iv.lo <= 1.0 <= iv.hi for iv in ivs]))
    assert LO <= cov <= HI, cov
    few = rng.normal(size=(200, 3, 2)).var(2, ddof=1)
    assert any(t_interval(row).lo < 0 for row in few)
    assert all(nonnegative_mean_interval(row).lo >= 0 for row in few)
    with pytest.raises(ValueError, match="negative"):
        nonnegative_mean_interval([1.0, -0.5])


def test_chi2_variance_interval_coverage():
    rng = np.random.default_rng(203)
    x = rng.normal(0, 2.0, size=(N_SIMS, 15))
    ivs = [chi2_variance_interval(row) for row in x]
    assert ivs[0].method == "chi-square(14)" and all(iv.lo > 0 for iv in ivs)
    cov = float(np.mean([iv.lo <= 4.0 <= iv.hi for iv in ivs]))
    assert LO <= cov <= HI, cov


def test_within_support_cuts_and_says_so():
    iv = within_support(t_interval([-0.2, 0.1, 0.4, 0.05]), 0.0, math.inf, "[0, ∞)")
    assert iv.lo == 0.0 and "[0, ∞)" in iv.method and iv.inside_support()
    below = within_support(t_interval([-0.3, -0.2, -0.25]), 0.0, 1.0)  # the estimate strayed below the range
    assert (below.mean, below.lo, below.hi) == (0.0, 0.0, 0.0) and below.inside_support()
