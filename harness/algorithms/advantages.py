"""Advantage rules over groups of G completions of one prompt (docs/methods.md §2).

rewards [N] with group ids [N] (each group = the G rollouts of one prompt) -> advantages [N]:
  mean    A_i = r_i − mean_g(r)                        (d1 / diffu-GRPO: no std division)
  zscore  A_i = (r_i − mean_g(r)) / (std_g(r) + eps)   (GRPO; std unbiased, as torch.std)
  zscore_pop  (r_i − mean_g(r)) / std_g(r) with the population std (divide by G) and no eps, 0 for
              every row of a group with std 0 (Gen-Verse/dLLM-RL reward/rl_reward.py
              `z_score_normalize`, TraceRL's reward normalisation)
  loo     A_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean_g(r))   (leave-one-out, RLOO / DiffuCoder code)
A group whose rewards are all equal gets zero advantages under every rule.
"""
from __future__ import annotations

import torch

RULES = ("mean", "zscore", "zscore_pop", "loo")


def group_stats(rewards: torch.Tensor, group: torch.Tensor,
                ddof: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (mean [N], std [N] with divisor size − ddof, size [N]) of each row's group, broadcast back to rows."""
    n_groups = int(group.max()) + 1 if group.numel() else 0
    r = rewards.double()
    size = torch.zeros(n_groups, dtype=torch.float64).index_add(0, group, torch.ones_like(r))  # [n_groups]
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add(0, group, r) / size  # [n_groups]
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add(0, group, (r - mean[group]) ** 2)
    std = (sq / (size - ddof).clamp_min(1)).sqrt()  # [n_groups]
    return mean[group], std[group], size[group]


def advantages(rule: str, rewards: torch.Tensor, group: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """[N] rewards, [N] long group ids -> [N] float64 advantages under `rule` (see module doc)."""
    mean, std, size = group_stats(rewards, group, ddof=0 if rule == "zscore_pop" else 1)
    centred = rewards.double() - mean  # [N]
    if rule == "mean":
        return centred
    if rule == "zscore":
        return centred / (std + eps)
    if rule == "zscore_pop":  # no eps; a group without spread gets 0 (its centred rewards are 0 too)
        return torch.where(std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(std))
    if rule == "loo":
        return centred * size / (size - 1).clamp_min(1)
    raise ValueError(f"unknown advantage rule {rule!r} (known: {', '.join(RULES)})")
