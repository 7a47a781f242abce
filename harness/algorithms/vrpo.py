"""`vrpo`: VRPO's DPO on ELBO estimates, on preference pairs formed online from each group (LLaDA 1.5).

Source: the paper only (Zhu et al., "LLaDA 1.5: Variance-Reduced Preference Optimization for Large
Language Diffusion Models", arXiv 2505.19223, §3 and Algorithm 1): no training code of the authors
is public (the LLaDA 1.5 release has weights and inference code; no VRPO trainer is in the
searchable index), so this objective restates the paper's equations. VRPO replaces DPO's
log-likelihoods by ELBO estimates B̂ and reduces their variance three ways:

  DPO on ELBOs   ℓ(y_w, y_l) = −log σ(β [(B̂_θ(y_w) − B̂_ref(y_w)) − (B̂_θ(y_l) − B̂_ref(y_l))])
  budget         B̂ averages n draws (the paper's n = 8)
  allocation     all n draws at distinct timesteps, one mask each (n_t = n, n_{y_t} = 1): mc_elbo
                 with t i.i.d. and `n_mc` = n draws one mask per t
  antithetic     B̂_θ and B̂_ref of the same completion use the same timesteps and masks: the RL loop
                 scores π_ref on the policy's own draws (loop.py), so at θ = θ_ref every Δ is exactly 0

Pairs (the online form; the harness has no offline preference-pair study): within each group of G
rollouts of one prompt, every ordered pair (i, j) with r_i > r_j is a (winner, loser) pair
(`pairs="all"`), or only the highest- against the lowest-reward completion (`pairs="extremes"`,
the first of each in row order); a group without a reward spread has no pair and contributes 0.

  loss_g = (1/|P_g|) Σ_{(i,j)∈P_g} −log σ(β (Δ_i − Δ_j)),   Δ_i = B̂_θ(o_i) − B̂_ref(o_i)
  loss   = mean over the buffer's groups (one group per micro-batch)

β = 0.1 (DPO's default; the paper's value could not be read from released code). Advantages are
not used; the reference policy is the frozen starting checkpoint (options.ref_refresh 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS


def preference_pairs(rewards: torch.Tensor, group: torch.Tensor, kind: str) -> torch.Tensor:
    """[B] rewards, [B] group ids -> [P, 2] long (winner row, loser row) pairs inside each group."""
    same = group[:, None] == group[None, :]
    if kind == "all":
        return torch.nonzero(same & (rewards[:, None] > rewards[None, :]))
    if kind != "extremes":
        raise ValueError(f"unknown pairing {kind!r} (known: all, extremes)")
    out = []
    for g in group.unique().tolist():
        rows = torch.nonzero(group == g).squeeze(1)
        r = rewards[rows]
        if float(r.max()) > float(r.min()):
            out.append(torch.stack([rows[int(torch.argmax(r))], rows[int(torch.argmin(r))]]))
    return torch.stack(out) if out else torch.zeros(0, 2, dtype=torch.long)


def vrpo_loss(delta: torch.Tensor, pairs: torch.Tensor, group: torch.Tensor, n_groups: int, beta: float):
    """[B] Δ_i = B̂_θ − B̂_ref, [P, 2] pairs, [B] group ids, groups to average over -> (loss, metrics)."""
    if len(pairs) == 0:
        return delta.sum() * 0.0, {"pairs": 0.0, "pair_accuracy": None, "margin": None}
    margin = beta * (delta[pairs[:, 0]] - delta[pairs[:, 1]])  # [P]
    per_pair = -F.logsigmoid(margin)
    g = group[pairs[:, 0]]
    count = torch.zeros(int(group.max()) + 1, dtype=per_pair.dtype).index_add(0, g, torch.ones_like(per_pair))
    loss = (per_pair / count[g]).sum() / n_groups
    return loss, {"pairs": float(len(pairs)), "pair_accuracy": float((margin.detach() > 0).double().mean()),
                  "margin": float(margin.detach().mean())}


@ALGORITHMS.register("vrpo")
@dataclass(frozen=True, kw_only=True)
class VRPO(Algorithm):
    """VRPO (online pairs): DPO on mc_elbo estimates, n = 8 draws one mask per timestep, draws shared with π_ref.

    Checked against its paper only (LLaDA 1.5, arXiv 2505.19223): no VRPO training code is public."""

    estimator: str = "mc_elbo"
    estimator_params: dict = field(default_factory=lambda: {"n_mc": 8, "t_law": "iid"})
    beta: float = 0.1
    pairs: Literal["all", "extremes"] = "all"
    micro_batch: float = 1.0  # pairs live inside a group; the loss is a mean over groups

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.pairs not in ("all", "extremes"):
            raise ValueError(f"pairs must be 'all' or 'extremes', got {self.pairs!r}")

    @property
    def needs_ref(self) -> bool:
        return True

    def advantages(self, rewards, group):
        return rewards.double()  # the loss ranks raw rewards inside each group; no baseline

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        delta = policy_terms.sequence - ref_terms.sequence.detach()  # [B]
        pairs = preference_pairs(advantages, batch["group"], self.pairs)
        return vrpo_loss(delta, pairs, batch["group"], batch["n_groups"], self.beta)
