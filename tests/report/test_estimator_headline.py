"""The sampled estimator headline claims the lowest MSE only when a paired test backs it: per-item MSE
differences against every other estimator, sign-flip permutation test, Holm."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report.estimators import _lowest_mse
from harness.stats.intervals import nonnegative_mean_interval


def _cells(mses: dict[str, np.ndarray]):
    items = pd.DataFrame([{"cell_id": c, "key": f"k{i}", "mse_elbo": float(v)}
                          for c, vals in mses.items() for i, v in enumerate(vals)])
    rows = []
    for c, vals in mses.items():
        iv = nonnegative_mean_interval(vals)
        rows.append({"cell_id": c, "study": c, "mse_elbo": iv.mean, "mse_elbo_lo": iv.lo, "mse_elbo_hi": iv.hi})
    return items, pd.DataFrame(rows).sort_values("mse_elbo")


def test_lowest_mse_needs_a_significant_paired_test():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, size=20)
    items, at = _cells({"low": base, "high": base * 3 + 0.1, "higher": base * 4 + 0.2})
    line = _lowest_mse(items, at, 8)
    assert "`low` has the smallest mean MSE" in line and "significantly below every other" in line
    assert "sign-flip permutation test on per-item MSE differences, Holm over 2, α = 0.05" in line
    items, at = _cells({"a": base, "b": np.abs(base + rng.normal(0, 0.5, size=20))})
    line = _lowest_mse(items, at, 8)
    assert "not significantly below" in line and "no single lowest MSE is established" in line
