"""`wd1`: ratio-free weighted policy optimisation (wd1, arXiv 2507.08838; METHODS.md §2).

For each group of G completions with advantages A (group-mean baseline):
    loss_group = −Σ_i softmax(A)_i · log π(o_i) + Σ_i softmax(−A)_i · log π(o_i)
    loss = (1/n_groups) Σ_groups loss_group
log π(o_i) is the policy's one_step sequence value (current policy only: no π_old, no π_ref, no
importance ratio, so μ inner iterations reuse rollouts without importance weights). The softmax is
over the rows of one group; the loop never splits a group across micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS


def group_softmax(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B] values, [B] group ids -> [B] softmax of x within each group."""
    n = int(group.max()) + 1
    top = torch.full((n,), -torch.inf, dtype=x.dtype).scatter_reduce(0, group, x, "amax")  # [n]
    e = torch.exp(x - top[group])  # [B]
    return e / torch.zeros(n, dtype=x.dtype).index_add(0, group, e)[group]


def wd1_loss(logp_seq: torch.Tensor, adv: torch.Tensor, group: torch.Tensor, n_groups: int):
    """[B] log π(o_i), [B] advantages, [B] group ids, total groups -> (loss, metrics)."""
    w_pos = group_softmax(adv, group)  # [B]
    w_neg = group_softmax(-adv, group)  # [B]
    w = (w_pos - w_neg).to(logp_seq.dtype)
    loss = -(w * logp_seq).sum() / n_groups
    return loss, {"weight_abs": float(w.abs().mean())}


@ALGORITHMS.register("wd1")
@dataclass(frozen=True, kw_only=True)
class WD1(Algorithm):
    """wd1: ratio-free −Σ softmax(A)·log π + Σ softmax(−A)·log π over each group (one_step likelihood)."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=lambda: {"p_prompt": 0.15})

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        seq = (policy_terms.per_token * batch["mask"]).sum(1)  # [B]
        return wd1_loss(seq, advantages, batch["group"], batch["n_groups"])
