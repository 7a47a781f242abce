"""Shared plumbing of the real (dataset-backed) tasks: cached rows per split, items from rows."""
from __future__ import annotations

import abc
import functools
from typing import ClassVar

from harness.tasks import _hub
from harness.tasks.base import Task
from harness.types import HarnessError, Item


@functools.lru_cache(maxsize=32)
def _cached_rows(cls: type, split: str) -> tuple[tuple[dict, ...], str]:
    rows, source = cls._load(split)
    return tuple(rows), source


class RealTask(Task):
    """A task read from a benchmark file: `docs(split)` rows -> `doc_to_item` -> `items(split)`.

    Subclasses set `hub_id`, `hub_config`, `local_file`, `splits` and implement `_read_local`,
    `doc_to_item`, `extract`-based `score`, and optionally `_select` (rows of a split).
    """

    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    local_file: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("test",)

    @classmethod
    def _load(cls, split: str) -> tuple[list[dict], str]:
        return _hub.load(cls.hub_id, cls.hub_config, split, cls.local_file, lambda p: cls._read_local(p, split))

    @staticmethod
    @abc.abstractmethod
    def _read_local(path, split: str) -> list[dict]:
        """Rows of `split` from the offline copy."""

    def docs(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise HarnessError(f"task {self.registry_name!r} has no split {split!r} (it has: {self.splits})")
        return [dict(r) for r in _cached_rows(type(self), split)[0]]

    def source(self) -> str:
        return _cached_rows(type(self), "test")[1]

    @abc.abstractmethod
    def doc_to_item(self, doc: dict, index: int) -> Item:
        """One row as an Item with its full prompt (few-shot included)."""

    def items(self, split: str) -> list[Item]:
        return [self.doc_to_item(d, i) for i, d in enumerate(self.docs(split))]

    def _items(self, split: str) -> list[Item]:
        return self.items(split)
