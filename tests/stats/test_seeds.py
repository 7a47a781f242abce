"""Aggregation over training seeds (rliable style): IQM, stratified bootstrap, P(X > Y)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.stats.seeds import iqm, probability_of_improvement, seed_aggregate


def test_iqm_hand_values():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([100, 0, 1, 10, 1, 0, 1, 1]) == pytest.approx(1.0)  # outliers 0, 0, 10, 100 trimmed
    assert iqm([5.0]) == 5.0
    assert math.isnan(iqm([]))
    x = np.random.default_rng(0).normal(size=(3, 13))
    np.testing.assert_allclose(iqm(x, axis=1), stats.trim_mean(x, 0.25, axis=1))


def test_seed_aggregate_point_estimates_and_seed_counts():
    scores = {"add": [0.1, 0.2, 0.3, 0.4], "sort": [0.5, 0.6, 0.7, 0.8], "copy": [0.9, 0.9, 1.0, 0.2]}
    agg = seed_aggregate(scores, seed=0, n_resamples=1000)
    assert agg.mean.mean == pytest.approx(np.mean([0.25, 0.65, 0.75]))
    assert agg.iqm.mean == pytest.approx(stats.trim_mean(np.concatenate(list(scores.values())), 0.25))
    assert (agg.n_tasks, agg.n_seeds, agg.mean.n) == (3, 4, 12)
    assert agg.seeds_per_task == {"add": 4, "sort": 4, "copy": 4}
    assert agg.mean.lo <= agg.mean.mean <= agg.mean.hi
    assert agg.iqm.lo <= agg.iqm.mean <= agg.iqm.hi
    assert "3 tasks × 4 seeds" in agg.fmt()


def test_seed_aggregate_is_stratified_by_task():
    # constant within each task: resampling seeds *within* tasks cannot move the mean
    agg = seed_aggregate({"a": [0.0] * 5, "b": [1.0] * 5}, seed=0, n_resamples=500)
    assert (agg.mean.lo, agg.mean.hi) == (0.5, 0.5)
    one = seed_aggregate({"a": [0.3], "b": [0.6]}, seed=0)
    assert one.n_seeds == 1 and math.isnan(one.mean.lo)


def test_probability_of_improvement_hand_values():
    x = {"A": [1, 2, 3], "B": [5, 6]}
    y = {"A": [0, 2, 4], "B": [1, 2]}
    # A: wins 1>0, 2>0, 3>0, 3>2 = 4, one tie (2 = 2): (4 + 0.5) / 9 = 0.5; B: 1.0
    poi = probability_of_improvement(x, y, seed=0, n_resamples=1000)
    assert poi.per_task == {"A": pytest.approx(0.5), "B": pytest.approx(1.0)}
    assert poi.estimate == pytest.approx(0.75)
    for t in x:
        u = stats.mannwhitneyu(x[t], y[t]).statistic
        assert poi.per_task[t] == pytest.approx(u / (len(x[t]) * len(y[t])))
    assert 0.0 <= poi.interval.lo <= 0.75 <= poi.interval.hi <= 1.0
    assert (poi.n_tasks, poi.n_seeds_x, poi.n_seeds_y) == (2, 2, 2)
    # symmetry: P(Y > X) = 1 - P(X > Y)
    assert probability_of_improvement(y, x, seed=0).estimate == pytest.approx(0.25)
    with pytest.raises(ValueError, match="tasks differ"):
        probability_of_improvement({"A": [1]}, {"B": [1]}, seed=0)
