"""`random`: unmask k uniformly random masked positions per step (Austin et al. 2021; LLaDA's
remasking="random", whose confidence is a uniform draw per position).

Tokens are the argmax proposals, or Gumbel-noise samples at `temperature` > 0; the schedule,
blocks and caches are LLaDA's loop (harness/samplers/_base.py). The position draws go through
harness.seeding.rand, so the sampler needs a generator even at temperature 0. The draws ignore the
logits, so a step's choice is known before its pass (`cache: dkv_greedy` relies on it).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.registry import SAMPLERS
from harness.samplers._base import BlockSampler
from harness.seeding import rand


@SAMPLERS.register("random")
@dataclass(frozen=True, kw_only=True)
class RandomOrder(BlockSampler):
    """Unmask k uniformly random masked positions per step (Austin et al. 2021); LLaDA's loop otherwise."""

    choice_before_pass = True  # the scores ignore the logits: `cache: dkv_greedy` draws them before the pass

    def confidence(self, probs, x0, generator=None):
        return rand(generator, x0.shape[0], x0.shape[1], device=x0.device)
