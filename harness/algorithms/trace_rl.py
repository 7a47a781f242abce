"""`trace_rl`: TraceRL (arXiv 2509.06949; METHODS.md §2).

Likelihood: the `trace` estimator, which scores each rollout along the commit steps its sampler
recorded (the loop passes `Generation.commit_step` as the draws). Objective: token-level PPO clip
ε = 0.2 against π_old with a k3 KL to π_old (β = 0.01), z-scored group advantages, and an accuracy
filter: groups whose mean reward lies outside [acc_low, acc_high] are dropped before any
likelihood is computed (they cost no likelihood NFE). The optional value model is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.algorithms.grpo import GRPO
from harness.registry import ALGORITHMS


def accuracy_filter(rewards: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[n_groups, G] rewards -> [n_groups] bool: group accuracy (mean reward) in [low, high]."""
    acc = rewards.double().mean(1)
    return (acc >= low) & (acc <= high)


@ALGORITHMS.register("trace_rl")
@dataclass(frozen=True, kw_only=True)
class TraceRL(GRPO):
    """TraceRL: trace likelihood along the commit order, clip 0.2 and k3 KL vs π_old, z-scored, accuracy filter."""

    uses_commit_steps: ClassVar[bool] = True
    estimator: str = "trace"
    advantage: Literal["mean", "zscore", "loo"] = "zscore"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    kl_to: Literal["ref", "old"] = "old"
    norm: Literal["sequence", "token", "constant"] = "token"
    acc_low: float = 0.2
    acc_high: float = 0.8

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.acc_low <= self.acc_high <= 1:
            raise ValueError(f"need 0 <= acc_low <= acc_high <= 1, got {self.acc_low}, {self.acc_high}")

    def keep_groups(self, rewards):
        return accuracy_filter(rewards, self.acc_low, self.acc_high)
