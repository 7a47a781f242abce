"""Coverage of every interval method on 1,000 simulated datasets with a known mean (issue 7).

Each 95% interval must cover the true value 93-97% of the time (binomial SE of a 1,000-run rate
near 0.95 is about 0.007). Bootstrap intervals are asymptotic: the percentile interval is about a
z-interval with the n-divisor sd, so at n = 20-30 it under-covers (measured 92-93%); the simulations
use n = 100 rows / 100 clusters, where the expected coverage is about 94.4% (measured 93.7-94.4%
with these seeds; the 93% bound is then about 2 standard errors away).
"""
from __future__ import annotations

import numpy as np
import pytest

from harness.stats.bootstrap import bootstrap_interval_batch
from harness.stats.intervals import mean_interval, t_interval, wilson_interval
from harness.stats.variance import variance_ratio_interval

N_SIMS = 1000
LO, HI = 0.93, 0.97


def covered(lo, hi, truth) -> float:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return float(((lo <= truth) & (truth <= hi)).mean())


def bootstrap_coverage(data, truth, *, method, clusters=None, seed=0, chunk=100) -> float:
    """Coverage of bootstrap_interval_batch; each chunk of datasets gets its own resampling seed
    (the batch shares resample indices across its rows, which would correlate their outcomes)."""
    hits = []
    for c in range(0, len(data), chunk):
        r = bootstrap_interval_batch(data[c:c + chunk], np.mean, n_resamples=1000, seed=seed + c, method=method,
                                     clusters=clusters)
        hits.append((r.lo <= truth) & (truth <= r.hi))
    return float(np.concatenate(hits).mean())


def clustered_data(rng, n_items=100, reps=3, mu=1.5):
    """y = mu + item effect + noise (both sd 1): intra-item correlation 0.5."""
    y = mu + rng.normal(size=(N_SIMS, n_items, 1)) + rng.normal(size=(N_SIMS, n_items, reps))
    return y.reshape(N_SIMS, n_items * reps), np.repeat(np.arange(n_items), reps)


def test_t_interval_coverage():
    rng = np.random.default_rng(101)
    x = rng.normal(1.5, 2.0, size=(N_SIMS, 20))
    ivs = [t_interval(row) for row in x]
    cov = covered([i.lo for i in ivs], [i.hi for i in ivs], 1.5)
    assert LO <= cov <= HI, cov


def test_wilson_interval_coverage():
    rng = np.random.default_rng(102)
    p, n = 0.3, 100
    k = rng.binomial(n, p, size=N_SIMS)
    ivs = [wilson_interval(float(s), n) for s in k]
    cov = covered([i.lo for i in ivs], [i.hi for i in ivs], p)
    assert LO <= cov <= HI, cov
    # mean_interval picks Wilson for 0/1 data
    assert mean_interval([1, 0, 0, 1]).method == "wilson"


def test_cluster_mean_interval_coverage():
    rng = np.random.default_rng(103)
    y, items = clustered_data(rng, n_items=30, reps=4)
    keys = [f"item{i}" for i in items]
    ivs = [mean_interval(row, clusters=keys) for row in y]
    assert ivs[0].n == 30 and ivs[0].method == "t over item means"
    cov = covered([i.lo for i in ivs], [i.hi for i in ivs], 1.5)
    assert LO <= cov <= HI, cov


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_coverage(method):
    rng = np.random.default_rng(104)
    x = rng.normal(1.5, 2.0, size=(N_SIMS, 100))
    cov = bootstrap_coverage(x, 1.5, method=method, seed=7)
    assert LO <= cov <= HI, (method, cov)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_cluster_bootstrap_coverage(method):
    rng = np.random.default_rng(105)
    y, items = clustered_data(rng)
    assert bootstrap_interval_batch(y[:2], n_resamples=10, seed=0, clusters=items).n == 100
    cov = bootstrap_coverage(y, 1.5, method=method, clusters=items, seed=8)
    assert LO <= cov <= HI, (method, cov)


def test_row_bootstrap_undercovers_clustered_data():
    """Why clustering matters: resampling rows of repeated items gives too-narrow intervals."""
    rng = np.random.default_rng(105)
    y, _ = clustered_data(rng)
    # design effect 1 + (3 - 1) * 0.5 = 2: the row bootstrap's se is sqrt(2) too small (coverage ~0.83)
    assert bootstrap_coverage(y, 1.5, method="percentile", seed=8) < 0.90


def test_variance_ratio_f_coverage():
    rng = np.random.default_rng(106)
    sx, sy = 2.0, 1.0
    x = rng.normal(0, sx, size=(N_SIMS, 20))
    y = rng.normal(3, sy, size=(N_SIMS, 30))
    ivs = [variance_ratio_interval(a, b) for a, b in zip(x, y)]
    assert ivs[0].method == "F(19, 29)"
    cov = covered([i.lo for i in ivs], [i.hi for i in ivs], sx**2 / sy**2)
    assert LO <= cov <= HI, cov
