"""Exact moments of the t-law ELBO estimators: mc_elbo, coupled, quadrature_elbo,
complementary_elbo, uni_elbo (docs/methods.md §1), from an item's table of masked-set sums A(M).

Notation: n scored positions; S1[l] = Σ_{|M|=l} A(M), S2[l] = Σ_{|M|=l} A(M)², Cx[l] =
Σ_{|M|=l} A(M)·A(S∖M). A Bernoulli(t) mask picks M with probability t^|M| (1 − t)^(n−|M|), so a
draw X = (1/t)·A(M) has
  g1(t) = E[X | t]  = Σ_l S1[l] t^(l−1) (1 − t)^(n−l),
  g2(t) = E[X² | t] = Σ_l S2[l] t^(l−2) (1 − t)^(n−l),
and E[X] = E_t g1, Var X = E_t[g2 − g1²] (mask part) + Var_t g1 (t part), integrated exactly
against the estimator's own law of t (tlaw.py), clamp atoms included. The l = 1 term of g2 is
S2[1]·(1 − t)^(n−1)/t: with t ~ U(0, 1) and no clamp, Var X is infinite (log divergence at t = 0);
the estimators' clamps (mc_elbo's T_MIN, coupled's T_EPS) are what make it finite, and each
result says so (`divergent`, `truncation`).
"""
from __future__ import annotations

import math

import numpy as np

from harness.estimators import coupled as coupled_mod
from harness.estimators import mc_elbo as mc_mod
from harness.estimators.moments.core import ANY, Moments, combine, register
from harness.estimators.moments.tlaw import TLaw, TPoly, clamped_uniform
from harness.estimators.quadrature_elbo import gauss_legendre
from harness.types import HarnessError

POS_INT = lambda v: isinstance(v, int) and v >= 1  # noqa: E731


def g_polys(table) -> tuple[TPoly, TPoly]:
    """(g1, g2): E[X | t] and E[X² | t] of one draw (1/t)·A(M), M ~ Bernoulli(t) on the scored positions."""
    n, S1, S2 = table.n, table.S1(), table.S2()
    g1, g2 = TPoly.zeros(n), TPoly.zeros(n)
    for l in range(1, n + 1):
        g1.add_term(S1[l], l - 1, n - l)
        g2.add_term(S2[l], l - 2, n - l)
    return g1, g2


def law_moments(law: TLaw, g1: TPoly, g2: TPoly, g11: TPoly | None = None) -> tuple[float, float, float, float]:
    """(mean, var, within = E_t[g2 − g1²], between = Var_t g1) of one draw with t ~ law
    (g11 = g1·g1, when the caller has it already)."""
    m1, e11, m2 = law.expect(g1), law.expect(g1 * g1 if g11 is None else g11), law.expect(g2)
    within, between = m2 - e11, e11 - m1 * m1
    return m1, within + between, within, between


def _with_divergence(m: Moments, law: TLaw, g2: TPoly, clamp_text: str) -> Moments:
    """Mark the result divergent when the second moment is infinite without the clamp."""
    if law.atoms and law.clamp:
        un = law.unclamped().expect(g2)
        if not math.isfinite(un):
            m.divergent, m.var_unclamped = True, math.inf
            m.truncation = clamp_text
            m.notes.append(f"Var is infinite for the unclamped t-law; finite only through {clamp_text}")
    return m


# -- mc_elbo ------------------------------------------------------------------------------------
@register("mc_elbo", {"n_mc": POS_INT, "t_law": ("iid", "stratified", "antithetic", "count", "count_stratified",
                                                 "count_systematic"),
                      "group": POS_INT, "max_tokens": ANY})
