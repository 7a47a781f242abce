"""diffu_grpo conforms to d1's diffu-GRPO (dllm-reasoning/d1, diffu-grpo/diffu_grpo_trainer.py,
DiffuGRPOTrainer.compute_loss and forward_process; read in the verbatim copy
xiaohangt/wd1 wd1/trainers/diffu_grpo_trainer.py because the d1 trainer file is not in the search
index). Loss: token ratio, clip ε = 0.5, β = 0.04 k3 KL to π_ref, Σ/Σmask over the batch; advantages
r − group mean. Likelihood terms: every completion position masked (post-EOS padding included),
prompt tokens masked with p_mask_prompt, log p read at the completion targets."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    G,
    assert_conforms,
    batch,
    estimate,
    fixture,
    harness_loss,
    target_logp,
    toy_rollout,
)
from tests.algorithms.conformance.refs import d1_loss, group_mean_advantages


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_d1(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("diffu_grpo")
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, group_mean_advantages(fx["rewards"], G), rtol=0, atol=1e-12)
    loss = harness_loss(algo, fx, adv)
    ref = d1_loss(fx["logp"], fx["old"], fx["ref"], adv, cm, eps=0.5, beta=0.04)
    assert_conforms(loss, ref, fx["logp"])


def test_sequence_normalisation_is_the_named_option():
    fx = fixture(0)
    cm = fx["completion_mask"]
    algo = ALGORITHMS.build("diffu_grpo", {"norm": "sequence", "beta": 0.0})
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss = harness_loss(algo, fx, adv, with_ref=False)
    ratio = torch.exp(fx["logp"] - fx["old"])
    sur = torch.min(ratio * adv[:, None], ratio.clamp(0.5, 1.5) * adv[:, None])
    ref = -((sur * cm).sum(1) / cm.sum(1)).mean()  # GRPO paper: mean over sequences of token means
    assert_conforms(loss, ref, fx["logp"])
    reference = ALGORITHMS.build("diffu_grpo", {"beta": 0.0}).loss(
        batch(fx, cm), estimate(fx["logp"], cm), estimate(fx["old"], cm), None, adv)[0]
    assert abs(float(reference.detach()) - float(loss.detach())) > 1e-3  # the two normalisations really differ here


@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_terms_match_d1_forward_process(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed)
    est = ESTIMATORS.build("one_step", ALGORITHMS.build("diffu_grpo").estimator_params)
    with torch.no_grad():
        e = est(den, prompt, completion, cmask, generator=torch.Generator().manual_seed(seed), prompt_mask=pmask)
    is_mask_prompt = e.draws["prompt_masks"][:, 0]  # [n, P] the draw the reference makes with its seed
    noisy_prompt = torch.where(is_mask_prompt, den.mask_id, prompt)
    noisy_completion = torch.full_like(completion, den.mask_id)  # is_mask_completion = ~prompt_index
    ref = target_logp(den, noisy_prompt, noisy_completion, completion) * cmask
    torch.testing.assert_close(e.per_token, ref, rtol=0, atol=1e-10)
    assert bool((~cmask).any())  # the fixture has post-EOS padding, masked by the reference too


def test_clean_padding_is_the_named_option():
    den, prompt, pmask, completion, cmask = toy_rollout(0)
    est = ESTIMATORS.build("one_step", {"p_prompt": 0.0, "mask_padding": False})
    with torch.no_grad():
        e = est(den, prompt, completion, cmask, generator=None, prompt_mask=pmask)
    noised = torch.where(cmask, den.mask_id, completion)  # padding left clean: leaks the length
    torch.testing.assert_close(e.per_token, target_logp(den, prompt, noised, completion) * cmask, rtol=0, atol=1e-10)
