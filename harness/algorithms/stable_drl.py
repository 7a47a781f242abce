"""`stable_drl`: SPG with self-normalised, unconditionally clipped importance weights (StableDRL).

Source: JianyuanZhong/StableDRL networks/llada_svpo.py `compute_loss_spg` (use_snis) and
`_get_per_seq_logps_spg`, training/training_loop_spg_snis.py `training_loop`, configs/*_spg_snis.yaml
(num_mc_samples 2, spg_beta 1.5, spg_omega 0.5, ais_clip_iw 5, batch_size 1 prompt × 16 rows).
With ē_i = ELBO_i / |o_i| the per-token-mean block ELBO of row i (SPG's bound, block_elbo) and
b_i its sandwiched bound (ē_i for A_i > 0, the per-token-mean mix for A_i <= 0):

  log w_i = min(ē_θ,i − ē_old,i, log c)             clipped whatever the sign of A_i (c = 5)
  ŵ_i     = exp(log w_i) / Σ_{j∈mb} exp(log w_j)     self-normalised over the micro-batch's rows
  loss_mb = −Σ_{i∈mb} ŵ_i · A_i · b_i                 (the weights detached; gradients through b_i)

A = r − group mean; one group per micro-batch (the reference's micro-batch is one prompt's 16
rows), the loop averaging the micro-batches as the reference's loss / grad_accumulation does.
Unlike PPO's clip, which only bounds the ratio on the side the advantage's sign makes harmful,
the weight is capped from above for every row, and the normalisation by the sum of the clipped
weights keeps the update's scale that of the unweighted mean.
Kept difference: the reference scores ELBO_old once at rollout time on masks of its own (a seed
drawn there) and ELBO_θ on each iteration's fresh masks, so even at θ = θ_old its weights are
noisy; the harness scores π_old on the policy's own masks (the loop's replayed draws), so at the
first inner iteration the weights are exactly 1/B and later ones carry no mask noise. The block
model form (block-wise ELBOs on a block-diffusion model) is not added.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from harness.algorithms.spg import SPG
from harness.registry import ALGORITHMS


def snis_weights(log_ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """[B] log importance ratios -> [B] softmax(min(log ρ, log clip)) over the rows (detached)."""
    return torch.softmax(log_ratio.detach().clamp(max=math.log(clip)), dim=0)


def stable_drl_loss(bound: torch.Tensor, log_ratio: torch.Tensor, adv: torch.Tensor, clip: float):
    """[B] per-token-mean bounds b_i, [B] log ρ_i, [B] advantages, cap c -> (−Σ ŵ A b, metrics)."""
    w = snis_weights(log_ratio, clip).to(bound.dtype)
    loss = -(w * adv.to(bound.dtype) * bound).sum()
    iw = torch.exp(log_ratio.detach())
    return loss, {"iw_mean": float(iw.mean()), "iw_max": float(iw.max()),
                  "clip_frac": float((log_ratio.detach() > math.log(clip)).double().mean())}


@ALGORITHMS.register("stable_drl")
@dataclass(frozen=True, kw_only=True)
class StableDRL(SPG):
    """StableDRL: SPG's sandwiched bounds under self-normalised, unconditionally clipped weights (cap 5).

    Source: JianyuanZhong/StableDRL networks/llada_svpo.py `compute_loss_spg` with use_snis."""

    estimator: str = "mix"
    estimator_params: dict = field(default_factory=lambda: {"m": 2})
    negative: Literal["eubo", "mix"] = "mix"
    clip: float = 5.0  # ais_clip_iw: the cap on each importance weight before normalisation
    # configs/*_spg_snis.yaml: data batch_size 1 prompt × num_generations 8 × repeat_times 2 rows per
    # compute_loss_spg call, whose softmax runs over those rows: one group per micro-batch
    micro_batch: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.clip > 0:
            raise ValueError(f"clip (the cap on an importance weight) must be > 0, got {self.clip}")
        if self.norm != "token":  # spg's field: the self-normalised weights replace its normaliser
            raise ValueError(f"stable_drl normalises by its weights; spg's norm does not apply (got {self.norm!r})")

    @property
    def needs_old(self) -> bool:
        return True

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        n = batch["mask"].sum(1).clamp_min(1).to(policy_terms.sequence.dtype)  # [B] |o_i|
        lower, upper = policy_terms.sequence / n, policy_terms.upper / n  # per-token means
        bound = torch.where(advantages > 0, lower, upper)
        log_ratio = (policy_terms.sequence - old_terms.sequence) / n  # ē_θ − ē_old
        return stable_drl_loss(bound, log_ratio, advantages, self.clip)