def mc_elbo(est, table, options) -> Moments:
    n, N, eps = table.n, est.n_mc, mc_mod.T_MIN
    clamp = f"t >= {eps:g} (mc_elbo's draw_t clamp)"
    if est.t_law == "count_stratified":
        return _count_stratified(est, table)
    if est.t_law == "count_systematic":
        return _count_systematic(est, table)
    if est.t_law == "count":
        if eps >= 1.0 / max(n, 1):
            raise HarnessError(f"exact moments of mc_elbo count: T_MIN={eps} must be below 1/L = {1 / n}")
        l = np.arange(1, n + 1)
        comb = np.array([math.comb(n, k) for k in l], dtype=float)
        e1 = (n / l) * table.S1()[1:] / comb  # E[X | l]
        e2 = (n / l) ** 2 * table.S2()[1:] / comb  # E[X² | l]
        m1 = e1.mean()
        within, between = float((e2 - e1 ** 2).mean()), float(((e1 - m1) ** 2).mean())
        mean, var, w, b = combine([(m1, within + between, within, between)] * N, 1.0 / N)
        return Moments(mean, var, w, b, draws=N, notes=["l ~ U{1..L}, weight L/l: no t, the count l plays its role"])
    g1, g2 = g_polys(table)
    g11 = g1 * g1
    if est.t_law == "iid":
        law = clamped_uniform(0.0, 1.0, eps, None, "t ~ U(0, 1)")
        mean, var, w, b = combine([law_moments(law, g1, g2, g11)] * N, 1.0 / N)
    elif est.t_law == "stratified":
        laws = [clamped_uniform(i / N, (i + 1) / N, eps, None, f"t ~ U({i}/{N}, {i + 1}/{N})") for i in range(N)]
        mean, var, w, b = combine([law_moments(lw, g1, g2, g11) for lw in laws], 1.0 / N)
        law = laws[0]
    else:  # antithetic: draws (u_j, 1 − u_j) for j < N − ⌈N/2⌉, plus one unpaired u when N is odd
        law = clamped_uniform(0.0, 1.0, eps, None, "t ~ U(0, 1)")
        m1, v1, w1, b1 = law_moments(law, g1, g2, g11)
        e11 = law.expect(g11)
        cross = 2 * g1(eps) * g1.integral(1 - eps, 1.0) + (g1 * g1.reflect()).integral(eps, 1 - eps)
        pair_between = 2 * e11 + 2 * cross - 4 * m1 * m1  # Var_u[g1(t(u)) + g1(t(1 − u))]
        k = (N + 1) // 2
        pairs, singles = N - k, 2 * k - N
        parts = [(2 * m1, 2 * w1 + pair_between, 2 * w1, pair_between)] * pairs + [(m1, v1, w1, b1)] * singles
        mean, var, w, b = combine(parts, 1.0 / N)
    return _with_divergence(Moments(mean, var, w, b, draws=N), law, g2, clamp)


def _count_stratified(est, table) -> Moments:
    """LLaDA eval's systematic counts: each group of g draws shares k ~ U{1..L} and its counts
    l_i(k) come from the estimator's own `stratified_counts`; groups are independent, and given the
    counts the masks are. Var = Σ_groups (E_k Var(G | k) + Var_k E[G | k]) / N²."""
    import torch

    n = table.n
    if mc_mod.T_MIN >= 1.0 / n:
        raise HarnessError(f"exact moments of mc_elbo count_stratified: T_MIN must be below 1/L = {1 / n}")
    u = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n  # one u per k: every group draws k
    return _count_groups(est, table, mc_mod.stratified_counts, u, np.full(n, 1.0 / n),
                         "LLaDA eval's systematic counts: the count k of each group plays the role of t")


def _count_systematic(est, table) -> Moments:
    """The unbiased systematic counts: each group shares u ~ U(0, 1) and l_i(u) = ⌊L·frac(u + i/g)⌋ + 1
    (the estimator's own `systematic_counts`) is constant between the breakpoints frac(j/L − i/g): the
    law of u is integrated exactly by one u per piece, weighted by the piece's length."""
    import torch

    n, N = table.n, est.n_mc
    sizes = {min(est.group, N - lo) for lo in range(0, N, est.group)}
    cuts = sorted({0.0, 1.0} | {(j / n - i / g) % 1.0 for g in sizes for i in range(g) for j in range(n)})
    lo, hi = np.array(cuts[:-1]), np.array(cuts[1:])
    keep = hi - lo > 1e-12
    u = torch.from_numpy((lo[keep] + hi[keep]) / 2)
    if mc_mod.T_MIN >= float(u.min()):
        raise HarnessError(f"exact moments of mc_elbo count_systematic: T_MIN must be below {float(u.min())}")
    return _count_groups(est, table, mc_mod.systematic_counts, u, (hi - lo)[keep],
                         "unbiased systematic counts: the offset u of each group plays the role of t")


