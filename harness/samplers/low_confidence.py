"""`low_confidence`: LLaDA's remasking sampler (LLaDA `generate.py`, docs/methods.md §3).

At each step, every masked position in the current semi-autoregressive block gets a proposal
(argmax of the logits, with Gumbel noise at `temperature` > 0); the k proposals with the highest
model probability are committed. k follows LLaDA's schedule: the block's masked count spread as
evenly as possible over its steps, earlier steps taking the remainder. Classifier-free guidance
runs an extra pass with the prompt masked: logits = u + (s + 1)(c - u). The loop, the KV caches
and the helpers are shared with the other block samplers (harness/samplers/_base.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.registry import SAMPLERS
from harness.samplers._base import BlockSampler


@SAMPLERS.register("low_confidence")
@dataclass(frozen=True, kw_only=True)
class LowConfidence(BlockSampler):
    """LLaDA low-confidence remasking: commit the k most probable proposals per step, semi-AR blocks."""

    def speed_reference(self) -> bool:
        """LLaDA's `generate` as published (no KV cache, greedy, no guidance) is the decoder the
        field's speed-ups are quoted against; the report's speed-up is against this cell."""
        return self.cache == "none" and self.temperature == 0 and self.cfg_scale == 0
