"""Masked-likelihood estimators (docs/methods.md §1): one_step, coupled, uni_elbo, quadrature_elbo,
complementary_elbo (and mc_elbo's t-laws) against exact targets computed from every reveal set.

For one row with n scored tokens, one pass per proper reveal set R gives lp[R, i] =
log p(o_{S_i} | o_R, c). From it, h(l) = mean over |M| = l of Σ_{i∈M} log p(o_i | o_{S∖M}), and
  ELBO = Σ_l h(l)/l,   one_step = h(n),   G(t) = Σ_l C(n,l) t^{l−1}(1−t)^{n−l} h(l)  (∫_0^1 G = ELBO)
so each estimator's exact expectation is a formula in h (see each module's docstring). Monte Carlo
checks use 10^4 independent draws in one call (the row repeated, one generator) and a 3-SE band.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.estimators._common import completion_logprobs
from harness.estimators.exact import exact_terms, reveal_bits
from harness.estimators.quadrature_elbo import gauss_legendre
from harness.registry import ESTIMATORS
from harness.types import ArchInfo
from tests.helpers import Recorder, make_tiny

MASK = 1
NAMES = ["one_step", "coupled", "uni_elbo", "quadrature_elbo", "complementary_elbo"]
N_MC = 10_000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small passes gain nothing from threads on a busy 2-core machine; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- models and data --------------------------------------------------------------------------
def sharp_tiny(dtype=torch.float32, seed: int = 0):
    """A tiny random model whose conditionals depend visibly on the context (ELBO ≠ one_step).
    float32 for the big Monte Carlo calls (log-probs go through float32 log-softmax anyway),
    float64 where numbers must match across batch layouts."""
    den = make_tiny(seed=seed, max_len=16, d_model=16)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in den.module.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=g)
    den.module.to(dtype)
    return den


class Factorised:
    """Logits depend only on the absolute position, never on the context: every conditional
    p(o_j | o_R, c) = p_j, so log p(o) = ELBO = one_step = Σ_j log p_j. `constant=True` gives every
    position the same distribution (with a repeated token, every scored log-prob is equal)."""

    mask_id, eos_id, pad_id, shift_logits = MASK, 2, 0, False
    vocab_size = 26
    tokenizer = None
    device = torch.device("cpu")
    arch = ArchInfo(n_params=1, n_layers=1, d_model=1)

    def __init__(self, T: int = 16, seed: int = 0, constant: bool = False):
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(T, self.vocab_size, generator=g, dtype=torch.float64) * 2  # [T, V]
        self.table = table[:1].expand(T, -1).clone() if constant else table

    def logits(self, x, attention_mask=None):
        N, T = x.shape
        return self.table[:T].expand(N, T, self.vocab_size)

    def marginals(self, P: int, completion: torch.Tensor) -> torch.Tensor:
        """[L] log p_k of each completion token (float32 log-softmax, as the estimators)."""
        L = completion.shape[0]
        logp = F.log_softmax(self.table[P:P + L].to(torch.promote_types(self.table.dtype, torch.float32)), -1)
        return logp[torch.arange(L), completion].double()


# One row: prompt of 3, completion of 6 whose last position is padding after the EOS (unscored).
PROMPT = torch.tensor([5, 6, 7])
COMPLETION = torch.tensor([8, 9, 10, 11, 2, 0])
CMASK = torch.tensor([True, True, True, True, True, False])
NS = int(CMASK.sum())  # 5 scored tokens


def repeat(n: int):
    return PROMPT.expand(n, -1), COMPLETION.expand(n, -1), CMASK.expand(n, -1)


def mixed_batch():
    """Four rows with different scored lengths and left-padded prompts."""
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(3, 26, (4, 4), generator=g)
    completion = torch.randint(3, 26, (4, 6), generator=g)
    cmask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]).bool()
    pmask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]).bool()
    return prompt, completion, cmask, pmask


# -- exact targets from the reveal-set table ---------------------------------------------------
def h_table(den) -> torch.Tensor:
    """h[l], l = 0..n: mean over masked sets M with |M| = l of Σ_{i∈M} log p(o_i | o_{S∖M}, c)."""
    S = torch.nonzero(CMASK).squeeze(1)
    bits = reveal_bits(NS)  # [N, n] True = revealed
    N = len(bits)
    x = COMPLETION.expand(N, -1).clone()
    x[:, S] = torch.where(bits, COMPLETION[S], MASK)
    with torch.no_grad():
        lp = completion_logprobs(den, PROMPT.expand(N, -1), None, COMPLETION.expand(N, -1), x[:, None], 1 << 16)
    lp = lp[:, 0][:, S].double()  # [N, n]
    h = torch.zeros(NS + 1, dtype=torch.float64)
    for R in range(N):
        m = ~bits[R]
        h[int(m.sum())] += lp[R][m].sum() / math.comb(NS, int(m.sum()))
    return h


def elbo_of(h):
    return float(sum(h[m] / m for m in range(1, NS + 1)))


def G(t: float, h) -> float:
    """E_{mask ~ Bernoulli(t)}[(1/t) Σ_masked log p]: the ELBO integrand (a polynomial in t)."""
    return float(sum(math.comb(NS, m) * t ** (m - 1) * (1 - t) ** (NS - m) * h[m] for m in range(1, NS + 1)))


def mean_G(a: float, b: float, h) -> float:
    """(1/(b−a)) ∫_a^b G: Gauss–Legendre with 8 nodes is exact for G's degree NS − 1."""
    t, w = gauss_legendre(8)
    return float(sum(wi * G(a + (b - a) * ti, h) for ti, wi in zip(t.tolist(), w.tolist())))


