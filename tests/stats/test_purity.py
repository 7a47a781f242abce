"""Resampling functions are pure: same seed, same result; global NumPy RNG state untouched."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import harness.stats as stats_pkg
from harness.stats.bootstrap import bootstrap_interval, bootstrap_interval_batch
from harness.stats.paired import compare_many, compare_paired, paired_bootstrap, paired_permutation_test
from harness.stats.seeds import probability_of_improvement, seed_aggregate
from harness.stats.variance import variance_ratio_interval

_rng = np.random.default_rng(41)
X = _rng.normal(size=60)
Y = _rng.normal(size=50)
ITEMS = np.repeat(np.arange(20), 3)
TASKS = {"a": _rng.normal(size=5), "b": _rng.normal(1, size=5)}
TASKS_Y = {"a": _rng.normal(size=4), "b": _rng.normal(1, size=4)}

CALLS = {
    "bootstrap percentile": lambda s: bootstrap_interval(X, seed=s, n_resamples=300),
    "bootstrap bca clusters": lambda s: bootstrap_interval(X, np.median, seed=s, n_resamples=200, method="bca",
                                                           clusters=ITEMS),
    "bootstrap batch": lambda s: bootstrap_interval_batch(np.stack([X, X[::-1]]), seed=s, n_resamples=300),
    "paired bootstrap": lambda s: paired_bootstrap(X, seed=s, n_resamples=300),
    "permutation": lambda s: paired_permutation_test(X + 0.2, seed=s, n_resamples=300),
    "compare_paired": lambda s: compare_paired(X + 0.2, seed=s, n_resamples=300),
    "compare_many": lambda s: compare_many({"x": X + 0.2, "y": Y}, seed=s, n_resamples=300),
    "seed_aggregate": lambda s: seed_aggregate(TASKS, seed=s, n_resamples=300),
    "probability_of_improvement": lambda s: probability_of_improvement(TASKS, TASKS_Y, seed=s, n_resamples=300),
    "variance ratio bootstrap": lambda s: variance_ratio_interval(X, Y, method="bootstrap", seed=s, n_resamples=300),
}


def _global_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.copy(), pos, has_gauss, cached


def _same_state(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("name", list(CALLS))
def test_reproducible_and_global_state_untouched(name):
    call = CALLS[name]
    before = _global_state()
    first, second, other = call(123), call(123), call(456)
    assert _same_state(before, _global_state())
    assert repr(first) == repr(second)  # repr round-trips floats exactly
    assert repr(first) != repr(other)


def test_no_global_rng_in_sources():
    """harness/stats uses only np.random.default_rng and Generator objects, never the global functions."""
    allowed = {"default_rng", "Generator", "SeedSequence", "PCG64", "BitGenerator"}
    for path in Path(stats_pkg.__file__).parent.glob("*.py"):
        used = set(re.findall(r"np\.random\.(\w+)", path.read_text()))
        assert used <= allowed, (path.name, used - allowed)


def test_variance_ratio_bootstrap_needs_seed_and_is_sane():
    with pytest.raises(ValueError, match="seed"):
        variance_ratio_interval(X, Y, method="bootstrap")
    rng = np.random.default_rng(42)
    a, b = rng.normal(0, 2, size=400), rng.normal(0, 1, size=400)
    f = variance_ratio_interval(a, b)
    boot = variance_ratio_interval(a, b, method="bootstrap", seed=0)
    assert boot.mean == f.mean and boot.lo < 4.0 < boot.hi
    assert boot.lo == pytest.approx(f.lo, rel=0.1) and boot.hi == pytest.approx(f.hi, rel=0.1)
    paired = variance_ratio_interval(a, a + 0.1 * b, method="bootstrap", seed=0, paired=True)
    assert paired.n == 400 and paired.lo < paired.mean < paired.hi
    with pytest.raises(ValueError):
        variance_ratio_interval(a, b, paired=True)  # F assumes independent samples
