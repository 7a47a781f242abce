"""d2 (kuleshov-group/d2): `d2_step_merge`, d1's GRPO on d2-StepMerge's trajectory likelihood, and
`d2_any_order`, d1's GRPO on d2-AnyOrder's exact any-order causal likelihood (class D2AnyOrder below).

Source: kuleshov-group/d2 diffu-grpo/diffu_grpo_trainer.py d2StepMergeTrainer.compute_loss with
bash_scripts/train.yaml (ε 0.5, β 0.04, p_mask_prompt 0.15, num_generations 6 =
per_device_train_batch_size 6) and gsm8k_d2stepmerge.sh (N 8, diffusion_steps 128, μ 12,
gradient_accumulation_steps 16). Each reference micro-step scores one segment n of the group's
rollouts (harness/estimators/step_merge.py) and backpropagates

  loss_n = Σ_{i,k ∈ seg n} (−min(ρ_ik A_i, clip(ρ_ik) A_i) + β k3_ik) · N / Σ_i |o_i|

HF gradient accumulation averaging the micro-steps; over the N segments of a group that is
(1/N) Σ_n loss_n = Σ_{i,k} (...) / Σ_i |o_i|, d1's token loss Σ/Σmask over the group with each
token's log-prob read from its own segment's start state. The harness scores every segment in one
pass (the same loss at fixed θ), one group per micro-batch. ρ and k3 use π_old / π_ref on the same
segment states and prompt masks (the reference scores them with the iteration's mask seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from harness.algorithms.grpo import GRPO
from harness.registry import ALGORITHMS


@ALGORITHMS.register("d2_step_merge")
@dataclass(frozen=True, kw_only=True)
class D2StepMerge(GRPO):
    """d2-StepMerge: d1's token-clipped GRPO (ε 0.5, β 0.04 k3, Σ/Σmask) on each token's segment-start likelihood.

    Source: kuleshov-group/d2 diffu-grpo/diffu_grpo_trainer.py d2StepMergeTrainer.compute_loss."""

    estimator: str = "step_merge"
    estimator_params: dict = field(default_factory=lambda: {"n_segments": 8})
    micro_batch: float = 1.0  # train.yaml: per_device_train_batch_size 6 = num_generations 6

    uses_commit_steps: ClassVar[bool] = True  # the rollout's recorded decoding steps feed the estimator

    def __post_init__(self):
        super().__post_init__()
        if self.estimator != "step_merge":
            raise ValueError(f"d2_step_merge scores decoding segments: estimator must be step_merge, "
                             f"got {self.estimator!r}")


@ALGORITHMS.register("d2_any_order")
@dataclass(frozen=True, kw_only=True)
class D2AnyOrder(GRPO):
    """d2-AnyOrder: d1's token-clipped GRPO (ε 0.5, β 0.04 k3, Σ/Σmask) on the exact any-order causal likelihood.

    Source: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py d2AnyOrderTrainer.compute_loss, with
    bash_scripts/train.yaml (ε 0.5, β 0.04, block_length 32, remasking low_confidence,
    gradient_accumulation_steps 2) and anyorder_gsm8k_d2anyorder.sh (num_iterations μ 2, num_generations 8 =
    per_device_train_batch_size 8, max_completion_length 256, learning_rate 1e-6). Each micro-step is one
    group: loss = Σ_{i,k} (−min(ρ_ik A_i, clip(ρ_ik) A_i) + β k3_ik) · mask / (Σ mask + 1e-6), ρ and k3 on
    `any_order` log-probs (harness/estimators/any_order.py: one pass over [prompt ; clean ; masks] along
    the rollout's decoding order, which π_old and π_ref score in the same order).

    Rollouts come from the `any_order` sampler (the reference's `generate`): the study's sampler is
    replaced by it unless it already is, with the study sampler's temperature when it sets one (else
    the reference's 0.9, diffu_grpo_config.py) and block_length 32. Needs a policy trained for the
    layout (`requires`, checked at plan time: the likelihood is the model's only then)."""

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
        if sampler.get("name") == "any_order":
            return sampler
        temperature = (sampler.get("params") or {}).get("temperature", self.rollout_temperature)
        return {"name": "any_order", "params": {"block_length": self.rollout_block_length,
                                                "temperature": temperature}}
