"""wd1 conforms to xiaohangt/wd1 wd1/trainers/rev_grpo_trainer.py RevDiffuGRPOTrainer.compute_loss:
loss = −Σ_i softmax(A)_i·log π(o_i) + Σ_i softmax(−A)_i·log π(o_i), the softmax over the
micro-batch's rows (dim 0), log π(o_i) = Σ over the completion (to its EOS) of the one-step
per-token log-probs (d1's forward_process: the whole canvas masked, prompt p_mask_prompt);
A = r − group mean. Micro-batches are averaged as gradient accumulation does."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import N_GROUPS, SEEDS, G, assert_conforms, batch, estimate, fixture
from tests.algorithms.conformance.refs import group_mean_advantages, wd1_loss


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_wd1(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("wd1")
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, group_mean_advantages(fx["rewards"], G), rtol=0, atol=1e-12)
    loss, _ = algo.loss(batch(fx, cm), estimate(fx["logp"], cm), None, None, adv)
    assert_conforms(loss, wd1_loss(fx["logp"], adv, cm), fx["logp"])


def test_two_micro_batches_average_like_gradient_accumulation():
    fx = fixture(1)
    algo = ALGORITHMS.build("wd1")
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    total = 0
    for rows in (slice(0, G), slice(G, 2 * G)):
        b = {**batch(fx, cm[rows]), "group": fx["group"][rows] - fx["group"][rows].min()}
        total = total + algo.loss(b, estimate(fx["logp"][rows], cm[rows]), None, None, adv[rows])[0]
    ref = sum(wd1_loss(fx["logp"][r], adv[r], cm[r]) for r in (slice(0, G), slice(G, 2 * G))) / 2
    assert_conforms(total, ref, fx["logp"])


def test_per_group_softmax_is_the_named_option():
    fx = fixture(2)
    algo = ALGORITHMS.build("wd1", {"softmax_over": "group"})
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss, _ = algo.loss(batch(fx, cm), estimate(fx["logp"], cm), None, None, adv)
    ref = sum(wd1_loss(fx["logp"][g * G:(g + 1) * G], adv[g * G:(g + 1) * G], cm[g * G:(g + 1) * G])
              for g in range(N_GROUPS)) / N_GROUPS
    assert_conforms(loss, ref, fx["logp"])
