"""vrpo against the LLaDA 1.5 paper (arXiv 2505.19223; no VRPO training code is public, so the
reference restates the paper's equations, §3 eq. DPO-on-ELBO and Algorithm 1):
  loss(y_w, y_l) = −log σ(β[(B̂_θ(y_w) − B̂_ref(y_w)) − (B̂_θ(y_l) − B̂_ref(y_l))]),
with B̂ the ELBO estimate at n timesteps, one mask each, whose timesteps and masks are shared by
π_θ and π_ref (antithetic sampling). Pairs are formed online inside each group (module docstring
of harness/algorithms/vrpo.py) and the loss is averaged over pairs, then over groups."""
from __future__ import annotations

import math

import pytest
import torch

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    B,
    G,
    assert_conforms,
    estimate,
    fixture,
    micro_harness_loss,
    toy_rollout,
)


def ref_group_loss(elbo, elbo_ref, rewards, beta=0.1):
    """Mean over every (w, l) with r_w > r_l of −log σ(β[(B_θ(w) − B_ref(w)) − (B_θ(l) − B_ref(l))])."""
    losses = []
    for w in range(len(rewards)):
        for lo in range(len(rewards)):
            if rewards[w] > rewards[lo]:
                z = beta * ((elbo[w] - elbo_ref[w]) - (elbo[lo] - elbo_ref[lo]))
                losses.append(-torch.log(1 / (1 + torch.exp(-z))))
    return sum(losses) / len(losses) if losses else 0 * elbo.sum()


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_dpo_on_elbos(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("vrpo")
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    terms = (estimate(fx["logp"], cm), None, estimate(fx["ref"], cm))
    loss, parts = micro_harness_loss(algo, fx, adv, terms, cm)
    assert [p.tolist() for p in parts] == [list(range(g * G, (g + 1) * G)) for g in range(B // G)]
    s, s_ref = (fx["logp"] * cm).sum(1), (fx["ref"] * cm).sum(1)
    ref = sum(ref_group_loss(s[p], s_ref[p], fx["rewards"][p]) for p in parts) / len(parts)
    assert_conforms(loss, ref, fx["logp"])


def test_extremes_pairs_the_best_with_the_worst():
    fx = fixture(4)
    algo = ALGORITHMS.build("vrpo", {"pairs": "extremes", "beta": 0.5})
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    terms = (estimate(fx["logp"], cm), None, estimate(fx["ref"], cm))
    loss, parts = micro_harness_loss(algo, fx, adv, terms, cm)
    s, s_ref = (fx["logp"] * cm).sum(1), (fx["ref"] * cm).sum(1)
    ref = 0
    for p in parts:
        r = fx["rewards"][p].tolist()
        w, lo = p[r.index(max(r))], p[r.index(min(r))]  # first best, first worst in row order
        ref = ref - torch.log(torch.sigmoid(0.5 * ((s[w] - s_ref[w]) - (s[lo] - s_ref[lo])))) / len(parts)
    assert_conforms(loss, ref, fx["logp"])


def test_a_group_without_spread_contributes_nothing_but_counts():
    fx = fixture(1)
    algo = ALGORITHMS.build("vrpo")
    cm = fx["completion_mask"]
    rewards = fx["rewards"].clone()
    rewards[G:] = 1.0  # the second group has no spread
    terms = (estimate(fx["logp"], cm), None, estimate(fx["ref"], cm))
    loss, _ = micro_harness_loss(algo, fx, algo.advantages(rewards, fx["group"]), terms, cm)
    s, s_ref = (fx["logp"] * cm).sum(1), (fx["ref"] * cm).sum(1)
    assert_conforms(loss, ref_group_loss(s[:G], s_ref[:G], rewards[:G]) / 2, fx["logp"])


def test_shared_draws_make_the_policy_reference_difference_exact_at_the_start():
    """Antithetic sampling: π_ref replays π_θ's timesteps and masks, so at θ = θ_ref every
    Δ = B̂_θ − B̂_ref is exactly 0 (the DPO loss is log 2), while independent draws leave noise."""
    den, prompt, pmask, completion, cmask = toy_rollout(seed=2)
    est = ESTIMATORS.build(*(lambda a: (a.estimator, a.estimator_params))(ALGORITHMS.build("vrpo")))
    assert est.n_mc == 8 and est.t_law == "iid"  # n = 8 timesteps, one mask each (the paper's allocation)
    g = [torch.Generator().manual_seed(10 + i) for i in range(len(prompt))]
    pol = est(den, prompt, completion, cmask, generator=g, prompt_mask=pmask)
    shared = est(den, prompt, completion, cmask, generator=None, prompt_mask=pmask, draws=pol.draws)
    fresh = est(den, prompt, completion, cmask, prompt_mask=pmask,
                generator=[torch.Generator().manual_seed(50 + i) for i in range(len(prompt))])
    assert torch.equal(pol.sequence, shared.sequence)
    assert float((pol.sequence - fresh.sequence).detach().abs().max()) > 1e-3
    assert pol.draws["masks"].shape[1] == 8 and not math.isnan(float(pol.sequence.sum()))
