"""gdpo conforms to GDPO (arXiv 2510.08554). The authors' repository is NOT in the search index:
the reference is written from the paper's objective as recorded in docs/methods.md §2: sequence ratio
ρ_i = exp(ELBO_θ,i − ELBO_old,i) of the semi-deterministic quadrature ELBO, PPO clip ε = 0.2,
weight 1/|o_i|, β = 0.01 k3 KL on the ELBO difference to π_ref, mean over the N sequences. Its
likelihood: N = 2 Gauss–Legendre nodes t_n on (0, 1), one mask per node with every completion token
masked independently with probability t_n (the paper's masking, unbiased once N >= L/2), value
Σ_n (w_n/t_n) Σ_{k masked} log p(o_k | x_{t_n}). The fixed-count masks are `mask_law="count"`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    assert_conforms,
    fixture,
    harness_loss,
    target_logp,
    toy_rollout,
)
from tests.algorithms.conformance.refs import group_mean_advantages


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_the_paper_objective(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("gdpo")
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, group_mean_advantages(fx["rewards"], 4), rtol=0, atol=1e-12)
    loss = harness_loss(algo, fx, adv)
    s, s_old, s_ref = ((x * cm).sum(1) for x in (fx["logp"], fx["old"], fx["ref"]))
    rho = torch.exp(s - s_old)
    sur = torch.min(rho * adv, torch.clamp(rho, 0.8, 1.2) * adv)
    kl = torch.exp(s_ref - s) - (s_ref - s) - 1
    ref = (-(sur - 0.01 * kl) / cm.sum(1)).mean()
    assert_conforms(loss, ref, fx["logp"])


@pytest.mark.parametrize("seed", [0, 1])
def test_quadrature_terms_use_bernoulli_masks_at_the_nodes(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed)
    est = ESTIMATORS.build("quadrature_elbo", ALGORITHMS.build("gdpo").estimator_params)
    with torch.no_grad():
        e = est(den, prompt, completion, cmask, generator=torch.Generator().manual_seed(seed), prompt_mask=pmask)
    x, w = np.polynomial.legendre.leggauss(2)
    t, w = (x + 1) / 2, w / 2
    masks = e.draws["masks"]  # [n, 2, L]
    assert bool((masks <= cmask[:, None, :]).all())
    ref = torch.zeros(len(prompt), dtype=torch.float64)
    for node in range(2):
        lp = target_logp(den, prompt, torch.where(masks[:, node], den.mask_id, completion), completion)
        ref += w[node] / t[node] * (lp * masks[:, node]).sum(1)
    torch.testing.assert_close(e.sequence, ref, rtol=0, atol=1e-10)
    # Bernoulli, not a fixed count: over many rows the count per node varies
    with torch.no_grad():
        big = est(den, prompt.repeat(50, 1), completion.repeat(50, 1), cmask.repeat(50, 1),
                  generator=torch.Generator().manual_seed(7), prompt_mask=pmask.repeat(50, 1))
    counts = big.draws["masks"][:, 0].sum(1)
    assert len(torch.unique(counts[cmask.repeat(50, 1).sum(1) == int(cmask[0].sum())])) > 1
