"""`margin`: commit the masked positions whose top-1 and top-2 probabilities are furthest apart.

Kim et al. 2025 (arXiv 2502.06768, "Train for the worst, plan for the best"): confidence = p_(1) - p_(2),
the margin between the two most probable tokens at a position; otherwise LLaDA's loop (fixed
schedule, semi-AR blocks, Gumbel-noise temperature, guidance, KV caches; harness/samplers/_base.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import SAMPLERS
from harness.samplers._base import BlockSampler


def top2_margin(probs: torch.Tensor) -> torch.Tensor:
    """[..., V] probabilities -> [...] p_(1) - p_(2)."""
    top = probs.topk(2, dim=-1).values  # [..., 2]
    return top[..., 0] - top[..., 1]


@SAMPLERS.register("margin")
@dataclass(frozen=True, kw_only=True)
class Margin(BlockSampler):
    """Top-1 minus top-2 probability margin as the confidence (Kim et al. 2025); LLaDA's loop otherwise."""

    def confidence(self, probs, x0, generator=None):
        return top2_margin(probs)
