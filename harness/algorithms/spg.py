"""`spg`: sandwiched policy gradient (SPG, arXiv 2510.09541; docs/methods.md §2).

    loss = −(1/Z) Σ_i A_i · B_i,   B_i = ELBO_i (block_elbo) if A_i >= 0, else the upper bound
                                         (EUBO, or mix = ω·EUBO + (1−ω)·ELBO) if A_i < 0
Z = Σ_i |o_i| (`norm="token"`, default: facebookresearch/SPG spg/spg_trainer.py
SPGTrainer.compute_loss weights each per-token-mean bound by |o_i| and divides by Σ|o_i|) or N
(`norm="sequence"`).
A plain policy gradient on bounds (no ratio, no π_old, no π_ref): raising a lower bound of log π
for good completions, lowering an upper bound for bad ones. Both bounds come from ONE scoring pass
on the same block-wise masks (m copies per sequence, NFE m): `terms` scores once and combines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS


@dataclass(frozen=True)
class Bounds:
    """SPG's two bounds of the same rows on the same draws."""

    per_token: torch.Tensor  # [B, L] the ELBO's per-token terms
    sequence: torch.Tensor  # [B] ELBO
    upper: torch.Tensor  # [B] EUBO or mix
    draws: dict
    n: int


def spg_loss(lower: torch.Tensor, upper: torch.Tensor, adv: torch.Tensor, n_seq: int):
    """[B] lower bound, [B] upper bound, [B] advantages, normaliser Z (N or Σ|o|) -> (loss, metrics)."""
    bound = torch.where(adv >= 0, lower, upper)  # [B]
    loss = -(adv.to(bound.dtype) * bound).sum() / n_seq
    return loss, {"bound_gap": float((upper - lower).detach().mean())}


@ALGORITHMS.register("spg")
@dataclass(frozen=True, kw_only=True)
class SPG(Algorithm):
    """SPG: policy gradient on block_elbo for A >= 0 and on EUBO or mix (ω=0.5) for A < 0; m=2 masks."""

    estimator: str = "mix"
    estimator_params: dict = field(default_factory=lambda: {"m": 2})
    negative: Literal["eubo", "mix"] = "mix"
    norm: Literal["token", "sequence"] = "token"
    # spg/slurm_scripts/train.yaml: per_device_train_batch_size 6 = num_generations 6 (Σ|o| per micro-batch)
    micro_batch: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.estimator not in ("block_elbo", "eubo", "mix"):
            raise ValueError(f"spg scores SPG's bounds: estimator must be block_elbo, eubo or mix, "
                             f"got {self.estimator!r}")

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration, n_iterations):
        est = self.build_estimator(iteration, n_iterations)
        if draws is None:
            draws = est.draw(prompt, completion_mask, prompt_mask, generator)
        logp, masks, t_hat, n = est.score(denoiser, prompt, completion, completion_mask, prompt_mask, draws)
        lower = est.elbo_terms(logp, masks, t_hat, n)  # [B, L]
        eubo = est.eubo_terms(logp, masks, t_hat, n, getattr(est, "beta", 1.5)).sum(1)  # [B]
        omega = getattr(est, "omega", 0.5)
        upper = eubo if self.negative == "eubo" else omega * eubo + (1 - omega) * lower.sum(1)
        return Bounds(per_token=lower, sequence=lower.sum(1), upper=upper, draws=draws, n=est.m)

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        z = batch["n_tok"] if self.norm == "token" else batch["n_seq"]
        return spg_loss(policy_terms.sequence, policy_terms.upper, advantages, z)
