"""Exact moments of the estimators without a continuous t: one_step (prompt masks), SPG's
block_elbo / eubo / mix (block masks, prompt masks), trace along uniformly random orders, exact.

Discrete laws are enumerated outright: every prompt subset Q (probability p^|Q| (1 − p)^(P−|Q|)),
every SPG block mask, every m-tuple of SPG samples where a bound is not a mean of per-sample values
(eubo, mix), every reveal order (by a DP over subsets, the `exact` DP's lattice). The SPG values
are computed by the estimator's own `terms` on the enumerated configurations, so any change to its
aggregation is followed here.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch

from harness.estimators.exact import subset_log_p
from harness.estimators.moments.core import ANY, Moments, register
from harness.types import HarnessError

POS_INT = lambda v: isinstance(v, int) and v >= 1  # noqa: E731
MAX_JOINT = 200_000  # eubo / mix: m-tuples of sample configurations enumerated at most


def _prompt_probs(qsize: np.ndarray, P: int, p: float) -> np.ndarray:
    return p ** qsize * (1 - p) ** (P - qsize)


def _discrete(values: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    mean = float((probs * values).sum())
    return mean, float((probs * (values - mean) ** 2).sum())


# -- one_step -----------------------------------------------------------------------------------
# mask_padding (post-EOS positions masked in every pass, never scored) is read by the study when
# it builds the item's table; covered here for when one_step gains it (d1 masks the whole canvas).
@register("one_step", {"p_prompt": lambda p: 0.0 <= p <= 1.0, "n_mc": POS_INT, "max_tokens": ANY,
                       "mask_padding": (True, False)})
def one_step(est, table, options) -> Moments:
    """value = Σ_k log p(o_k | c_Q, completion all masked), Q ~ i.i.d. Bernoulli(p_prompt) over the
    real prompt tokens: enumerated over all 2^P subsets; n_mc independent draws averaged."""
    if est.p_prompt == 0:
        return Moments(float(table.A[table.full]), 0.0, None, None, draws=est.n_mc,
                       notes=["p_prompt 0: deterministic"])
    lp, qsize = table.prompt_full("one_step")
    P = len(table.real_prompt())
    mean, var = _discrete(lp.sum(1), _prompt_probs(qsize, P, est.p_prompt))
    return Moments(mean, var / est.n_mc, None, None, draws=est.n_mc,
                   notes=[f"all 2^{P} prompt masks enumerated; the variance is prompt-mask variance"])


# -- SPG: block_elbo, eubo, mix -----------------------------------------------------------------
@lru_cache(maxsize=None)
def block_mask_law(n: int, block_length: int) -> np.ndarray:
    """[2^n] probability of each masked set M under SPG's block masks (block_masks in block_elbo.py):
    block k ~ U{0..n_blocks−1}, c ~ U{1..|b_k|}, a uniform c-subset of block k, every later block masked."""
    prob = np.zeros(1 << n)
    n_blocks = max(1, -(-n // block_length))
    for k in range(n_blocks):
        lo, hi = k * block_length, min(n, (k + 1) * block_length)
        later = sum(1 << i for i in range(hi, n))
        for c in range(1, hi - lo + 1):
            for sub in itertools.combinations(range(lo, hi), c):
                M = later | sum(1 << i for i in sub)
                prob[M] += 1.0 / (n_blocks * (hi - lo) * math.comb(hi - lo, c))
    prob.flags.writeable = False  # cached: shared by every call
    return prob


SPG_COVERS = {"m": POS_INT, "block_length": POS_INT, "p_prompt": lambda p: 0.0 <= p < 1.0,
              "scale": ("sequence", "token"), "mask_padding": (True, False), "max_tokens": ANY,
              "beta": ANY, "omega": ANY}


def spg(est, table, options) -> Moments:
    n = table.n
    pM = block_mask_law(n, est.block_length)
    if est.p_prompt > 0:
        lpQ, qsize = table.prompt_all(type(est).registry_name)  # [2^P, 2^n, n]
        pQ = _prompt_probs(qsize, len(table.real_prompt()), est.p_prompt)
    else:
        lpQ, pQ = table.lp[None], np.ones(1)
    q_idx, m_idx = np.nonzero(pQ[:, None] * pM[None, :] > 0)  # one sample's configurations
    probs = pQ[q_idx] * pM[m_idx]  # [C]
    bits = ((m_idx[:, None] >> np.arange(n)) & 1).astype(bool)  # [C, n]
    logp = lpQ[q_idx, m_idx]  # [C, n]
    linear = type(est).registry_name == "block_elbo"  # the m-sample value is the mean of sample values
    m = 1 if linear else est.m
    C = len(probs)
    if C ** m > MAX_JOINT:
        raise HarnessError(f"exact moments of {type(est).registry_name!r}: its m-sample value is not a mean of "
                           f"per-sample values, so all {C}^{m} joint configurations would be enumerated "
                           f"(more than {MAX_JOINT}); exact moments cover m with {C}^m <= {MAX_JOINT}")
    tup = np.array(list(itertools.product(range(C), repeat=m)), dtype=np.int64).reshape(-1, m)  # [C^m, m]
    t_logp = torch.from_numpy(logp[tup])  # [J, m, n]
    t_mask = torch.from_numpy(bits[tup])  # [J, m, n]
    t_hat = t_mask.sum(-1).double() / n  # [J, m]
    nn = torch.full((len(tup),), float(n), dtype=torch.float64)
    values = est.terms(t_logp, t_mask, t_hat, nn).sum(1).numpy()  # [J] the estimator's own aggregation
    mean, var = _discrete(values, probs[tup].prod(1))
    if linear:
        var /= est.m
    notes = ["block masks enumerated" + (f", with all 2^{len(table.real_prompt())} prompt masks"
                                         if est.p_prompt > 0 else "")]
    return Moments(mean, var, None, None, draws=est.m, notes=notes)


for _name in ("block_elbo", "eubo", "mix"):
    register(_name, SPG_COVERS)(spg)


# -- trace along uniformly random orders ----------------------------------------------------------
@register("trace", {"stride": POS_INT, "merge": ("steps", "ranks"), "aggregate": ("token", "group"),
                    "mask_padding": (True, False), "max_tokens": ANY})
def trace(est, table, options) -> Moments:
    """Random order σ; groups of `stride` consecutive steps; each group's tokens scored with the
    group and every later one masked. First and second moments by a DP over the revealed set R:
    E1[R], E2[R] of the remaining sum, E over the next group G (a uniform subset of S∖R)."""
    if options.get("commit_order") != "random":
        raise HarnessError("exact moments of 'trace' cover uniformly random reveal orders only: set the "
                           "study's options: {commit_order: random}")
    n, s, full = table.n, est.stride, table.full
    n_groups = -(-n // s)
    E1, E2 = np.zeros(1 << n), np.zeros(1 << n)
    size = table.size
    for g in reversed(range(n_groups)):
        k = min(s, n - g * s)  # this group's size
        coef = 1.0 / n if est.aggregate == "token" else 1.0 / (n_groups * k)
        for R in np.nonzero(size == g * s)[0]:
            free = [i for i in range(n) if not (R >> i) & 1]
            lp = table.lp[full ^ R]  # [n] scores with S∖R masked
            t1 = t2 = 0.0
            combos = list(itertools.combinations(free, k))
            for G in combos:
                term = coef * sum(lp[i] for i in G)
                R2 = R | sum(1 << i for i in G)
                t1 += term + E1[R2]
                t2 += term * term + 2 * term * E1[R2] + E2[R2]
            E1[R], E2[R] = t1 / len(combos), t2 / len(combos)
    mean = float(E1[0])
    return Moments(mean, float(E2[0] - mean * mean), None, None, draws=1,
                   notes=["all n! reveal orders, by a DP over subsets; a per-token mean: the study reports it x L"])


# -- exact --------------------------------------------------------------------------------------
@register("exact", {"target": ("elbo", "log_p"), "max_len": ANY, "max_tokens": ANY})
def exact(est, table, options) -> Moments:
    if est.target == "elbo":
        return Moments(table.elbo(), 0.0, None, None, notes=["deterministic"])
    n, full = table.n, table.full
    lp_r = torch.from_numpy(table.lp[full ^ np.arange(full)])  # [2^n − 1, n] by reveal set
    return Moments(float(subset_log_p(lp_r)) if n else 0.0, 0.0, None, None, notes=["deterministic"])
