"""What every task shares: splits, item hashing, and the scoring contract (DESIGN.md, `Task`)."""
from __future__ import annotations

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
class Task:
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

    def _items(self, split: str) -> list[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, item: Item, completion: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def gen_length(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def source(self) -> str:
        """Where the items came from (recorded in the manifest)."""
        return "generated"
