"""Estimator-study statistics on synthetic records with known bias, variance and components."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.stats import estimators as E
from harness.types import HarnessError


def ev_rows(cell, study, values_by_item, nfe, *, name="mc_elbo", metric="elbo", lengths=None, params=None):
    """Records (flattened as records.to_frame would) of an estimator_variance cell."""
    rows = []
    for i, vals in enumerate(values_by_item):
        for r, v in enumerate(vals):
            row = {"kind": "estimator_variance", "status": "ok", "cell_id": cell, "study": study,
                   "component.name": name, "outcome.metric": metric, "item_id": f"it{i}", "item_hash": f"h{i}",
                   "replicate": r, "estimate.value": float(v), "estimate.length": (lengths or [5] * 99)[i],
                   "cost.nfe": nfe, "model.name": "tiny"}
            row.update({f"component.params.{k}": p for k, p in (params or {}).items()})
            rows.append(row)
    return rows


def exact_rows(elbo, log_p, length=5):
    return [{"kind": "exact_reference", "status": "ok", "cell_id": "exact", "study": "exact",
             "component.name": "exact", "outcome.metric": "exact_elbo", "item_id": f"it{i}", "item_hash": f"h{i}",
             "replicate": 0, "estimate.elbo": e, "estimate.log_p": lp, "estimate.length": length,
             "cost.nfe": 31, "model.name": "tiny"} for i, (e, lp) in enumerate(zip(elbo, log_p))]


N_ITEMS, R = 10, 400
RNG = np.random.default_rng(7)
ELBO = -RNG.uniform(2, 8, N_ITEMS)
LOG_P = ELBO + 0.05


def test_bias_variance_mse_recover_known_values():
    b, sigma = 0.3, 1.5
    vals = [RNG.normal(x + b, sigma, R) for x in ELBO]
    df = pd.DataFrame(ev_rows("c", "s", vals, 4) + exact_rows(ELBO, LOG_P))
    items = E.per_item(df)
    assert len(items) == N_ITEMS and (items["R"] == R).all()
    s = E.summarize(items).iloc[0]
    assert s["bias_elbo_lo"] <= b <= s["bias_elbo_hi"]
    assert s["bias_log_p_lo"] <= b - 0.05 <= s["bias_log_p_hi"]
    assert s["var_lo"] <= sigma**2 <= s["var_hi"]
    assert s["mse_elbo"] == pytest.approx(sigma**2 + b**2, rel=0.1)
    assert s["var_x_nfe"] == pytest.approx(4 * s["var"])
    assert s["nfe"] == 4 and s["n_items"] == N_ITEMS
    # an unbiased cell's interval covers 0 and the biased one's does not
    assert s["bias_elbo_lo"] > 0


def test_token_mean_estimators_are_put_on_the_sequence_scale():
    L = 4
    vals = [RNG.normal(x / L, 0.01, 50) for x in ELBO]  # per-token means of an unbiased estimator
    df = pd.DataFrame(ev_rows("t", "t", vals, 4, name="trace", metric="trace", lengths=[L] * N_ITEMS)
                      + exact_rows(ELBO, LOG_P, L))
    s = E.summarize(E.per_item(df)).iloc[0]
    assert s["token_scale"] and s["bias_elbo_lo"] <= 0 <= s["bias_elbo_hi"]
    assert s["var"] == pytest.approx((0.01 * L) ** 2, rel=0.2)


def test_variance_slope_is_minus_one_for_one_over_nfe_data():
    rows = []
    for n in (1, 2, 4, 8, 16, 32):
        rows += ev_rows(f"a[{n}]", "a", [RNG.normal(x, 2 / math.sqrt(n), R) for x in ELBO], n)
        rows += ev_rows(f"b[{n}]", "b", [RNG.normal(x, 2 / n, R) for x in ELBO], n)  # variance ∝ 1/NFE²
    df = pd.DataFrame(rows + exact_rows(ELBO, LOG_P))
    slopes = E.nfe_slopes(E.summarize(E.per_item(df))).set_index("study")
    assert slopes.loc["a", "slope"] == pytest.approx(-1, abs=0.1) and slopes.loc["a", "one_over_nfe"]
    assert slopes.loc["b", "slope"] == pytest.approx(-2, abs=0.1) and not slopes.loc["b", "one_over_nfe"]
    assert slopes.loc["a", "points"] == 6


def test_ols_slope_interval():
    x = np.log([1, 2, 4, 8])
    fit = E.ols_slope(x, 3 - x)  # exact line: zero-width interval
    assert fit["slope"] == pytest.approx(-1) and fit["lo"] == pytest.approx(-1) and fit["hi"] == pytest.approx(-1)
    assert math.isnan(E.ols_slope(x[:2], x[:2])["lo"])  # two points: no interval


def test_anova_recovers_known_components():
    T, K, sb, sw = 4000, 8, 1.2, 0.7
    a = RNG.normal(0, sb, T)[:, None]
    y = 3 + a + RNG.normal(0, sw, (T, K))
    comp = E.anova_components(y.mean(1), y.var(1, ddof=1), K)
    assert comp["between"] == pytest.approx(sb**2, rel=0.08)
    assert comp["within"] == pytest.approx(sw**2, rel=0.05)
    assert comp["total"] == pytest.approx(sb**2 + sw**2, rel=0.06)
    # no between-t component: the estimate is unbiased for 0 (can be slightly negative)
    y0 = RNG.normal(0, sw, (T, K))
    assert abs(E.anova_components(y0.mean(1), y0.var(1, ddof=1), K)["between"]) < 0.02


def test_decomposition_verdicts():
    def rows(cell, sb, sw, law):
        out = []
        for i in range(6):
            y = RNG.normal(0, sb, (200, 1)) + RNG.normal(0, sw, (200, 4))
            out.append({"kind": "t_mask_decomposition", "status": "ok", "cell_id": cell, "study": "tm",
                        "item_id": f"it{i}", "estimate.group_mean": list(y.mean(1)),
                        "estimate.group_var": list(y.var(1, ddof=1)), "estimate.K": 4, "estimate.T": 200,
                        "estimate.t_law": law})
        return out

    d = E.decomposition(pd.DataFrame(rows("t", 3.0, 0.5, "iid") + rows("m", 0.3, 2.0, "count"))).set_index("cell_id")
    assert d.loc["t", "verdict"] == "t dominates" and d.loc["m", "verdict"] == "mask dominates"
    assert d.loc["t", "share_lo"] <= 9 / 9.25 <= d.loc["t", "share_hi"]


def test_ratio_spread_of_independent_draws():
    sigma = 0.1
    df = pd.DataFrame(ev_rows("c", "s", [RNG.normal(x, sigma, R) for x in ELBO], 2))
    sp = E.ratio_spread(df, seed=0, n_boot=200).iloc[0]
    assert sp["pairs"] == N_ITEMS * R // 2
    assert sp["sd_delta_lo"] <= sigma * math.sqrt(2) <= sp["sd_delta_hi"]
    # exp(Δ) with Δ ~ N(0, 2σ²): std = sqrt((e^{s²} − 1) e^{s²}), s² = 2σ²
    s2 = 2 * sigma**2
    assert sp["sd_ratio"] == pytest.approx(math.sqrt((math.exp(s2) - 1) * math.exp(s2)), rel=0.1)
    from scipy.stats import norm

    sd = sigma * math.sqrt(2)
    p_out = norm.cdf(math.log(0.8) / sd) + norm.sf(math.log(1.2) / sd)  # ratio outside [0.8, 1.2]
    assert sp["clip_frac"] == pytest.approx(p_out, abs=0.03)
    again = E.ratio_spread(df, seed=0, n_boot=200).iloc[0]
    assert again.equals(sp)  # same seed, same intervals


def test_variance_ratio_interval_covers_the_truth_and_is_seeded():
    a = [RNG.normal(0, 2.0, 300) for _ in range(8)]
    b = [RNG.normal(0, 1.0, 300) for _ in range(8)]
    res = E.variance_ratio(a, b, seed=3, n_boot=500)
    assert res["lo"] <= 4.0 <= res["hi"] and res["ratio"] == pytest.approx(4, rel=0.2)
    assert E.variance_ratio(a, b, seed=3, n_boot=500) == res
    assert E.variance_ratio(a, b, seed=4, n_boot=500) != res


def test_coupled_vs_independent_matches_equal_nfe_cells():
    coupled = ev_rows("cp[1]", "cp", [RNG.normal(x, 1.0, 100) for x in ELBO], 2, name="coupled", metric="coupled",
                      params={"include_full": False, "scale": "elbo", "t_law": math.nan})
    paper = ev_rows("paper", "paper", [RNG.normal(x, 1.0, 100) for x in ELBO], 2, name="coupled",
                    metric="coupled", params={"include_full": True, "scale": "paper", "t_law": math.nan})
    anti = ev_rows("mc[2]", "mc", [RNG.normal(x, 2.0, 100) for x in ELBO], 2,
                   params={"include_full": math.nan, "scale": math.nan, "t_law": "antithetic"})
    other = ev_rows("mc[4]", "mc", [RNG.normal(x, 2.0, 100) for x in ELBO], 4,
                    params={"include_full": math.nan, "scale": math.nan, "t_law": "antithetic"})
    res = E.coupled_vs_independent(pd.DataFrame(coupled + paper + anti + other), seed=0, n_boot=300)
    assert len(res) == 1  # the paper cell is not an ELBO estimate; NFE 4 has no coupled partner
    row = res.iloc[0]
    assert (row["coupled"], row["independent"], row["nfe"]) == ("cp[1]", "mc[2]", 2)
    assert row["lo"] <= 0.25 <= row["hi"] and row["hi"] < 1


def test_declared_reads_the_records_then_the_estimator_class():
    """What a value estimates comes from its estimator's declarations, never from its name: records
    written by the study carry them; older records fall back to the class built from the recorded
    name and parameters (the NaN a frame puts where a cell lacks a parameter is ignored)."""
    coupled = pd.DataFrame(ev_rows("a", "a", [[1.0]], 2, name="coupled", metric="coupled",
                                   params={"include_full": False, "scale": "elbo", "t_law": math.nan}))
    assert E.declared(coupled, "elbo_target") and E.declared(coupled, "masks") == "complementary"
    coupled["component.params.include_full"] = True  # the paper's full-mask pass: a different target
    assert not E.declared(coupled, "elbo_target")
    narrow = pd.DataFrame(ev_rows("n", "n", [[1.0]], 2, name="coupled", metric="coupled",
                                  params={"include_full": False, "scale": "elbo", "t_low": 0.2, "t_high": 0.8}))
    assert not E.declared(narrow, "elbo_target")  # the reference code's t range integrates G over it alone
    trace = pd.DataFrame(ev_rows("t", "t", [[1.0]], 1, name="trace", metric="trace"))
    assert E.declared(trace, "elbo_target") and E.declared(trace, "token_scale")
    trace["component.params.stride"] = 2.0  # ints come back as floats from a frame with gaps
    assert not E.declared(trace, "elbo_target")
    spg = pd.DataFrame(ev_rows("s", "s", [[1.0]], 2, name="block_elbo", metric="elbo", params={"scale": "token"}))
    assert E.declared(spg, "token_scale") and not E.declared(spg, "elbo_target")
    # a record's own declaration wins over the class (it says what the run that wrote it computed)
    spg["estimate.token_scale"] = False
    assert not E.declared(spg, "token_scale")
    with pytest.raises(HarnessError, match="records of cell s.*unknown parameter"):
        E.declared(spg.assign(**{"component.params.nonsense": 1}), "elbo_target")
