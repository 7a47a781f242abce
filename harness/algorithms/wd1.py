"""`wd1`: ratio-free weighted policy optimisation (wd1, arXiv 2507.08838; docs/methods.md §2).

With advantages A (group-mean baseline) and log π(o_i) the policy's one_step sequence value:
  softmax_over="batch" (default; xiaohangt/wd1 wd1/trainers/rev_grpo_trainer.py
  RevDiffuGRPOTrainer.compute_loss: `softmax(advantages, dim=0)` over the micro-batch's rows):
    loss_mb = −Σ_i softmax_mb(A)_i · log π(o_i) + Σ_i softmax_mb(−A)_i · log π(o_i)
    loss = Σ_mb (B_mb/N) · loss_mb   (gradient accumulation's mean over equal micro-batches)
  softmax_over="group" (the paper's per-prompt weights):
    loss = (1/n_groups) Σ_groups [−Σ_{i∈g} softmax_g(A)_i log π(o_i) + Σ_{i∈g} softmax_g(−A)_i log π(o_i)]
Current policy only: no π_old, no π_ref, no importance ratio, so μ inner iterations reuse rollouts
without importance weights. The loop never splits a group across micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS


def group_softmax(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B] values, [B] group ids -> [B] softmax of x within each group."""
    n = int(group.max()) + 1
    top = torch.full((n,), -torch.inf, dtype=x.dtype).scatter_reduce(0, group, x, "amax")  # [n]
    e = torch.exp(x - top[group])  # [B]
    return e / torch.zeros(n, dtype=x.dtype).index_add(0, group, e)[group]


def wd1_loss(logp_seq: torch.Tensor, adv: torch.Tensor, group: torch.Tensor, n_groups: int,
             softmax_over: str = "group", n_seq: int | None = None):
    """[B] log π(o_i), [B] advantages, [B] group ids, total groups (total rows for "batch") -> (loss, metrics)."""
    if softmax_over == "batch":
        group = torch.zeros_like(group)  # one softmax over the micro-batch
    w_pos = group_softmax(adv, group)  # [B]
    w_neg = group_softmax(-adv, group)  # [B]
    w = (w_pos - w_neg).to(logp_seq.dtype)
    scale = len(adv) / n_seq if softmax_over == "batch" else 1 / n_groups
    loss = -(w * logp_seq).sum() * scale
    return loss, {"weight_abs": float(w.abs().mean())}


@ALGORITHMS.register("wd1")
@dataclass(frozen=True, kw_only=True)
class WD1(Algorithm):
    """wd1: ratio-free −Σ softmax(A)·log π + Σ softmax(−A)·log π over the micro-batch (one_step likelihood)."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=lambda: {"p_prompt": 0.15})
    softmax_over: Literal["batch", "group"] = "batch"
    # wd1/train.yaml: per_device_train_batch_size 6 = num_generations 6, so the softmax runs over one group
    micro_batch: float = 1.0

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        seq = (policy_terms.per_token * batch["mask"]).sum(1)  # [B]
        return wd1_loss(seq, advantages, batch["group"], batch["n_groups"], self.softmax_over, batch["n_seq"])