@pytest.fixture(scope="module")
def sharp():
    den = sharp_tiny(torch.float32)
    h = h_table(den)
    with torch.no_grad():
        ref = exact_terms(den, PROMPT[None], COMPLETION[None], CMASK[None])
    assert elbo_of(h) == pytest.approx(float(ref["elbo"][0]), abs=1e-9)  # the table matches `exact`
    assert abs(h[NS] - elbo_of(h)) > 1.0  # context matters: one_step is far from the ELBO
    return den, h


def monte_carlo(est, den, n: int = N_MC, seed: int = 0):
    """(mean, standard error) of n independent sequence values of the row."""
    with torch.no_grad():
        v = est(den, *repeat(n), generator=torch.Generator().manual_seed(seed)).sequence
    return float(v.mean()), float(v.std() / math.sqrt(n))


def build(name, **params):
    return ESTIMATORS.build(name, params)


# -- (a) unbiasedness on the tiny model ---------------------------------------------------------
UNBIASED_FOR_ELBO = [
    ("mc_elbo", {"n_mc": 1, "t_law": "iid"}),
    ("mc_elbo", {"n_mc": 2, "t_law": "stratified"}),
    ("mc_elbo", {"n_mc": 2, "t_law": "antithetic"}),
    ("mc_elbo", {"n_mc": 1, "t_law": "count"}),
    ("mc_elbo", {"n_mc": 4, "t_law": "count_stratified", "group": 4}),  # LLaDA eval's law
    ("coupled", {"include_full": False, "scale": "elbo"}),
    ("complementary_elbo", {"n_mc": 1}),
    ("complementary_elbo", {"n_mc": 3}),
    ("quadrature_elbo", {"n_nodes": 3, "mask_law": "bernoulli"}),  # exact rule: 2·3 − 1 ≥ NS − 1
]


@pytest.mark.parametrize("name, params", UNBIASED_FOR_ELBO)
def test_unbiased_estimators_match_the_exact_elbo(sharp, name, params):
    den, h = sharp
    n = N_MC // params.get("n_mc", 1)  # 10^4 draws per estimator
    mean, se = monte_carlo(build(name, **params), den, n)
    assert abs(mean - elbo_of(h)) < 3 * se, (mean, se, elbo_of(h))


