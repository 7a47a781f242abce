"""`d2_any_order`: d1's GRPO on d2-AnyOrder's exact any-order causal likelihood (d2, kuleshov-group/d2).

Source: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py d2AnyOrderTrainer.compute_loss with
bash_scripts/train.yaml (ε 0.5, β 0.04, block_length 32, remasking low_confidence,
gradient_accumulation_steps 2) and anyorder_gsm8k_d2anyorder.sh (num_iterations μ 2, num_generations 8 =
per_device_train_batch_size 8, max_completion_length 256, learning_rate 1e-6). Each reference micro-step
is one group of 8 rollouts and backpropagates

  loss = Σ_{i,k} (−min(ρ_ik A_i, clip(ρ_ik, 1 − ε, 1 + ε) A_i) + β k3_ik) · mask_ik / (Σ mask + 1e-6)

with ρ and k3 on the `any_order` log-probs (harness/estimators/any_order.py: one pass over
[prompt ; clean ; L masks] along the rollout's decoding order, each token given the prompt and the tokens
of earlier steps), which π_old and π_ref score in the same order; gradient accumulation averages the
micro-steps. The harness runs one group per micro-batch (`micro_batch` 1.0) with d1's token loss
(the 1e-6 aside).

Rollouts come from the `any_order` sampler (the reference's `generate`): the study's sampler is replaced
by it unless it already is one, keeping the study sampler's temperature when it sets one (else the
reference's 0.9, diffu_grpo_config.py) with block_length 32. The likelihood is the model's own only
for a policy trained for the layout, so the algorithm `requires` the `any_order_causal` capability
(checked at plan time; `tiny-addition-c16-anyorder` declares it). An rl study on such a policy should
evaluate it with the decoder it is trained for (`options.eval_sampler: {name: any_order}`,
suites/any_order.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from harness.algorithms.grpo import GRPO
from harness.models.block_attention import block_size_of
from harness.registry import ALGORITHMS
from harness.types import HarnessError


@ALGORITHMS.register("d2_any_order")
@dataclass(frozen=True, kw_only=True)
class D2AnyOrder(GRPO):
    """d2-AnyOrder: d1's token-clipped GRPO (ε 0.5, β 0.04 k3, Σ/Σmask) on the exact any-order causal likelihood.

    Source: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py d2AnyOrderTrainer.compute_loss."""

    estimator: str = "any_order"
    estimator_params: dict = field(default_factory=dict)
    micro_batch: float = 1.0  # per_device_train_batch_size 8 = num_generations 8: one group per micro-step
    rollout_block_length: int = 32  # train.yaml block_length
    rollout_temperature: float = 0.9  # diffu_grpo_config.py temperature (train.yaml does not set it)

    uses_commit_steps: ClassVar[bool] = True  # the rollout's recorded decoding order feeds the estimator
    requires: ClassVar[tuple[str, ...]] = ("logits_pattern", "any_order_causal")  # checked at plan time

    def __post_init__(self):
        super().__post_init__()
        if self.estimator != "any_order":
            raise ValueError(f"d2_any_order scores the any-order causal layout: estimator must be any_order, "
                             f"got {self.estimator!r}")
        if self.rollout_block_length < 2 or self.rollout_temperature < 0:
            raise ValueError(f"need rollout_block_length >= 2 and rollout_temperature >= 0, got "
                             f"{self.rollout_block_length}, {self.rollout_temperature}")

    def rollout_sampler(self, sampler, policy=None):
        size = block_size_of(policy)
        if size is not None:
            raise HarnessError(f"d2_any_order decodes and scores in the any-order causal layout over the whole "
                               f"completion; this policy is a block-diffusion model (block_size {size}), trained "
                               "for another pattern: run it on an any-order causal checkpoint")
        if sampler.get("name") == "any_order":
            return sampler
        temperature = (sampler.get("params") or {}).get("temperature", self.rollout_temperature)
        return {"name": "any_order", "params": {"block_length": self.rollout_block_length,
                                                "temperature": temperature}}
