"""`threshold`: Fast-dLLM's confidence-aware parallel decoding (arXiv 2505.22618, `get_transfer_index`).

In the current block, commit every masked position whose proposal has probability >= `tau`, and
always the most confident one, so each pass commits at least one token and the number of passes
adapts to the model's certainty. `max_steps` caps the passes per sequence (spread over the blocks;
a block's last allowed step commits what is left). Fast-dLLM pairs it with the prefix and dual KV
caches (`cache`); both are options of the shared loop (harness/samplers/_base.py).

`floor: schedule` raises the per-step minimum from one token to the linear schedule's count (the
block spread over its `max_steps` share, LLaDA's / SDAR's get_num_transfer_tokens): a step commits
everything at or above tau when at least that many are, else that many most confident tokens.
This is SDAR's and dLLM-RL's `low_confidence_dynamic` (`block_diffusion_generate`) for any number of
denoising steps per block; with one token per step the two floors coincide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.registry import SAMPLERS
from harness.samplers._base import AdaptiveSampler, Step, select_topk


@SAMPLERS.register("threshold")
@dataclass(frozen=True, kw_only=True)
class Threshold(AdaptiveSampler):
    """Fast-dLLM: commit every masked token with confidence >= tau (at least one per step); adaptive NFE."""

    tau: float = 0.9
    floor: Literal["one", "schedule"] = "one"  # the fewest tokens a step commits: one, or the schedule's count

    budget_knobs: ClassVar[tuple[str, ...]] = ("tau", "max_steps")  # a lower tau commits more per pass

    def __post_init__(self):
        super().__post_init__()
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if self.floor not in ("one", "schedule"):
            raise ValueError(f"floor must be 'one' or 'schedule', got {self.floor!r}")

    def choose(self, s: Step) -> torch.Tensor:
        if s.last:
            return s.eligible
        conf = torch.gather(s.probs, -1, s.x0[..., None]).squeeze(-1)  # [B', n] p(x0)
        conf = torch.where(s.eligible, conf, torch.full_like(conf, -torch.inf))
        high = s.eligible & (conf >= self.tau)
        if self.floor == "schedule":
            k = s.k_schedule
            return torch.where((high.sum(1) >= k)[:, None], high, select_topk(conf, k, s.ties))
        best = select_topk(conf, torch.ones_like(conf[:, 0], dtype=torch.long), s.ties)
        return best | high
