"""`addition`: multi-digit addition, generated deterministically from a seed.

Prompt `a+b=`, reference `a+b` as digits. Operands have between `min_digits` and `n_digits`
digits; with `zero_pad` they are written at fixed width (aligned digits make the task learnable by
a tiny model on a CPU). The scorer accepts any string whose integer value is the sum.
`canvas` lengthens the completion canvas past the answer (the rest is EOS padding), the regime of
real DLM decoding (a long canvas whose tail is EOS) where parallel and cached samplers pay off.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from harness.registry import TASKS
from harness.tasks.base import Task
from harness.types import Item

_INT = re.compile(r"-?\d+")


@TASKS.register("addition")
@dataclass(frozen=True, kw_only=True)
class Addition(Task):
    """Multi-digit addition a+b=, generated from a seed; any integer equal to the sum scores 1."""

    version = "1"
    n_digits: int = 3
    min_digits: int = 1
    zero_pad: bool = True
    n_train: int = 200_000
    n_test: int = 500
    seed: int = 0
    canvas: int = 0  # completion canvas in tokens; 0 = just enough (n_digits + 2)

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.n_digits <= 9:
            raise ValueError(f"need 1 <= min_digits <= n_digits <= 9, got {self.min_digits}, {self.n_digits}")
        if self.n_test < 1 or self.n_train < 0:
            raise ValueError("n_test must be >= 1 and n_train >= 0")
        if self.canvas and self.canvas < self.n_digits + 2:
            raise ValueError(f"canvas must be 0 or >= n_digits + 2 = {self.n_digits + 2}, got {self.canvas}")
        # Test pairs are distinct and train pairs avoid them: asking for more than exist would never finish.
        distinct = self.distinct_pairs()
        if self.n_test > distinct:
            raise ValueError(f"n_test {self.n_test} exceeds the {distinct} distinct problems with "
                             f"{self.min_digits} to {self.n_digits} digits")
        if self.n_train and self.n_test == distinct:
            raise ValueError(f"n_test {self.n_test} takes all {distinct} distinct problems, none is left for the "
                             f"train split (n_train {self.n_train}); lower n_test or set n_train: 0")

    def distinct_pairs(self) -> int:
        """How many distinct (a, b) pairs the operand range allows."""
        lo = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        return (10**self.n_digits - lo) ** 2

    @property
    def gen_length(self) -> int:
        return max(self.canvas, self.n_digits + 2)  # sum digits (one carry) + EOS, then EOS padding

    def _operands(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n random operands, their digit count uniform in [min_digits, n_digits]."""
        d = rng.integers(self.min_digits, self.n_digits + 1, size=n)
        lo = np.where(d == 1, 0, 10 ** (d - 1))
        return (lo + np.floor(rng.random(n) * (10**d - lo))).astype(np.int64)

    def format_prompt(self, a: int, b: int) -> str:
        w = self.n_digits if self.zero_pad else 0
        return f"{a:0{w}d}+{b:0{w}d}="

    def _pairs(self, split: str) -> list[tuple[int, int]]:
        # Test pairs come from their own stream (first occurrences, in order); train pairs come
        # from another stream with every test pair removed, so the splits never overlap.
        rng = np.random.default_rng([self.seed, 1])
        test: dict[tuple[int, int], None] = {}
        while len(test) < self.n_test:
            a, b = self._operands(rng, 2 * self.n_test), self._operands(rng, 2 * self.n_test)
            for p in zip(a.tolist(), b.tolist()):
                test.setdefault(p, None)
        test_pairs = list(test)[: self.n_test]
        if split == "test":
            return test_pairs
        rng = np.random.default_rng([self.seed, 0])
        held, train = set(test_pairs), []
        while len(train) < self.n_train:
            a, b = self._operands(rng, self.n_train), self._operands(rng, self.n_train)
            train += [p for p in zip(a.tolist(), b.tolist()) if p not in held]
        return train[: self.n_train]

    def _items(self, split: str) -> list[Item]:
        return [
            Item(id=f"{split}-{i}", prompt=self.format_prompt(a, b), reference=str(a + b),
                 meta={"a": a, "b": b})
            for i, (a, b) in enumerate(self._pairs(split))
        ]

    def score(self, item: Item, completion: str) -> float:
        m = _INT.search(completion.strip())
        return float(m is not None and int(m.group()) == int(item.reference))
