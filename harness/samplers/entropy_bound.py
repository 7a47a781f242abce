"""`entropy_bound`: the EB-sampler (Ben-Hamu et al. 2025, arXiv 2505.24857).

In the current block, sort the masked positions by predictive entropy, ascending, and commit the
longest prefix whose entropies satisfy Σ_i H_i - max_i H_i <= `bound` (at least one position):
tokens that are nearly determined are decoded together, within an approximate error tolerance.
The sorted prefix's max is its last element, so the test reads Σ_{j<k} H_(j) <= bound. Default
bound 0.1 (the DiffusionGemma scheduler's `entropy_bound` default; the paper sweeps gamma).
The number of passes adapts; `max_steps` caps it (harness/samplers/_base.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.registry import SAMPLERS
from harness.samplers._base import AdaptiveSampler, Step, token_entropy


def entropy_bounded_prefix(h: torch.Tensor, eligible: torch.Tensor, bound: float) -> torch.Tensor:
    """[B, n] entropies, [B, n] eligibility -> [B, n] bool: the longest lowest-entropy prefix with
    Σ H - max H <= bound, at least one eligible position per row (EB-sampler, Alg. 1)."""
    h = torch.where(eligible, h, torch.full_like(h, torch.inf))
    sorted_h, order = torch.sort(h, dim=1, stable=True)  # ascending; ineligible last
    before = torch.cumsum(torch.where(torch.isfinite(sorted_h), sorted_h, 0.0), 1) - \
        torch.where(torch.isfinite(sorted_h), sorted_h, 0.0)  # Σ of the strictly earlier entropies
    accept = (before <= bound) & torch.isfinite(sorted_h)  # [B, n] in sorted order
    accept[:, 0] = torch.isfinite(sorted_h[:, 0])
    return torch.zeros_like(accept).scatter(1, order, accept)


@SAMPLERS.register("entropy_bound")
@dataclass(frozen=True, kw_only=True)
class EntropyBound(AdaptiveSampler):
    """EB-sampler: commit the lowest-entropy masked tokens while sum(H) - max(H) <= bound (>= 1 per step)."""

    bound: float = 0.1

    budget_knobs: ClassVar[tuple[str, ...]] = ("bound", "max_steps")  # a larger bound commits more per pass

    def __post_init__(self):
        super().__post_init__()
        if self.bound < 0:
            raise ValueError(f"bound must be >= 0, got {self.bound}")

    def choose(self, s: Step) -> torch.Tensor:
        if s.last:
            return s.eligible
        return entropy_bounded_prefix(token_entropy(s.probs), s.eligible, self.bound)
