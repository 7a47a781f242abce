"""grpo (generic) conforms to the GRPO objective the d1 family runs (dllm-reasoning/d1
diffu-grpo/diffu_grpo_trainer.py DiffuGRPOTrainer.compute_loss, read in its copy xiaohangt/wd1
wd1/trainers/diffu_grpo_trainer.py): token ratio, PPO clip ε, β·k3 to π_ref, Σ/Σmask; A = r − mean.
The sequence-ratio and GSPO-ratio options are checked in test_gdpo.py / test_espo.py / test_igpo.py."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import SEEDS, assert_conforms, fixture, harness_loss
from tests.algorithms.conformance.refs import d1_loss


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps,beta", [(0.5, 0.04), (0.2, 0.0)])
def test_loss_and_gradient_match_d1(seed, eps, beta):
    fx = fixture(seed)
    algo = ALGORITHMS.build("grpo", {"eps_low": eps, "eps_high": eps, "beta": beta})
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss = harness_loss(algo, fx, adv)
    assert_conforms(loss, d1_loss(fx["logp"], fx["old"], fx["ref"], adv, cm, eps=eps, beta=beta), fx["logp"])


def test_constant_normalisation_is_dr_grpo():
    """Dr. GRPO's option: Σ_ik x_ik / (N·T)."""
    fx = fixture(1)
    cm = fx["completion_mask"]
    algo = ALGORITHMS.build("grpo", {"norm": "constant", "beta": 0.0})
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss = harness_loss(algo, fx, adv, with_ref=False)
    ratio = torch.exp(fx["logp"] - fx["old"])
    sur = torch.min(ratio * adv[:, None], ratio.clamp(0.5, 1.5) * adv[:, None])
    assert_conforms(loss, -(sur * cm).sum() / cm.numel(), fx["logp"])