def test_coupled_targets(sharp):
    """Paper scale: the pair part estimates 2·ELBO, so with the full pass the value targets
    one_step/2 + ELBO; the 'elbo' scale with the full pass targets the midpoint (one_step + ELBO)/2;
    the reference code's t ~ U(0.2, 0.8) replaces the ELBO by the mean of G over [0.2, 0.8]."""
    den, h = sharp
    elbo, one = elbo_of(h), float(h[NS])
    cases = [
        ({}, (one + 2 * elbo) / 2),
        ({"include_full": False}, 2 * elbo),
        ({"scale": "elbo"}, (one + elbo) / 2),
        ({"t_low": 0.2, "t_high": 0.8}, (one + 2 * mean_G(0.2, 0.8, h)) / 2),
    ]
    for params, target in cases:
        mean, se = monte_carlo(build("coupled", **params), den, N_MC // 2, seed=1)
        assert abs(mean - target) < 3 * se, (params, mean, se, target)
        if params == {"include_full": False}:
            assert abs(mean - elbo) > 10 * se  # and it is clearly not the ELBO


def test_coupled_pair_expectation_given_t_by_enumeration(sharp):
    """At fixed t, average over all 2^n first-pass masks (Bernoulli(t) probabilities) by replay:
    the pair's two passes sum to G(t) + G(1 − t) exactly."""
    den, h = sharp
    t = 0.3
    masks = reveal_bits(NS + 1)[:, :NS]  # all subsets of the scored positions (and more; dedup below)
    masks = torch.unique(masks, dim=0)  # [2^n, n]
    B = len(masks)
    first = torch.zeros(B, 1, 6, dtype=torch.bool)
    first[:, 0, :NS] = masks
    prob = torch.tensor([t ** int(m.sum()) * (1 - t) ** (NS - int(m.sum())) for m in masks], dtype=torch.float64)
    draws = {"t": torch.full((B, 1), t, dtype=torch.float64), "masks": first}
    with torch.no_grad():
        e = build("coupled", include_full=False)(den, *repeat(B), generator=None, draws=draws)
    assert float((prob * e.sequence).sum()) == pytest.approx(G(t, h) + G(1 - t, h), abs=1e-9)


def test_complementary_is_exactly_unbiased_by_enumeration(sharp):
    """Every count l and every l-subset, weighted 1/L · 1/C(L, l), replayed: the average is the
    ELBO to float precision (the plain average with an empty complement would miss h(L)/(2L))."""
    den, h = sharp
    subsets = torch.unique(reveal_bits(NS + 1)[:, :NS], dim=0)  # [2^n, n] all subsets
    subsets = subsets[subsets.sum(1) > 0]  # l = 1..n
    B = len(subsets)
    masks = torch.zeros(B, 1, 6, dtype=torch.bool)
    masks[:, 0, :NS] = subsets
    count = subsets.sum(1, keepdim=True).double()  # [B, 1]
    prob = torch.tensor([1 / (NS * math.comb(NS, int(c))) for c in count[:, 0]], dtype=torch.float64)
    with torch.no_grad():
        e = build("complementary_elbo")(den, *repeat(B), generator=None, draws={"count": count, "masks": masks})
    assert float((prob * e.sequence).sum()) == pytest.approx(elbo_of(h), abs=1e-9)
    assert abs(h[NS] / (2 * NS)) > 0.1  # the bias the l = L rule removes is not negligible here


def test_uni_elbo_targets_the_count_weighted_mean(sharp):
    """|M| is uniform on {0..n} under t ~ U(0,1) and Bernoulli masks, and |M| = 0 becomes 1:
    E = Σ_l P(l)·h(l)/l with P(1) = 2/(n+1), P(l) = 1/(n+1); close to but not ELBO/n."""
    den, h = sharp
    P = [0.0] + [2 / (NS + 1)] + [1 / (NS + 1)] * (NS - 1)
    target = sum(P[m] * float(h[m]) / m for m in range(1, NS + 1))
    mean, se = monte_carlo(build("uni_elbo"), den, seed=2)
    assert abs(mean - target) < 3 * se, (mean, se, target)
    assert abs(target - elbo_of(h) / NS) > 0.01  # a different quantity from ELBO/n


def test_quadrature_count_targets_the_step_function_rule(sharp):
    """count law: E = Σ_n w_n·h(k_n)/t_n with k_n = max(1, ⌊t_n L⌋): biased, and the bias does not
    shrink with N (the first node's h(1)/t term grows like log N)."""
    den, h = sharp

    def expected(N):
        t, w = gauss_legendre(N)
        return sum(wi * float(h[max(1, math.floor(ti * NS))]) / ti for ti, wi in zip(t.tolist(), w.tolist()))

    mean, se = monte_carlo(build("quadrature_elbo", n_nodes=2), den, N_MC // 2, seed=3)
    assert abs(mean - expected(2)) < 3 * se, (mean, se, expected(2))
    elbo = elbo_of(h)
    assert abs(expected(2) - elbo) > 10 * se  # biased at the default N = 2
    assert abs(expected(200) - elbo) > abs(expected(2) - elbo)  # and no better with many nodes


def test_quadrature_bernoulli_bias_vanishes_with_nodes(sharp):
    """bernoulli law: E = Σ_n w_n G(t_n), G a polynomial of degree n − 1: exact once 2N − 1 ≥ n − 1."""
    _, h = sharp
    elbo = elbo_of(h)
    bias = []
    for N in (1, 2, 3, 4):
        t, w = gauss_legendre(N)
        bias.append(abs(sum(wi * G(ti, h) for ti, wi in zip(t.tolist(), w.tolist())) - elbo))
    assert bias[0] > bias[1] > 1e-3
    assert bias[2] < 1e-9 and bias[3] < 1e-9


def test_one_step_prompt_masking_law(sharp):
    """one_step = Σ_k log p(o_k | c', all masked) averaged over prompt masks: exact expectation by
    replaying all 2^P prompt masks with their Bernoulli(p_prompt) probabilities; n_mc draws in one call."""
    den, h = sharp
    p = 0.3
    est = build("one_step", p_prompt=p, n_mc=N_MC, mask_padding=False)  # h(n) keeps the padding clean
    pm = torch.unique(reveal_bits(4)[:, :3], dim=0)  # [8, 3] all prompt masks
    prob = torch.tensor([p ** int(m.sum()) * (1 - p) ** (3 - int(m.sum())) for m in pm], dtype=torch.float64)
    with torch.no_grad():
        e = est(den, *repeat(len(pm)), generator=None, draws={"prompt_masks": pm[:, None, :]})
        assert float(e.sequence[0]) == pytest.approx(float(h[NS]), abs=1e-9)  # nothing masked: h(n)
        target = float((prob * e.sequence).sum())
        mc = est(den, *repeat(1), generator=torch.Generator().manual_seed(4))
    bits = 2 ** torch.arange(3)
    by_pattern = torch.empty(len(pm), dtype=torch.float64)
    by_pattern[(pm.long() * bits).sum(1)] = e.sequence  # value of each prompt-mask pattern
    values = by_pattern[(mc.draws["prompt_masks"][0].long() * bits).sum(1)]  # [n_mc] per-draw values
    assert float(values.mean()) == pytest.approx(float(mc.sequence[0]), abs=1e-9)  # n_mc draws averaged
    se = float(values.std() / math.sqrt(N_MC))
    assert abs(float(mc.sequence[0]) - target) < 3 * se
    assert abs(target - float(h[NS])) > 3 * se  # prompt masking changes the value


# -- (b) a factorised denoiser: what is exact and what only holds in expectation ---------------
def factorised_row(constant: bool = False):
    den = Factorised(constant=constant)
    completion = torch.tensor([4, 4, 4, 4, 4, 0]) if constant else COMPLETION
    lp = den.marginals(3, completion)[CMASK]  # [n]
    return den, completion, lp


def run(est, den, completion, n, seed=0):
    with torch.no_grad():
        return est(den, PROMPT.expand(n, -1), completion.expand(n, -1), CMASK.expand(n, -1),
                   generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p_prompt", [0.0, 0.15, 1.0])
def test_factorised_one_step_is_exact(p_prompt):
    den, completion, lp = factorised_row()
    e = run(build("one_step", p_prompt=p_prompt, n_mc=3), den, completion, 8)
    torch.testing.assert_close(e.sequence, lp.sum().expand(8), rtol=0, atol=1e-12)


def test_factorised_equal_log_probs_make_count_estimators_deterministic():
    """With every scored log-prob equal to c, the exact-count estimators are exact on every draw;
    the count-law quadrature is deterministic too, but equals c·Σ_n w_n k_n / t_n ≠ L·c."""
    den, completion, lp = factorised_row(constant=True)
    c = float(lp[0])
    assert torch.all(lp == lp[0])
    exact = {
        ("mc_elbo", (("t_law", "count"),)): NS * c,
        ("complementary_elbo", (("n_mc", 3),)): NS * c,
        ("uni_elbo", ()): c,
        ("one_step", ()): NS * c,
    }
    for (name, params), value in exact.items():
        e = run(build(name, **dict(params)), den, completion, 64)
        torch.testing.assert_close(e.sequence, torch.full((64,), value, dtype=torch.float64), rtol=1e-12, atol=0)
    t, w = gauss_legendre(2)
    k = torch.floor(t * NS).clamp_min(1)
    e = run(build("quadrature_elbo", n_nodes=2), den, completion, 64)
    quad = float((w * k / t).sum()) * c
    torch.testing.assert_close(e.sequence, torch.full((64,), quad, dtype=torch.float64), rtol=1e-12, atol=0)
    assert abs(quad - NS * c) > 0.1 * abs(c)


FACTORISED_EXPECTATIONS = [  # (name, params, E[value] / Σ_k log p_k)
    ("coupled", {"include_full": False, "scale": "elbo"}, 1.0),
    ("coupled", {"scale": "elbo"}, 1.0),
    ("coupled", {}, 1.5),
    ("coupled", {"include_full": False}, 2.0),
    ("complementary_elbo", {}, 1.0),
    ("quadrature_elbo", {"n_nodes": 2, "mask_law": "bernoulli"}, 1.0),  # G is constant: any N
    ("quadrature_elbo", {"n_nodes": 2}, None),  # Σ_n w_n k_n / (t_n L)
    ("uni_elbo", {}, 1.0 / NS),
]


@pytest.mark.parametrize("name, params, ratio", FACTORISED_EXPECTATIONS)
def test_factorised_expectations(name, params, ratio):
    den, completion, lp = factorised_row()
    if ratio is None:
        t, w = gauss_legendre(params["n_nodes"])
        ratio = float((w * torch.floor(t * NS).clamp_min(1) / (t * NS)).sum())
        assert abs(ratio - 1) > 0.05  # the count-law rule is not exact even here
    e = run(build(name, **params), den, completion, N_MC // 2, seed=5)
    mean, se = float(e.sequence.mean()), float(e.sequence.std() / math.sqrt(N_MC // 2))
    assert abs(mean - ratio * float(lp.sum())) < 3 * se, (mean, se, ratio * float(lp.sum()))


def test_factorised_uni_elbo_is_the_masked_mean():
    """Per draw, uni_elbo is the mean of log p_k over its masked set; at t = 1 (last inner
    iteration) everything is masked and it equals Σ_k log p_k / n exactly."""
    den, completion, lp = factorised_row()
    e = run(build("uni_elbo"), den, completion, 256)
    m = e.draws["masks"][:, 0, :NS].double()  # [B, n]
    torch.testing.assert_close(e.sequence, (m * lp).sum(1) / m.sum(1), rtol=1e-12, atol=0)
    last = run(build("uni_elbo", iteration=3, n_iterations=4), den, completion, 8)
    torch.testing.assert_close(last.sequence, (lp.sum() / NS).expand(8), rtol=1e-12, atol=0)


# -- (c) replay, (d) batch invariance, (e) NFE, masking hygiene ---------------------------------
CONFIGS = [
    ("one_step", {"p_prompt": 0.5, "n_mc": 2, "mask_padding": False}),
    ("one_step", {"p_prompt": 0.5, "n_mc": 2}),  # default: the whole completion canvas masked (d1)
    ("coupled", {"n_mc": 2}),
    ("coupled", {"include_full": False, "t_low": 0.2, "t_high": 0.8}),
    ("uni_elbo", {"iteration": 1, "n_iterations": 3}),
    ("quadrature_elbo", {"n_nodes": 3, "k_masks": 2}),
    ("quadrature_elbo", {"mask_law": "bernoulli"}),
    ("complementary_elbo", {"n_mc": 3}),
]


@pytest.fixture(scope="module")
def tiny64():
    return sharp_tiny(torch.float64)


@pytest.mark.parametrize("name, params", CONFIGS)
def test_replay_reproduces_exactly(tiny64, name, params):
    prompt, completion, cmask, pmask = mixed_batch()
    est = build(name, **params)
    with torch.no_grad():
        a = est(tiny64, prompt, completion, cmask, generator=torch.Generator().manual_seed(1), prompt_mask=pmask)
        b = est(tiny64, prompt, completion, cmask, generator=torch.Generator().manual_seed(2), prompt_mask=pmask,
                draws=a.draws)
    assert torch.equal(a.per_token, b.per_token) and torch.equal(a.sequence, b.sequence)
    torch.testing.assert_close(a.per_token.sum(1), a.sequence)
    assert torch.all(a.per_token[~cmask] == 0)


def test_uni_elbo_replays_t1_across_iterations(tiny64):
    prompt, completion, cmask, pmask = mixed_batch()
    with torch.no_grad():
        first = build("uni_elbo", iteration=0, n_iterations=3)(
            tiny64, prompt, completion, cmask, generator=torch.Generator().manual_seed(1), prompt_mask=pmask)
        t1 = first.draws["t1"]
        second = build("uni_elbo", iteration=1, n_iterations=3)(
            tiny64, prompt, completion, cmask, generator=torch.Generator().manual_seed(2), prompt_mask=pmask,
            draws={"t1": t1})
        last = build("uni_elbo", iteration=2, n_iterations=3)(
            tiny64, prompt, completion, cmask, generator=torch.Generator().manual_seed(3), prompt_mask=pmask,
            draws={"t1": t1})
        one = build("one_step", p_prompt=0.0, mask_padding=False)(tiny64, prompt, completion, cmask, generator=None,
                                                                  prompt_mask=pmask)
    torch.testing.assert_close(first.draws["t"], t1)
    torch.testing.assert_close(second.draws["t"], t1 + (1 - t1) / 2)
    assert torch.equal(second.draws["t1"], t1)
    assert torch.equal(last.draws["masks"][:, 0], cmask)  # t = 1: everything scored is masked
    torch.testing.assert_close(last.sequence, one.sequence / cmask.sum(1), rtol=1e-12, atol=0)
    assert all(torch.all(d.draws["masks"].sum(-1) >= 1) for d in (first, second, last))


@pytest.mark.parametrize("name, params", CONFIGS)
def test_batch_invariance(tiny64, name, params):
    """Chunked passes (small max_tokens) and per-row generators split into separate calls give
    the same numbers as one batched call."""
    prompt, completion, cmask, pmask = mixed_batch()
    seeds = [11, 12, 13, 14]
    with torch.no_grad():
        whole = build(name, **params)(tiny64, prompt, completion, cmask, prompt_mask=pmask,
                                      generator=[torch.Generator().manual_seed(s) for s in seeds])
        chunked = build(name, **params, max_tokens=prompt.shape[1] + completion.shape[1])(
            tiny64, prompt, completion, cmask, prompt_mask=pmask,
            generator=[torch.Generator().manual_seed(s) for s in seeds])
        rows = [build(name, **params)(tiny64, prompt[i:i + 1], completion[i:i + 1], cmask[i:i + 1],
                                      prompt_mask=pmask[i:i + 1], generator=[torch.Generator().manual_seed(s)])
                for i, s in enumerate(seeds)]
    # Draws are bit-identical; values agree to float64 rounding (BLAS may sum differently for
    # different batch sizes, a difference of order 1e-16 relative).
    torch.testing.assert_close(chunked.per_token, whole.per_token, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([r.per_token for r in rows]), whole.per_token, rtol=0, atol=1e-12)
    for key, value in whole.draws.items():
        assert torch.equal(torch.cat([r.draws[key] for r in rows]), value), key


@pytest.mark.parametrize("name, params", CONFIGS)
def test_meter_nfe_equals_expected(tiny64, name, params):
    prompt, completion, cmask, pmask = mixed_batch()
    est = build(name, **params, max_tokens=3 * (prompt.shape[1] + completion.shape[1]))  # several passes
    meter = Meter(tiny64)
    with torch.no_grad():
        est(meter, prompt, completion, cmask, generator=torch.Generator().manual_seed(0), prompt_mask=pmask)
    assert meter.cost.nfe == est.nfe_for_batch(len(prompt))


@pytest.mark.parametrize("name, params", CONFIGS)
def test_only_scored_positions_are_masked(tiny64, name, params):
    """Unscored completion positions and padding stay clean in every pass; only one_step touches
    the prompt, and only its real (prompt_mask True) tokens."""
    prompt, completion, cmask, pmask = mixed_batch()
    rec = Recorder(tiny64)
    with torch.no_grad():
        build(name, **params)(rec, prompt, completion, cmask, generator=torch.Generator().manual_seed(0),
                              prompt_mask=pmask)
    x = torch.cat(rec.inputs)  # [B·copies, P + L], rows grouped by sequence
    copies = len(x) // len(prompt)
    row = torch.arange(len(prompt)).repeat_interleave(copies)
    P = prompt.shape[1]
    comp = x[:, P:]
    if name == "one_step" and params.get("mask_padding", True):  # the reference masks the whole canvas
        assert bool((comp == MASK).all())
    else:
        assert torch.equal(comp[~cmask[row]], completion[row][~cmask[row]])
        assert not bool(((comp == MASK) & ~cmask[row]).any())
    if name == "one_step":
        assert torch.equal(x[:, :P][~pmask[row]], prompt[row][~pmask[row]])
        assert bool((x[:, :P] == MASK).any())
    else:
        assert torch.equal(x[:, :P], prompt[row])


def test_one_step_masks_prompt_tokens_at_rate():
    prompt, completion, cmask, pmask = mixed_batch()
    e = build("one_step", p_prompt=0.3, n_mc=2000)(Factorised(), prompt, completion, cmask, prompt_mask=pmask,
                                                    generator=torch.Generator().manual_seed(0))
    pm = e.draws["prompt_masks"]  # [B, n, P]
    assert not bool((pm & ~pmask[:, None, :]).any())  # left padding is never masked
    rate = pm.sum() / (pmask.sum() * 2000)
    assert abs(float(rate) - 0.3) < 0.02


def test_llada_stratified_counts_by_hand():
    """ML-GSAI/LLaDA eval_llada.py `_forward_process`: l_i = ((round(k + i·L/g) − 1) mod L) + 1."""
    from harness.estimators.mc_elbo import stratified_counts

    L4, L5 = torch.tensor([[4.0]]), torch.tensor([[5.0]])
    t = torch.tensor([[0.3, 0.9, 0.9, 0.9]])  # k = floor(0.3 · 4) + 1 = 2 (only the group's first t counts)
    assert stratified_counts(t, L4, 4).tolist() == [[2, 3, 4, 1]]
    t = torch.tensor([[0.99, 0.0]])  # k = 5; 5 + 2.5 = 7.5 rounds half to even: 8 -> 3
    assert stratified_counts(t, L5, 2).tolist() == [[5, 3]]
    # each draw's count is marginally uniform on 1..L (k is): over all k, every l appears once per i
    ks = (torch.arange(5, dtype=torch.float64)[:, None] + 0.5) / 5  # one t per k = 1..5
    grid = stratified_counts(ks.expand(5, 3).contiguous(), L5.expand(5, 1), 3)
    assert all(sorted(grid[:, i].tolist()) == [1, 2, 3, 4, 5] for i in range(3))


def test_stratified_counts_cover_every_stratum():
    den, completion, _ = factorised_row()
    e = run(build("complementary_elbo", n_mc=NS), den, completion, 16)
    # n_mc = L strata of s: sample i has l = i + 1 exactly.
    assert torch.equal(e.draws["count"], torch.arange(1, NS + 1, dtype=torch.float64).expand(16, -1))
    assert torch.equal(e.draws["masks"].sum(-1).double(), e.draws["count"])


def test_quadrature_count_masks_exactly_k_per_node():
    prompt, completion, cmask, pmask = mixed_batch()
    e = build("quadrature_elbo", n_nodes=3, k_masks=2)(Factorised(), prompt, completion, cmask, prompt_mask=pmask,
                                                       generator=torch.Generator().manual_seed(0))
    t, w = gauss_legendre(3)
    k = torch.floor(t[None, :] * cmask.sum(1, keepdim=True)).clamp_min(1).repeat_interleave(2, 1)  # [B, 6]
    assert torch.equal(e.draws["masks"].sum(-1).double(), k)  # node 0.113 with L_b = 1..6: max(1, ⌊tL⌋)
    torch.testing.assert_close(e.draws["weight"][0], (w / (2 * t)).repeat_interleave(2))


# -- (f) registry and validation ----------------------------------------------------------------
def test_registry_lists_all_masked_estimators():
    names = ESTIMATORS.names()
    assert set(NAMES) <= set(names)
    for name in NAMES:
        est = ESTIMATORS.build(name)
        assert isinstance(est.metric, str) and est.nfe_for_batch(3) > 0


def test_defaults_follow_the_papers():
    assert build("one_step").p_prompt == 0.15
    c = build("coupled")
    assert (c.t_low, c.t_high, c.include_full, c.scale, c.nfe_for_batch(1)) == (0.0, 1.0, True, "paper", 3)
    assert build("coupled", include_full=False).nfe_for_batch(2) == 4
    assert build("quadrature_elbo").nfe_for_batch(1) == 2
    assert build("complementary_elbo", n_mc=2).nfe_for_batch(5) == 20
    assert build("uni_elbo").nfe_for_batch(4) == 4


@pytest.mark.parametrize("name, params", [
    ("one_step", {"p_prompt": 1.5}), ("one_step", {"n_mc": 0}),
    ("coupled", {"n_mc": 0}), ("coupled", {"t_low": 0.8, "t_high": 0.2}), ("coupled", {"t_high": 1.5}),
    ("uni_elbo", {"iteration": 2, "n_iterations": 2}), ("uni_elbo", {"n_iterations": 0}),
    ("quadrature_elbo", {"n_nodes": 0}), ("quadrature_elbo", {"k_masks": 0}),
    ("complementary_elbo", {"n_mc": 0}), ("complementary_elbo", {"max_tokens": 0}),
])
def test_invalid_parameters_are_rejected(name, params):
    with pytest.raises(ValueError):
        ESTIMATORS.get(name)(**params)
