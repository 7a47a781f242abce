"""What every task shares: splits, item hashing, and the scoring contract (DESIGN.md, `Task`)."""
from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from harness.types import HarnessError, Item

SPLITS = ("train", "test")


def item_hash(item: Item) -> str:
    """A short content hash of an item, recorded with every result (pins the data)."""
    blob = json.dumps([item.id, item.prompt, item.reference], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Task(abc.ABC):
    """Base of task components: subclasses set `version` and implement `_items` and `score`.

    `gen_length` is the completion length (in tokens of the built-in tokenizer) that the task's
    answers need, EOS included; samplers and training use it as their canvas size.
    """

    version: ClassVar[str] = "1"
    lm_eval_task: ClassVar[str | None] = None

    def items(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise HarnessError(f"task {self.registry_name!r}: unknown split {split!r} (known: {SPLITS})")
        return self._items(split)

    @abc.abstractmethod
    def _items(self, split: str) -> list[Item]:
        """All items of a split, in a fixed order."""

    @abc.abstractmethod
    def score(self, item: Item, completion: str) -> float:
        """1.0 for a correct completion (any correct answer counts), else 0.0."""

    @property
    @abc.abstractmethod
    def gen_length(self) -> int:
        """Completion canvas length in tokens of the built-in tokenizer, EOS included."""

    def source(self) -> str:
        """Where the items came from (recorded in the manifest)."""
        return "generated"
