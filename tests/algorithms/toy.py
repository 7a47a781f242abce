"""A trivially learnable task for RL tests: reward = the share of completion characters that are '7'."""
from __future__ import annotations

from dataclasses import dataclass

from harness.algorithms.loop import LoopOptions, RLLoop
from harness.seeding import derive_seed
from harness.types import Item
from tests.helpers import make_tiny


@dataclass(frozen=True)
class Sevens:
    gen_length: int = 4

    def score(self, item: Item, completion: str) -> float:
        return sum(c == "7" for c in completion[: self.gen_length - 1]) / (self.gen_length - 1)


ITEMS = [Item(id=f"p{i}", prompt=f"{i:02d}+", reference="777") for i in range(40)]


def make_loop(algorithm, seed: int = 0, double: bool = False, **options) -> RLLoop:
    opts = dict(steps=4, prompts=4, group_size=4, mu=1, lr=3e-3, eval_items=8,
                sampler={"name": "low_confidence", "params": {"temperature": 1.0}})
    opts.update(options)
    policy = make_tiny(seed=seed, max_len=8, d_model=32)
    if double:  # float64: Adam's g/√v amplifies float32 summation noise in near-zero gradients
        policy.module.double()
    key = lambda item, r, stream: derive_seed("test", f"{algorithm.registry_name}/{seed}", item, r, stream)  # noqa: E731
    return RLLoop(policy, algorithm, Sevens(), LoopOptions(**opts), key, ITEMS, ITEMS[:8])
