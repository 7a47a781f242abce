"""Paired tests: level under H0, power at a planted difference, reference values (issue 7)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from harness.stats.paired import (
    Comparison,
    compare_many,
    compare_paired,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    paired_bootstrap_batch,
    paired_differences,
    paired_permutation_test,
    paired_permutation_test_batch,
    verdict_for,
)

ALPHA = 0.05


def rejection_rate(test, effect: float, n: int, *, sims: int = 1000, chunk: int = 50, seed: int = 0) -> float:
    """Share of ``sims`` datasets of n N(effect, 1) differences where ``test`` gives p < ALPHA.

    Chunks of datasets use different resampling seeds, so the rate averages over resample draws.
    """
    rng = np.random.default_rng(seed)
    rejected = []
    for c in range(sims // chunk):
        d = rng.normal(effect, 1.0, size=(chunk, n))
        rejected.append(test(d, seed=1000 + c) < ALPHA)
    return float(np.concatenate(rejected).mean())


def perm(d, seed):
    return paired_permutation_test_batch(d, seed=seed, n_resamples=1000)


def boot(d, seed):
    return paired_bootstrap_batch(d, seed=seed, n_resamples=1000)["p"]


@pytest.mark.parametrize("test", [perm, boot], ids=["permutation", "bootstrap"])
@pytest.mark.parametrize("n", [50, 10], ids=["n50", "n10"])
def test_paired_tests_hold_level(test, n):
    rate = rejection_rate(test, 0.0, n, seed=n)
    assert rate <= 0.06, rate
    assert rate >= 0.02, rate  # not uselessly conservative either


@pytest.mark.parametrize("test", [perm, boot], ids=["permutation", "bootstrap"])
def test_paired_tests_detect_planted_difference(test):
    # effect 0.5 sd at n = 50: the t-test's power is about 0.93
    assert rejection_rate(test, 0.5, 50, seed=7) > 0.8


def test_batch_rows_equal_single_calls():
    rng = np.random.default_rng(3)
    d = rng.normal(0.2, 1, size=(4, 30))
    pb = paired_bootstrap_batch(d, seed=5, n_resamples=500)
    pp = paired_permutation_test_batch(d, seed=5, n_resamples=500)
    for i in range(4):
        single = paired_bootstrap(d[i], seed=5, n_resamples=500)
        assert single.p == pb["p"][i]
        # same draws; only BLAS summation order may differ between a row and the batch
        assert single.interval.lo == pytest.approx(pb["lo"][i], rel=1e-12)
        assert single.interval.hi == pytest.approx(pb["hi"][i], rel=1e-12)
        assert paired_permutation_test(d[i], seed=5, n_resamples=500) == pp[i]


def test_permutation_exact_matches_scipy():
    rng = np.random.default_rng(11)
    d = rng.normal(0.4, 1, size=12)  # n <= 16: exact enumeration of 2^12 sign vectors
    ref = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided").pvalue
    assert paired_permutation_test(d, seed=0) == pytest.approx(ref, rel=1e-12)
    # hand case: all 4 differences positive -> only the identity and the all-flipped vector tie: 2/16
    assert paired_permutation_test([1.0, 2.0, 3.0, 4.0], seed=0) == pytest.approx(2 / 16)
    assert paired_permutation_test([0.0, 0.0, 0.0], seed=0) == 1.0


def test_permutation_monte_carlo_close_to_t_test():
    rng = np.random.default_rng(12)
    d = rng.normal(0.3, 1, size=60)
    p = paired_permutation_test(d, seed=1, n_resamples=20000)
    assert p == pytest.approx(stats.ttest_1samp(d, 0).pvalue, abs=0.01)
    assert paired_permutation_test(np.full(40, 1.0), seed=1, n_resamples=999) == pytest.approx(1 / 1000)


def test_paired_bootstrap_reference():
    rng = np.random.default_rng(13)
    d = rng.normal(0.3, 1, size=80)
    r = paired_bootstrap(d, seed=2, n_resamples=20000)
    t = stats.ttest_1samp(d, 0)
    ci = t.confidence_interval(0.95)
    assert r.interval.mean == pytest.approx(d.mean())
    assert r.interval.n == 80
    assert r.p == pytest.approx(t.pvalue, abs=0.01)
    width = ci.high - ci.low
    assert abs(r.interval.lo - ci.low) < 0.05 * width and abs(r.interval.hi - ci.high) < 0.05 * width
    # the interval excludes 0 exactly when p is small
    assert (r.interval.lo > 0) == (r.p < 0.05)
    z = paired_bootstrap(np.zeros(10), seed=0, n_resamples=100)
    assert z.p == 1.0 and z.interval.lo == z.interval.hi == 0.0


def test_mcnemar_hand_and_scipy():
    # b01 = 7 (base wrong, new right), b10 = 1: p = 2 * P(X <= 1 | n = 8, 1/2) = 2 * 9 / 256
    a = np.array([0] * 7 + [1] + [1] * 5 + [0] * 3, dtype=bool)
    b = np.array([1] * 7 + [0] + [1] * 5 + [0] * 3, dtype=bool)
    r = mcnemar_exact(a, b)
    assert (r["b01"], r["b10"]) == (7, 1)
    assert r["p"] == pytest.approx(0.0703125, rel=1e-12)
    assert r["p"] == pytest.approx(2 * stats.binom.cdf(1, 8, 0.5), rel=1e-12)
    assert r["p"] == pytest.approx(stats.binomtest(7, 8, 0.5).pvalue, rel=1e-12)
    # 10 vs 0: 2 / 2^10; symmetric split: 1; no discordant pair: 1
    assert mcnemar_exact([0] * 10, [1] * 10)["p"] == pytest.approx(2 / 1024)
    assert mcnemar_exact([0] * 5 + [1] * 5, [1] * 5 + [0] * 5)["p"] == 1.0
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == {"b01": 0, "b10": 0, "p": 1.0}
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


def test_holm_hand_example():
    # sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    adj, reject = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]
    adj, reject = holm([0.3, 0.9])
    np.testing.assert_allclose(adj, [0.6, 0.9])
    adj, reject = holm([0.9, 0.6])
    np.testing.assert_allclose(adj, [1.0, 1.0])  # 2 * 0.6 capped at 1, then monotone
    assert not reject.any()
    assert holm([])[0].size == 0


def test_paired_differences_alignment_and_errors():
    a = {("c", 1): 1.0, ("c", 2): 0.0, ("c", 3): 1.0}
    b = {("c", 3): 0.0, ("c", 1): True, ("c", 2): 1.0}
    keys, d = paired_differences(a, b)
    assert keys == [("c", 1), ("c", 2), ("c", 3)]
    np.testing.assert_array_equal(d, [0.0, 1.0, -1.0])
    b_missing = {("c", 1): 1.0, ("c", 9): 1.0}
    with pytest.raises(ValueError, match="2 only in the first.*1 only in the second"):
        paired_differences(a, b_missing)
    keys, d = paired_differences(a, b_missing, strict=False)
    assert keys == [("c", 1)] and d.tolist() == [0.0]
    with pytest.raises(ValueError, match="0 shared keys"):
        paired_differences({"x": 1}, {"y": 1}, strict=False)


def test_verdict_rules():
    kw = dict(alpha=0.05, tolerance=0.02)
    assert verdict_for(-0.05, 0.01, higher_is_better=True, **kw) == "worse"
    assert verdict_for(-0.01, 0.001, higher_is_better=True, **kw) == "no significant change"  # within tolerance
    assert verdict_for(-0.05, 0.2, higher_is_better=True, **kw) == "no significant change"  # not significant
    assert verdict_for(0.05, 0.01, higher_is_better=True, **kw) == "better"
    assert verdict_for(0.05, 0.01, higher_is_better=False, **kw) == "worse"  # e.g. a latency went up
    assert verdict_for(-0.05, 0.05, higher_is_better=True, **kw) == "no significant change"  # p < alpha strictly


def test_compare_paired_and_many():
    rng = np.random.default_rng(14)
    worse = rng.normal(-0.5, 1, size=100)
    c = compare_paired(worse, alpha=0.05, tolerance=0.1, seed=0, name="accuracy")
    assert isinstance(c, Comparison)
    assert c.verdict == "worse" and c.n == 100 and c.p == c.p_adjusted and c.p < 0.05
    assert c.interval.lo < c.mean_diff < c.interval.hi
    assert "permutation" in c.test
    assert compare_paired(worse, tolerance=1.0, seed=0).verdict == "no significant change"
    assert compare_paired(worse, higher_is_better=False, seed=0).verdict == "better"
    same = compare_paired(np.zeros(30), seed=0)
    assert same.verdict == "no significant change" and same.p == 1.0

    # binary outcomes: McNemar on the discordant pairs (diff = new - base in {-1, 0, 1})
    d = np.array([-1] * 12 + [1] * 1 + [0] * 40)
    cb = compare_paired(d, binary=True, seed=0, tolerance=0.05)
    assert cb.p == pytest.approx(stats.binomtest(1, 13, 0.5).pvalue)
    assert cb.verdict == "worse" and "McNemar" in cb.test
    with pytest.raises(ValueError):
        compare_paired([0.5, -1.0], binary=True, seed=0)

    many = compare_many({"acc": d, "nll": rng.normal(0.0, 1, size=50), "len": -worse},
                        binary={"acc": True, "nll": False, "len": False},
                        higher_is_better={"acc": True, "nll": False, "len": False}, seed=0)
    assert [m.name for m in many] == ["acc", "nll", "len"]
    adj, _ = holm([m.p for m in many])
    np.testing.assert_allclose([m.p_adjusted for m in many], adj)
    assert many[0].verdict == "worse" and many[2].verdict == "worse"
    assert many[1].verdict == "no significant change"
    again = compare_many({"acc": d, "nll": rng.normal(0.0, 1, size=50)}, binary={"acc": True, "nll": False}, seed=3)
    assert all(r["verdict"] in ("worse", "better", "no significant change") for r in (m.as_row() for m in again))
