"""Bootstrap intervals: agreement with scipy.stats.bootstrap, cluster resampling, edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.stats.bootstrap import bootstrap_interval, bootstrap_interval_batch


def generic_mean(x, axis=-1):  # not `np.mean`, so it takes the generic (gather) path
    return np.mean(x, axis=axis)


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("statistic", [np.mean, np.median], ids=["mean", "median"])
def test_matches_scipy_bootstrap(method, statistic):
    x = np.random.default_rng(21).exponential(size=40)  # skewed, so BCa and percentile differ
    ours = bootstrap_interval(x, statistic, n_resamples=20000, seed=0, method=method)
    ref = stats.bootstrap((x,), statistic, n_resamples=20000, method="BCa" if method == "bca" else method,
                          rng=np.random.default_rng(0)).confidence_interval
    width = ref.high - ref.low
    assert ours.mean == pytest.approx(float(statistic(x)))
    assert ours.n == 40
    # within 2% of the width (Monte Carlo error at 20000 resamples is well below that); scipy 1.17
    # draws the same indices from the same seed, so today they agree to rounding
    assert abs(ours.lo - ref.low) < 0.02 * width and abs(ours.hi - ref.high) < 0.02 * width


def test_bca_differs_from_percentile_on_skewed_data():
    x = np.random.default_rng(22).exponential(size=40)
    p = bootstrap_interval(x, seed=1, method="percentile")
    b = bootstrap_interval(x, seed=1, method="bca")
    assert b.lo > p.lo and b.hi > p.hi  # BCa shifts right for right-skewed means


def test_batch_rows_equal_single_calls():
    rng = np.random.default_rng(23)
    data = rng.normal(size=(5, 30))
    items = np.repeat(np.arange(10), 3)
    for method in ("percentile", "bca"):
        for clusters in (None, items):
            batch = bootstrap_interval_batch(data, n_resamples=300, seed=4, method=method, clusters=clusters)
            for i in range(5):
                one = bootstrap_interval(data[i], n_resamples=300, seed=4, method=method, clusters=clusters)
                assert one.lo == pytest.approx(batch.lo[i], rel=1e-12)
                assert one.hi == pytest.approx(batch.hi[i], rel=1e-12)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_mean_fast_path_equals_generic_path(method):
    rng = np.random.default_rng(24)
    x = rng.normal(size=40)
    balanced = np.repeat(np.arange(10), 4)
    unbalanced = np.r_[np.repeat(np.arange(8), 4), np.arange(8, 16)]  # eight clusters of 4 rows, eight of 1
    for clusters in (None, balanced, unbalanced):
        fast = bootstrap_interval(x, np.mean, n_resamples=500, seed=9, method=method, clusters=clusters)
        slow = bootstrap_interval(x, generic_mean, n_resamples=500, seed=9, method=method, clusters=clusters)
        assert fast.lo == pytest.approx(slow.lo, rel=1e-10)
        assert fast.hi == pytest.approx(slow.hi, rel=1e-10)
        assert fast.n == slow.n


def test_cluster_bootstrap_counts_items_and_is_wider():
    rng = np.random.default_rng(25)
    items = np.repeat([f"q{i}" for i in range(40)], 5)
    y = np.repeat(rng.normal(size=40), 5) + 0.3 * rng.normal(size=200)
    rows = bootstrap_interval(y, seed=0)
    clus = bootstrap_interval(y, seed=0, clusters=items)
    assert rows.n == 200 and clus.n == 40
    assert clus.method == "cluster percentile bootstrap"
    assert clus.mean == pytest.approx(y.mean())
    assert (clus.hi - clus.lo) > 1.5 * (rows.hi - rows.lo)
    # singleton clusters are the row bootstrap
    same = bootstrap_interval(y, seed=0, clusters=list(range(200)))
    assert (same.lo, same.hi) == pytest.approx((rows.lo, rows.hi), rel=1e-12)


def test_generic_statistic_with_unbalanced_clusters():
    rng = np.random.default_rng(26)
    x = rng.normal(size=25)
    labels = ["a"] * 10 + ["b"] * 3 + [f"s{i}" for i in range(12)]
    iv = bootstrap_interval(x, np.median, n_resamples=300, seed=1, method="bca", clusters=labels)
    assert iv.n == 14 and iv.lo <= iv.mean <= iv.hi
    non_vectorised = bootstrap_interval(x, lambda v: float(np.median(v)), n_resamples=300, seed=1,
                                        method="bca", clusters=labels)
    assert (non_vectorised.lo, non_vectorised.hi) == pytest.approx((iv.lo, iv.hi))


def test_edge_cases():
    empty = bootstrap_interval([], seed=0)
    assert empty.n == 0 and math.isnan(empty.mean)
    one = bootstrap_interval([3.0], seed=0)
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.lo)
    for method in ("percentile", "bca"):
        const = bootstrap_interval([2.0] * 10, seed=0, method=method)
        assert (const.lo, const.mean, const.hi) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, 2.0], seed=0, method="basic")
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, 2.0], seed=0, clusters=["a"])
