"""`entropy`: commit the masked positions with the lowest predictive entropy (Dream's `entropy` alg).

Dream (`generation_utils.py`, alg="entropy"): confidence = -H(p) = Σ_v p_v log p_v. With
`alg_temp` > 0 the positions to commit are drawn without replacement with probabilities
softmax(confidence / alg_temp) (Dream: torch.multinomial) instead of the top k; here by Gumbel-top-k,
which has the same law, through the seeded generator. The rest is LLaDA's loop
(harness/samplers/_base.py). Dream computes p at the token-sampling temperature; here p is the
model's own softmax, as for the other confidence samplers (the same at temperature 0 or 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.registry import SAMPLERS
from harness.samplers._base import BlockSampler, gumbel_topk, select_topk, token_entropy


@SAMPLERS.register("entropy")
@dataclass(frozen=True, kw_only=True)
class Entropy(BlockSampler):
    """Negative entropy as the confidence (Dream); alg_temp > 0 samples positions from softmax(conf/alg_temp)."""

    alg_temp: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.alg_temp < 0:
            raise ValueError(f"alg_temp must be >= 0, got {self.alg_temp}")

    def confidence(self, probs, x0, generator=None):
        return -token_entropy(probs)

    def select(self, conf, k, generator, ties="position"):
        if self.alg_temp > 0:
            return gumbel_topk(conf, k, self.alg_temp, generator)
        return select_topk(conf, k, ties)
