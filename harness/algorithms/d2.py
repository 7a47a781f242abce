"""`d2_step_merge`: d1's GRPO on d2-StepMerge's trajectory likelihood (d2, kuleshov-group/d2).

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
