"""coupled_grpo conforms to DiffuCoder's coupled-GRPO (apple/ml-diffucoder, src/open_r1/coupled_grpo.py,
its trainer's compute_loss and coupled `_get_per_token_logps`; that file is not in the search index:
its run config recipes/config_coupled_code.yaml was read (ε = 0.5, β = 0.01, scale_rewards false),
and the equations are the paper's (arXiv 2506.20639, Eq. for the coupled log-prob) and the
`coupled` method of Gen-Verse/dLLM-RL train/rl_llada.py (read in pixeli99/dLLM-RL), which draws
t ~ U(lower_p, upper_p) and masks a pass and its complement). Loss: d1's token-level objective on the
coupled per-token log-probs with leave-one-out advantages.

Likelihood terms (per scored token k, one pair, λ = 1 with the full-mask pass):
    ℓ_k = ½·[ log p(o_k | all masked) + (1/t)·log p(o_k | x_t) if k ∈ M_t else (1/(1−t))·log p(o_k | x_{M_t^c}) ]
with t ~ U(0.2, 0.8) (the code's range). Difference kept and documented in coupled.py: the harness
never masks the post-EOS padding in these passes (the DiffuCoder code masks and scores it)."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    G,
    assert_conforms,
    fixture,
    harness_loss,
    target_logp,
    toy_rollout,
)
from tests.algorithms.conformance.refs import d1_loss, loo_advantages


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_reference(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("coupled_grpo")
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, loo_advantages(fx["rewards"], G), rtol=0, atol=1e-12)
    loss = harness_loss(algo, fx, adv)
    assert_conforms(loss, d1_loss(fx["logp"], fx["old"], fx["ref"], adv, cm, eps=0.5, beta=0.01), fx["logp"])


@pytest.mark.parametrize("seed", [0, 1])
def test_coupled_terms_match_the_reference_equation(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed)
    est = ESTIMATORS.build("coupled", ALGORITHMS.build("coupled_grpo").estimator_params)
    with torch.no_grad():
        e = est(den, prompt, completion, cmask, generator=torch.Generator().manual_seed(seed), prompt_mask=pmask)
    t = e.draws["t"][:, 0]  # [n]
    assert bool(((t >= 0.2) & (t <= 0.8)).all())
    mask1 = e.draws["masks"][:, 0]  # [n, L] first pass
    mask2 = cmask & ~mask1  # its complement among the completion tokens
    lp_full = target_logp(den, prompt, torch.where(cmask, den.mask_id, completion), completion)
    lp1 = target_logp(den, prompt, torch.where(mask1, den.mask_id, completion), completion)
    lp2 = target_logp(den, prompt, torch.where(mask2, den.mask_id, completion), completion)
    ref = (lp_full + torch.where(mask1, lp1 / t[:, None], lp2 / (1 - t[:, None]))) / 2 * cmask
    torch.testing.assert_close(e.per_token, ref, rtol=0, atol=1e-10)


def test_paper_t_range_is_the_named_option():
    algo = ALGORITHMS.build("coupled_grpo", {"estimator_params": {"t_low": 0.0, "t_high": 1.0}})
    est = ESTIMATORS.build("coupled", algo.estimator_params)
    assert (est.t_low, est.t_high) == (0.0, 1.0)
