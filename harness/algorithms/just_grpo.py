"""`just_grpo`: plain GRPO on a diffusion LM decoded left to right, where the likelihood is exact (JustGRPO).

Source: LeapLabTHU/JustGRPO grpo.py `logprob_loss` and `compute_group_advantages`, train.py `train`.
The policy is the masked denoiser run autoregressively (block length 1), whose likelihood is the
chain rule over positions (harness/estimators/left_to_right.py):

  ℓ_it   = log p(o_it | c, o_i,<t, masked future)              t = 1..T, the whole canvas of T
  A_i    = (r_i − mean_g r) / (std_g r + 1e-4)                  (unbiased std: the harness's "zscore")
  ρ_it   = exp(ℓ_θ,it − ℓ_old,it)                               (reference: exp(ℓ − ℓ.detach()), μ = 1)
  loss_g = Σ_{i∈g} Σ_t −min(ρ_it A_i, clip(ρ_it, 1−ε, 1+ε) A_i) / (T · (n_valid,g + 1e-5))

with ε = 0.2, no KL and no π_ref, and n_valid,g the number of rows of the group with A_i ≠ 0 (the
reference's `valid_samples`, which also sums over the repeat_times chunks of one prompt). Each
reference micro-batch is one prompt's group of num_generations × repeat_times = 16 rows
(batch_size_per_device 1): `micro_batch` 1 group, and the loop averages the groups' losses.
Kept differences: the reference SUMS the groups' gradients over its 8 accumulation steps (a
constant factor 8 on the gradient, which Adam all but ignores but the gradient-norm clip does
not) and, across devices, divides by the device-mean of n_valid; the harness takes the mean over
groups. With μ > 1 inner iterations the ratio is to π_old (the reference runs μ = 1, ratio 1).
Rollouts (`rollout="left_to_right"`, default): the study's sampler with blocks of one token, so
one token is decoded per step in position order, as the reference's `sample` calls generate with
block_length 1 (with one step per block the rollout NFE is unchanged); the likelihood is then the
exact likelihood of the rollouts. `rollout="study"` keeps the study's sampler as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from harness.algorithms.base import Algorithm
from harness.algorithms.grpo import clipped_surrogate
from harness.models.block_attention import block_size_of
from harness.registry import ALGORITHMS
from harness.types import HarnessError


def just_grpo_loss(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                   eps: float, length: int):
    """[B, T] ℓ_θ, [B, T] ℓ_old, [B] advantages, [B, T] bool counted tokens, canvas length T -> (loss, metrics).
    Σ_i Σ_t −min(ρA, clip(ρ)A) / (T · (#{i: A_i ≠ 0} + 1e-5)) over this micro-batch's rows."""
    ratio = torch.exp(logp - old)  # [B, T]
    sur, clipped = clipped_surrogate(ratio, adv[:, None].to(logp.dtype), eps, eps)  # [B, T]
    valid = float((adv != 0).sum())
    loss = -(sur * mask).sum() / (length * (valid + 1e-5))
    m = mask.sum().clamp_min(1)
    return loss, {"clip_frac": float((clipped & mask).sum() / m), "kl": None,
                  "ratio": float((ratio.detach() * mask).sum() / m), "valid_rows": valid}


@ALGORITHMS.register("just_grpo")
@dataclass(frozen=True, kw_only=True)
class JustGRPO(Algorithm):
    """JustGRPO: token-clipped GRPO (ε 0.2, no KL) on the exact left-to-right likelihood of the whole canvas.

    The control every diffusion-specific objective should beat (its likelihood is exact, not an
    estimate). Source: LeapLabTHU/JustGRPO grpo.py `logprob_loss`."""

    estimator: str = "left_to_right"
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "zscore"
    eps: float = 0.2
    score_over: Literal["canvas", "completion"] = "canvas"
    # "left_to_right": roll out with the study's sampler at block_length 1, so the likelihood is exact for
    # the rollouts (the reference's generate(..., block_length=1)); "study": the study's sampler unchanged
    rollout: Literal["left_to_right", "study"] = "left_to_right"
    # train.py: batch_size_per_device 1 prompt × (num_generations 8 × repeat_times 2) rows, the loss
    # normalised by that group's count of rows with a nonzero advantage: one group per micro-batch
    micro_batch: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")

    @property
    def needs_old(self) -> bool:
        return True

    def rollout_sampler(self, sampler, policy=None):
        if self.rollout == "study":
            return sampler
        size = block_size_of(policy)
        if size is not None and size > 1:
            raise HarnessError(f"just_grpo rolls out left to right, one token per block of one; this policy is a "
                               f"block-diffusion model whose blocks are fixed at block_size {size}, so that order is "
                               "not available: run just_grpo on a full-attention model, or set rollout: study")
        # the study's sampler and knobs with blocks of one token: one token per step in position order
        return {**sampler, "params": {**(sampler.get("params") or {}), "block_length": 1}}

    def loss_tokens(self, rollout):
        if self.score_over == "completion":
            return rollout["loss_mask"]
        return torch.ones_like(rollout["loss_mask"])  # every canvas position, as the reference loops over gen_length

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration, n_iterations):
        scored = torch.ones_like(completion_mask) if self.score_over == "canvas" else completion_mask
        return super().terms(denoiser, prompt, prompt_mask, completion, scored, generator=generator, draws=draws,
                             iteration=iteration, n_iterations=n_iterations)

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        return just_grpo_loss(policy_terms.per_token, old_terms.per_token.detach(), advantages, batch["mask"],
                              eps=self.eps, length=batch["length"])
