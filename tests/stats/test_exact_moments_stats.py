"""Exact-moment statistics (issue 14) on synthetic records with known values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.stats import exact_moments as X
from tests.stats.test_estimator_stats import ev_rows


def xm_rows(cell, study, var_by_item, nfe, *, mean=0.0, within=None, params=None, elbo=0.0):
    """Records (flattened) of an exact_moments cell: one per item."""
    rows = []
    for i, v in enumerate(var_by_item):
        row = {"kind": "exact_moments", "status": "ok", "cell_id": cell, "study": study,
               "component.name": "mc_elbo", "item_id": f"it{i}", "item_hash": f"h{i}", "model.name": "tiny",
               "estimate.metric": "elbo", "estimate.nfe": nfe, "estimate.mean": mean, "estimate.var": v,
               "estimate.var_within": v if within is None else within, "estimate.var_between": 0.0 if within is None
               else v - within, "estimate.exact_elbo": elbo, "estimate.divergent": False,
               "estimate.truncation": "", "estimate.draws": 1}
        row.update({f"component.params.{k}": p for k, p in (params or {}).items()})
        rows.append(row)
    return rows


def test_beside_matches_by_params_and_flags_heavy_tails():
    rng = np.random.default_rng(0)
    normal = [rng.normal(0, 2, 40) for _ in range(3)]  # variance 4, kurtosis 3
    heavy = [1 / rng.uniform(size=40) for _ in range(3)]  # the 1/t law: kurtosis >> 3
    p_iid = {"t_law": "iid", "n_mc": 1, "max_tokens": 8192}
    p_cnt = {"t_law": "count", "n_mc": 1, "max_tokens": 65536}  # max_tokens never changes a match
    df = pd.DataFrame(ev_rows("n", "n", normal, 1, params=p_cnt) + ev_rows("h", "h", heavy, 1, params=p_iid)
                      + xm_rows("xn", "xn", [4.0] * 3, 1, params={**p_cnt, "max_tokens": 8192})
                      + xm_rows("xh", "xh", [50.0] * 3, 1, params=p_iid))
    b = X.beside(df, X.exact_items(df)).set_index("cell_id")
    assert b.loc["n", "exact_var"] == 4.0 and b.loc["h", "exact_var"] == 50.0
    assert not b.loc["n", "heavy_tail"] and b.loc["h", "heavy_tail"]
    assert b.loc["n", "sampled_var"] == pytest.approx(np.mean([v.var(ddof=1) for v in normal]))
    assert b.loc["h", "n_eff"] < b.loc["n", "n_eff"] and b.loc["n", "R"] == 40


def test_exact_slopes_and_decomposition_verdicts():
    df = pd.DataFrame(
        xm_rows("a[1]", "a", [8.0, 6.0], 1, within=1.0) + xm_rows("a[4]", "a", [2.0, 1.5], 4)
        + xm_rows("b[1]", "b", [8.0], 1, within=7.0) + xm_rows("b[4]", "b", [1.9], 4))
    s = X.exact_summary(X.exact_items(df))
    sl = X.exact_slopes(s).set_index("study")
    assert sl.loc["a", "slope"] == pytest.approx(-1.0) and sl.loc["a", "verdict"].startswith("exactly 1/NFE")
    assert sl.loc["b", "slope"] < -1 and sl.loc["b", "verdict"].startswith("faster than 1/NFE")
    assert sl.loc["b", "change"] == pytest.approx(1.9 * 4 / 8 - 1)
    d = X.exact_decomposition(s).set_index("cell_id")
    assert d.loc["a[1]", "verdict"] == "t dominates" and d.loc["a[1]", "share"] == pytest.approx(6 / 7)
    assert d.loc["b[1]", "verdict"] == "mask dominates" and d.loc["b[1]", "share"] == pytest.approx(1 / 8)


def test_kurtosis():
    rng = np.random.default_rng(1)
    assert X.kurtosis(rng.normal(size=200_000)) == pytest.approx(3.0, abs=0.05)
    assert X.kurtosis(rng.uniform(size=200_000)) == pytest.approx(1.8, abs=0.02)
    assert math.isnan(X.kurtosis([1.0, 2.0])) and math.isnan(X.kurtosis([3.0] * 5))
