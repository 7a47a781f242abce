"""Paired comparisons on shared keys: bootstrap, sign-flip permutation, exact McNemar, Holm.

Records of two runs are paired on shared keys (e.g. ``(cell, item, seed)``) and compared through
their per-key differences ``diff = b - a`` (``b`` the new run, ``a`` the base). Tests:

- :func:`paired_bootstrap`: symmetric studentized (bootstrap-t) interval on the mean difference and
  the matching two-sided p-value (Hall 1988, "On symmetric bootstrap confidence intervals";
  Efron & Tibshirani 1993, ch. 12 and 16: resample the differences, studentize each resample's
  mean around the observed mean, and compare ``|t|`` with the bootstrap ``|t*|``).
- :func:`paired_permutation_test`: sign-flip (randomisation) test of the mean difference (Fisher
  1935; Good, *Permutation Tests*, 2005): under H0 each difference is symmetric about 0, so its sign
  is exchangeable. Exact enumeration of all ``2^n`` sign vectors when ``n <= 16``, otherwise Monte
  Carlo with the ``(1 + hits) / (1 + n_resamples)`` p-value (Phipson & Smyth 2010).
- :func:`mcnemar_exact`: exact McNemar test for paired binary outcomes: under H0 the discordant
  pairs split Binomial(b01 + b10, 1/2) (``scipy.stats.binomtest``, two-sided).
- :func:`holm`: Holm (1979) step-down adjustment, controlling the family-wise error rate.
- :func:`paired_proportion_difference`: Newcombe's (1998) square-and-add interval for the difference
  of two paired proportions, built from the two Wilson intervals and the pairs' correlation; it stays
  in [-1, 1] and keeps a width when every pair agrees (a bootstrap would give [0, 0] there).

:func:`compare_paired` turns one comparison into a verdict for the regression gate (docs/architecture.md,
"Statistics"): "worse" only when the paired test rejects at ``alpha`` *and* the mean difference is
worse than ``-tolerance`` in the metric's direction; "better" symmetrically; otherwise
"no significant change". :func:`compare_many` does the same for several metrics with Holm-adjusted
p-values. Resampling functions draw only from ``np.random.default_rng(seed)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
from scipy import stats

from harness.stats.intervals import LEVEL, Interval, t_interval, wilson_interval, within_support

EXACT_MAX_N = 16  # sign-flip test enumerates all 2^n sign vectors up to this n
VERDICTS = ("worse", "better", "no significant change")
_BUDGET = 4_000_000


# ----------------------------------------------------------------------------------- pairing


def paired_differences(a_by_key: Mapping, b_by_key: Mapping, *, strict: bool = True):
    """Align two ``{key: value}`` maps on their shared keys; return ``(keys, b - a)``.

    Keys keep ``a_by_key``'s order; values may be bool or numeric. With ``strict`` (the default) a
    key present in only one map is an error whose message counts the unmatched keys on each side
    (and shows a few); with ``strict=False`` unmatched keys are dropped. No shared key is an error.
    """
    only_a = [k for k in a_by_key if k not in b_by_key]
    only_b = [k for k in b_by_key if k not in a_by_key]
    keys = [k for k in a_by_key if k in b_by_key]
    if (strict and (only_a or only_b)) or not keys:
        raise ValueError(
            f"cannot pair: {len(keys)} shared keys, {len(only_a)} only in the first "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]})")
    a = np.array([float(a_by_key[k]) for k in keys])
    b = np.array([float(b_by_key[k]) for k in keys])
    return keys, b - a


# ---------------------------------------------------------------------------- paired bootstrap


class PairedBootstrap(NamedTuple):
    """Symmetric bootstrap-t interval on the mean difference and its two-sided p-value."""

    interval: Interval
    p: float
    n_resamples: int


def _diff_matrix(diff) -> np.ndarray:
    d = np.asarray(diff, dtype=float)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2:
        raise ValueError("differences must be 1-D (one dataset) or 2-D [datasets, n]")
    return d


def _resample_counts(rng, n: int, r: int) -> np.ndarray:
    idx = rng.integers(0, n, size=(r, n))
    return np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n).astype(float)


def paired_bootstrap_batch(diff, *, seed, n_resamples: int = 2000, level: float = 0.95) -> dict:
    """:func:`paired_bootstrap` for each row of ``diff[B, n]``; arrays ``mean, lo, hi, p``.

    All rows share the resample indices, so row ``i`` equals the single call on ``diff[i]``.
    """
    d = _diff_matrix(diff)
    bsz, n = d.shape
    mean = d.mean(1)
    if n < 2:
        nan = np.full(bsz, math.nan)
        return {"mean": mean, "lo": nan, "hi": nan.copy(), "p": np.ones(bsz)}
    se = d.std(1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_obs = np.where(se > 0, np.abs(mean) / se, np.where(mean == 0, 0.0, np.inf))
    rng = np.random.default_rng(seed)
    abs_t = np.empty((bsz, n_resamples))
    rc = max(1, min(n_resamples, _BUDGET // n))
    d2 = d * d
    for r0 in range(0, n_resamples, rc):
        r1 = min(n_resamples, r0 + rc)
        c = _resample_counts(rng, n, r1 - r0)  # [r, n] multiplicities: same draws for every row
        m = (d @ c.T) / n
        var = np.maximum((d2 @ c.T) / n - m * m, 0.0) * n / (n - 1)
        dev = np.abs(m - mean[:, None])
        dev[dev <= 1e-12 * (np.abs(mean[:, None]) + 1e-300)] = 0.0  # rounding noise
        s = np.sqrt(var / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            abs_t[:, r0:r1] = np.where(s > 0, dev / s, np.where(dev == 0, 0.0, np.inf))
    hits = (abs_t >= t_obs[:, None] * (1 - 1e-10)).sum(1)
    p = (1 + hits) / (1 + n_resamples)
    p = np.where(t_obs == 0, 1.0, p)
    q = np.quantile(abs_t, level, axis=1)
    half = q * se
    half = np.where(se > 0, half, 0.0)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "p": p}


def paired_bootstrap(diff, *, seed, n_resamples: int = 2000, level: float = 0.95) -> PairedBootstrap:
    """Interval on the mean of per-key differences and a two-sided p-value for "mean = 0".

    Symmetric studentized bootstrap (Hall 1988): resample the differences ``n_resamples`` times,
    ``t* = |mean* - mean| / se*``; the interval is ``mean ± q · se`` with ``q`` the ``level``
    quantile of ``t*`` and ``p = (1 + #{t* >= |mean| / se}) / (1 + n_resamples)``, so ``p <= 1 - level``
    exactly when the interval excludes 0 (up to Monte Carlo ties). Studentizing keeps the level
    close to nominal at small ``n``, where the percentile bootstrap is too narrow. Constant
    differences give a zero-width interval (``p = 1`` if they are 0).
    """
    d = np.asarray(diff, dtype=float).ravel()
    if len(d) == 0:
        return PairedBootstrap(Interval(math.nan, math.nan, math.nan, 0, "paired bootstrap-t"), 1.0, n_resamples)
    r = paired_bootstrap_batch(d[None, :], seed=seed, n_resamples=n_resamples, level=level)
    iv = Interval(float(r["mean"][0]), float(r["lo"][0]), float(r["hi"][0]), len(d), "paired bootstrap-t")
    return PairedBootstrap(iv, float(r["p"][0]), n_resamples)


# -------------------------------------------------------------------------- permutation test


def _sign_matrix(n: int):
    """All 2^n sign vectors (rows), for exact enumeration."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    return 1.0 - 2.0 * bits


def paired_permutation_test_batch(diff, *, seed, n_resamples: int = 10000, exact: bool | None = None) -> np.ndarray:
    """:func:`paired_permutation_test` for each row of ``diff[B, n]`` (shared sign draws); p-values [B]."""
    d = _diff_matrix(diff)
    bsz, n = d.shape
    if n == 0:
        return np.ones(bsz)
    exact = n <= EXACT_MAX_N if exact is None else exact
    obs = np.abs(d.sum(1))
    thr = obs * (1 - 1e-10)  # ties within rounding count as "as extreme"
    hits = np.zeros(bsz)
    if exact:
        signs = _sign_matrix(n)  # includes the identity
        total = len(signs)
        step = max(1, _BUDGET // bsz)
        for s0 in range(0, total, step):
            hits += (np.abs(d @ signs[s0:s0 + step].T) >= thr[:, None]).sum(1)
        return np.minimum(1.0, hits / total)
    rng = np.random.default_rng(seed)
    rc = max(1, min(n_resamples, _BUDGET // n))
    for r0 in range(0, n_resamples, rc):
        r1 = min(n_resamples, r0 + rc)
        signs = rng.integers(0, 2, size=(r1 - r0, n)) * 2.0 - 1.0
        hits += (np.abs(d @ signs.T) >= thr[:, None]).sum(1)
    return np.minimum(1.0, (1 + hits) / (1 + n_resamples))


def paired_permutation_test(diff, *, seed, n_resamples: int = 10000) -> float:
    """Two-sided sign-flip permutation p-value for "mean difference = 0".

    Statistic ``|sum(diff)|``; reference distribution: the same statistic with each difference's
    sign flipped independently (valid when each difference is symmetric about 0 under H0).
    ``n <= 16``: exact enumeration of all ``2^n`` sign vectors, ``p = #{|T*| >= |T|} / 2^n``
    (``seed`` unused). Larger ``n``: ``n_resamples`` random sign vectors and
    ``p = (1 + #{|T*| >= |T|}) / (1 + n_resamples)`` (Phipson & Smyth 2010), never 0.
    """
    d = np.asarray(diff, dtype=float).ravel()
    return float(paired_permutation_test_batch(d[None, :], seed=seed, n_resamples=n_resamples)[0])


# ---------------------------------------------------------------------------------- McNemar


def mcnemar_exact(a, b) -> dict:
    """Exact McNemar test for paired binary outcomes ``a`` (base) and ``b`` (new).

    ``b01``: pairs with ``a`` false and ``b`` true; ``b10``: ``a`` true and ``b`` false. Under H0
    ``b01 ~ Binomial(b01 + b10, 1/2)``; ``p`` is ``scipy.stats.binomtest``'s two-sided p-value
    (``2 · P(X <= min(b01, b10))`` capped at 1 for this symmetric case). No discordant pair: p = 1.
    """
    a = np.asarray(a).astype(bool).ravel()
    b = np.asarray(b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b.size}")
    b01 = int((~a & b).sum())
    b10 = int((a & ~b).sum())
    p = 1.0 if b01 + b10 == 0 else float(stats.binomtest(b01, b01 + b10, 0.5).pvalue)
    return {"b01": b01, "b10": b10, "p": p}


def paired_proportion_difference(base, new, level: float = LEVEL) -> Interval:
    """``mean(new) - mean(base)`` of paired 0/1 outcomes with Newcombe's (1998, Stat. Med. 17:2127)
    square-and-add interval for paired data (without continuity correction).

    With ``(l_i, u_i)`` the Wilson intervals of ``p_new`` and ``p_base`` and ``phi`` the phi coefficient
    of the 2x2 table of pairs (0 when a margin is empty): ``lo = d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)
    (u2 - p2) + (u2 - p2)^2)``, ``hi = d + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)``.
    """
    a = np.asarray(base).astype(bool).ravel()
    b = np.asarray(new).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b.size}")
    n = a.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "Newcombe paired", (-1.0, 1.0))
    both, new_only, base_only, neither = (int((b & a).sum()), int((b & ~a).sum()), int((~b & a).sum()),
                                          int((~b & ~a).sum()))
    p1, p2 = b.mean(), a.mean()
    w1, w2 = wilson_interval(float(b.sum()), n, level), wilson_interval(float(a.sum()), n, level)
    denom = math.sqrt((both + new_only) * (base_only + neither) * (both + base_only) * (new_only + neither))
    phi = (both * neither - new_only * base_only) / denom if denom > 0 else 0.0
    d = float(p1 - p2)
    lo = d - math.sqrt(max(0.0, (p1 - w1.lo) ** 2 - 2 * phi * (p1 - w1.lo) * (w2.hi - p2) + (w2.hi - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (w1.hi - p1) ** 2 - 2 * phi * (w1.hi - p1) * (p2 - w2.lo) + (p2 - w2.lo) ** 2))
    return Interval(d, max(-1.0, lo), min(1.0, hi), n, "Newcombe paired (Wilson square-and-add)", (-1.0, 1.0))


# ------------------------------------------------------------------------------------- Holm


def holm(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm (1979) step-down adjusted p-values and reject flags at ``alpha``.

    Sort ascending ``p_(1) <= ... <= p_(m)``; ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``
    (monotone), returned in the input order; reject where ``adj <= alpha``. Controls the
    family-wise error rate under any dependence.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    m = len(p)
    if m == 0:
        return p.copy(), np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj_sorted = np.maximum.accumulate(scaled)
    adj = np.empty(m)
    adj[order] = adj_sorted
    return adj, adj <= alpha


# ------------------------------------------------------------------------------ comparisons


@dataclass(frozen=True)
class Comparison:
    """One paired comparison (new minus base) and its verdict."""

    name: str
    n: int  # paired units
    mean_diff: float  # mean of (new - base)
    interval: Interval  # on mean_diff
    p: float
    p_adjusted: float  # Holm-adjusted within compare_many; equal to p for a single comparison
    verdict: str  # "worse" | "better" | "no significant change"
    test: str = ""
    alpha: float = 0.05
    tolerance: float = 0.0
    higher_is_better: bool = True

    def as_row(self, digits: int = 4) -> dict:
        return {"metric": self.name, "n": self.n, "mean diff (new-base)": round(self.mean_diff, digits),
                "interval": self.interval.fmt(digits), "test": self.test, "p": self.p,
                "p (Holm)": self.p_adjusted, "tolerance": self.tolerance,
                "direction": "higher is better" if self.higher_is_better else "lower is better",
                "verdict": self.verdict}


def verdict_for(mean_diff: float, p: float, *, alpha: float, tolerance: float, higher_is_better: bool) -> str:
    """"worse" iff ``p < alpha`` and the signed change is below ``-tolerance``; "better" iff ``p < alpha``
    and above ``+tolerance``; else "no significant change" (signed = +diff if higher is better)."""
    if not (p < alpha) or math.isnan(mean_diff):
        return "no significant change"
    signed = mean_diff if higher_is_better else -mean_diff
    if signed < -tolerance:
        return "worse"
    if signed > tolerance:
        return "better"
    return "no significant change"


def _paired_test(d: np.ndarray, *, binary: bool, seed, n_resamples: int) -> tuple[float, str]:
    if binary:
        if not np.isin(d, (-1.0, 0.0, 1.0)).all():
            raise ValueError("binary comparison needs differences in {-1, 0, 1}")
        # diff = new - base: +1 is (base 0, new 1), -1 is (base 1, new 0)
        b01, b10 = int((d == 1).sum()), int((d == -1).sum())
        p = 1.0 if b01 + b10 == 0 else float(stats.binomtest(b01, b01 + b10, 0.5).pvalue)
        return p, f"McNemar exact (b01={b01}, b10={b10})"
    exact = len(d) <= EXACT_MAX_N
    p = paired_permutation_test(d, seed=seed, n_resamples=n_resamples)
    return p, "sign-flip permutation" + (" (exact)" if exact else f" ({n_resamples} resamples)")


def compare_paired(diff, *, alpha: float = 0.05, tolerance: float = 0.0, higher_is_better: bool = True,
                   binary: bool = False, seed, name: str = "", n_resamples: int = 10000,
                   level: float = 0.95) -> Comparison:
    """Verdict for one metric from per-key differences ``diff = new - base``.

    Test: exact McNemar when ``binary`` (differences in {-1, 0, 1}), else the sign-flip permutation
    test. Interval: Student-t on the mean difference (closed form for a mean; docs/architecture.md). Verdict
    by :func:`verdict_for`.
    """
    d = np.asarray(diff, dtype=float).ravel()
    if len(d) == 0:
        raise ValueError(f"no paired values for {name or 'comparison'}")
    p, test = _paired_test(d, binary=binary, seed=seed, n_resamples=n_resamples)
    iv = t_interval(d, level)
    iv = Interval(iv.mean, iv.lo, iv.hi, iv.n, "t (paired differences)")
    if binary:  # a difference of two 0/1 outcomes lies in [-1, 1]
        iv = within_support(iv, -1.0, 1.0)
    v = verdict_for(iv.mean, p, alpha=alpha, tolerance=tolerance, higher_is_better=higher_is_better)
    return Comparison(name, len(d), iv.mean, iv, p, p, v, test, alpha, tolerance, higher_is_better)


def _per(value, name):
    return value[name] if isinstance(value, Mapping) else value


def compare_many(diffs: Mapping, *, alpha: float = 0.05, tolerance=0.0, higher_is_better=True, binary=False,
                 seed, n_resamples: int = 10000, level: float = 0.95) -> list[Comparison]:
    """:func:`compare_paired` for each ``{name: diff}`` with Holm-adjusted p-values deciding the verdicts.

    ``tolerance``, ``higher_is_better`` and ``binary`` are scalars or ``{name: value}`` maps. Each
    comparison draws from its own child of ``np.random.default_rng(seed)`` (``Generator.spawn``).
    """
    names = list(diffs)
    rngs = np.random.default_rng(seed).spawn(len(names))
    raw = [compare_paired(diffs[k], alpha=alpha, tolerance=float(_per(tolerance, k)),
                          higher_is_better=bool(_per(higher_is_better, k)), binary=bool(_per(binary, k)),
                          seed=rngs[i], name=str(k), n_resamples=n_resamples, level=level)
           for i, k in enumerate(names)]
    adj, _ = holm([c.p for c in raw], alpha)
    out = []
    for c, pa in zip(raw, adj):
        v = verdict_for(c.mean_diff, float(pa), alpha=alpha, tolerance=c.tolerance,
                        higher_is_better=c.higher_is_better)
        out.append(Comparison(c.name, c.n, c.mean_diff, c.interval, c.p, float(pa), v, c.test, alpha,
                              c.tolerance, c.higher_is_better))
    return out