def _count_groups(est, table, counts_of, u, prob, note: str) -> Moments:
    """Count laws whose groups of g draws share one uniform: `u` [K] one value per piece of its law
    (probabilities `prob` [K]), `counts_of` the estimator's own counts function. Groups are
    independent, and given the counts the masks are: Var = Σ_groups (E Var(G | u) + Var E[G | u]) / N²."""
    import torch

    n, N = table.n, est.n_mc
    comb = np.array([1.0] + [math.comb(n, k) for k in range(1, n + 1)])
    l_all = np.arange(n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.where(l_all > 0, (n / np.maximum(l_all, 1)) * table.S1() / comb, 0.0)  # E[X | l]
        e2 = np.where(l_all > 0, (n / np.maximum(l_all, 1)) ** 2 * table.S2() / comb, 0.0)
    t = u[:, None].expand(len(u), N).contiguous()  # row r: every group draws u_r
    counts = counts_of(t, torch.full((len(u), 1), float(n), dtype=torch.float64), est.group)
    l = np.minimum(counts.numpy().astype(int), n)  # [K, N]
    mean = within = between = 0.0
    for lo in range(0, N, est.group):
        g = l[:, lo:lo + est.group]  # [K, g]
        m_k = e1[g].sum(1)  # E[G | u]
        v_k = (e2[g] - e1[g] ** 2).sum(1)  # Var(G | u)
        mu = float((prob * m_k).sum())
        mean += mu
        within += float((prob * v_k).sum())
        between += float((prob * (m_k - mu) ** 2).sum())
    return Moments(mean / N, (within + between) / N ** 2, within / N ** 2, between / N ** 2, draws=N, notes=[note])


# -- coupled ------------------------------------------------------------------------------------
@register("coupled", {"n_mc": POS_INT, "t_low": ANY, "t_high": ANY, "include_full": (True, False),
                      "scale": ("paper", "elbo"), "max_tokens": ANY})
def coupled(est, table, options) -> Moments:
    """Pair value P = (1/t)·A(M) + (1/(1 − t))·A(S∖M), M ~ Bernoulli(t):
    E[P | t] = g1(t) + g1(1 − t), E[P² | t] = g2(t) + g2(1 − t) + 2 Σ_l Cx[l] t^(l−1) (1 − t)^(n−l−1);
    sequence = (f·A(S) + s·Σ_j P_j)/(λ + f) with f = include_full, s = 1 or 1/2, λ = n_mc pairs."""
    n, lam, eps = table.n, est.n_mc, coupled_mod.T_EPS
    g1, g2 = g_polys(table)
    e1, e2 = g1 + g1.reflect(), g2 + g2.reflect()
    Cx = table.Cx()
    for l in range(1, n):
        e2.add_term(2 * Cx[l], l - 1, n - l - 1)
    law = clamped_uniform(est.t_low, est.t_high, eps, 1 - eps, f"t ~ U({est.t_low:g}, {est.t_high:g})")
    m1, v, w, b = law_moments(law, e1, e2)
    f = int(est.include_full)
    s = 0.5 if est.scale == "elbo" else 1.0
    c = s / (lam + f)
    full = float(table.A[table.full]) if f else 0.0
    mean = f * full / (lam + f) + c * lam * m1
    m = Moments(mean, c * c * lam * v, c * c * lam * w, c * c * lam * b, draws=lam)
    return _with_divergence(m, law, e2, f"t in [{eps:g}, 1 − {eps:g}] (coupled's clamp)")


# -- quadrature_elbo ----------------------------------------------------------------------------
@register("quadrature_elbo", {"n_nodes": POS_INT, "k_masks": POS_INT, "mask_law": ("count", "bernoulli"),
                              "max_tokens": ANY})
def quadrature_elbo(est, table, options) -> Moments:
    """t on fixed Gauss–Legendre nodes: no t variance; value = Σ_n (w_n/(t_n K)) Σ_j A(M_nj)."""
    n, K = table.n, est.k_masks
    t_nodes, w_nodes = (x.numpy() for x in gauss_legendre(est.n_nodes))
    S1, S2 = table.S1(), table.S2()
    l = np.arange(n + 1)
    mean = var = 0.0
    for t, w in zip(t_nodes, w_nodes):
        if est.mask_law == "bernoulli":
            p = t ** l * (1 - t) ** (n - l)  # [n + 1] probability of one mask of each size
            ea, ea2 = float((p * S1).sum()), float((p * S2).sum())
        else:
            k = int(max(1.0, math.floor(t * float(n))))  # k_n = max(1, ⌊t_n L⌋), as the estimator computes it
            ea, ea2 = S1[k] / math.comb(n, k), S2[k] / math.comb(n, k)
        c = w / t
        mean += c * ea
        var += c * c * (ea2 - ea * ea) / K
    return Moments(mean, var, var, 0.0, draws=K, notes=["t on fixed nodes: all variance is mask variance"])


# -- complementary_elbo -------------------------------------------------------------------------
@register("complementary_elbo", {"n_mc": POS_INT, "max_tokens": ANY})
def complementary_elbo(est, table, options) -> Moments:
    """Sample i: stratum s_i ~ U(i/N, (i+1)/N), l = min(⌊s L⌋ + 1, L), value = w1·A(M) + w2·A(S∖M)."""
    n, N = table.n, est.n_mc
    S1, S2, Cx = table.S1(), table.S2(), table.Cx()
    e1, e2 = np.zeros(n + 1), np.zeros(n + 1)
    for l in range(1, n + 1):
        w1 = (1.0 if l == n else 0.5) * n / l
        w2 = 0.0 if l == n else 0.5 * n / (n - l)
        c = math.comb(n, l)
        e1[l] = (w1 * S1[l] + w2 * S1[n - l]) / c
        e2[l] = (w1 * w1 * S2[l] + w2 * w2 * S2[n - l] + 2 * w1 * w2 * Cx[l]) / c
    parts = []
    for i in range(N):
        lo, hi = i / N, (i + 1) / N
        p = np.array([0.0] + [N * max(0.0, min(hi, l / n) - max(lo, (l - 1) / n)) for l in range(1, n + 1)])
        m1 = float((p * e1).sum())
        within, between = float((p * (e2 - e1 ** 2)).sum()), float((p * (e1 - m1) ** 2).sum())
        parts.append((m1, within + between, within, between))
    mean, var, w, b = combine(parts, 1.0 / N)
    return Moments(mean, var, w, b, draws=N, notes=["the count l plays the role of t"])


# -- uni_elbo -----------------------------------------------------------------------------------
@register("uni_elbo", {"iteration": ANY, "n_iterations": ANY, "max_tokens": ANY})
def uni_elbo(est, table, options) -> Moments:
    """value = A(M)/|M| with M ~ Bernoulli(t), an empty draw moved to a uniform single position;
    t = t_1 + (1 − t_1)·i/(μ − 1), t_1 ~ U(0, 1)."""
    n, S1, S2 = table.n, table.S1(), table.S2()
    e1, e2 = TPoly.zeros(n), TPoly.zeros(n)
    for l in range(1, n + 1):
        e1.add_term(S1[l] / l, l, n - l)
        e2.add_term(S2[l] / l ** 2, l, n - l)
    e1.add_term(S1[1] / n, 0, n)  # |M| = 0 -> one uniform position
    e2.add_term(S2[1] / n, 0, n)
    c = est.iteration / (est.n_iterations - 1) if est.n_iterations > 1 else 0.0
    law = TLaw(((c, 1.0, 1.0 / (1.0 - c)),), (), "t ~ U(c, 1)") if c < 1 else TLaw((), ((1.0, 1.0),), "t = 1")
    mean, var, w, b = law_moments(law, e1, e2)
    return Moments(mean, var, w, b, draws=1, notes=["a per-token mean: the study reports it x L"])
