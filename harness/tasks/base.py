"""What every task shares: splits, item hashing, stop strings, scoring protocols (docs/architecture.md, "Interfaces").

Scoring protocols. A published accuracy depends on how its answers were read, so every task names
the conventions its scorer follows (`Task.protocols`, one line each with the source it follows):

- `harness` (default): the harness's own extractors and equivalence checks (the most lenient
  correct reading: math-verify equivalence, thousands commas, `<answer>` tags, fallbacks).
- `d1`: the conventions of the d1 repository's evaluation scripts (dllm-reasoning/d1,
  `eval/parse_and_get_acc.py` with its Hendrycks-MATH `parser_helper`), quirks included, so that
  d1's published accuracies are reproduced from d1's own generations. Scores the raw text: d1
  cuts nothing at stop strings.
- `lm-eval`: lm-evaluation-harness's own filters and metrics for the task's built-in lm-eval task.
- `strict`: the harness reading without fallbacks: an answer counts only where the format declares
  it (`####`, a closed `\\boxed{}`, `<answer>` content); no "last number in the text".

A task that cannot offer one of the four says why in `protocols` (the value starts with "n/a:").
`grade` applies the task's stop strings (the one place every path goes through: the native
`generate` study, the RL rewards, `dlm-harness score`, the lm-eval bridge), then the protocol.
"""
from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

from harness.types import HarnessError, Item

SPLITS = ("train", "test")
PROTOCOLS = ("harness", "d1", "lm-eval", "strict")
RAW_PROTOCOLS = ("d1",)  # protocols that read the whole text (their reference code cuts nothing)


def item_hash(item: Item) -> str:
    """A short content hash of an item, recorded with every result (pins the data)."""
    blob = json.dumps([item.id, item.prompt, item.reference], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def truncate_at_stop(text: str, stops) -> str:
    """The text up to the earliest occurrence of any stop string (lm-eval's `until`): an invented
    next question after the answer ("...is 42.\\n\\nQuestion: ... is 7.") is not read."""
    cut = len(text)
    for s in stops or ():
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def reward(task, item: Item, completion: str) -> float:
    """The value every scoring path uses (generate study, RL rewards): `task.grade` (stop strings,
    then the task's protocol); a duck-typed task with only `score` still gets its stop strings cut."""
    if hasattr(task, "grade"):
        return float(task.grade(item, completion).value)
    return float(task.score(item, truncate_at_stop(completion, getattr(task, "stop_strings", ()))))


@dataclass(frozen=True)
class Verdict:
    """One graded completion: `value` of the protocol's primary `metric`, what was read
    (`extracted`, None when nothing was), and any secondary metrics (e.g. Sudoku cell accuracy)."""

    value: float
    extracted: str | None = None
    metric: str = "accuracy"
    protocol: str = "harness"
    extra: dict = field(default_factory=dict)

    def outcome(self) -> dict:
        """The record's `outcome`: metric, value, the protocol that made it, what was read, extras."""
        return {"metric": self.metric, "value": float(self.value), "protocol": self.protocol,
                "extracted": self.extracted, **({"extra": self.extra} if self.extra else {})}


@dataclass(frozen=True, kw_only=True)
class Task(abc.ABC):
    """Base of task components: subclasses set `version` and implement `_items` and either
    `_grade` (protocol-aware tasks) or `score` (single-protocol tasks).

    `gen_length` is the completion length (in tokens of the built-in tokenizer) that the task's
    answers need, EOS included; samplers and training use it as their canvas size.
    """

    version: ClassVar[str] = "1"
    lm_eval_task: ClassVar[str | None] = None
    stop_strings: ClassVar[tuple[str, ...]] = ()
    # protocol -> the source it follows, or "n/a: why" (see the module docstring)
    protocols: ClassVar[dict[str, str]] = {
        "harness": "the task's own scorer",
        "d1": "n/a: the d1 repository evaluates GSM8K, MATH500, Countdown and Sudoku only",
        "lm-eval": "n/a: no lm-eval task scores it",
        "strict": "n/a: the harness scorer has no fallback to relax",
    }

    @property
    def prefill(self) -> str:
        """Text the prompt format puts after the chat template's generation prompt: the start of the
        answer, fed with the prompt and not part of the completion (d1's evaluation prefills
        `<reasoning>`); "" for none. harness/prompting.py places it."""
        return ""

    def items(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise HarnessError(f"task {self.registry_name!r}: unknown split {split!r} (known: {SPLITS})")
        return self._items(split)

    @abc.abstractmethod
    def _items(self, split: str) -> list[Item]:
        """All items of a split, in a fixed order."""

    def score(self, item: Item, completion: str) -> float:
        """1.0 for a correct completion (any correct answer counts), else 0.0 (the task's protocol)."""
        return self.grade(item, completion).value

    @property
    def default_protocol(self) -> str:
        return getattr(self, "protocol", "harness")

    @classmethod
    def check_protocol(cls, protocol: str, where: str = "protocol") -> str:
        """`protocol` if the task offers it, else a HarnessError naming the offered ones (and why not)."""
        name = getattr(cls, "registry_name", cls.__name__)
        if protocol not in PROTOCOLS:
            raise HarnessError(f"{where}: unknown scoring protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
        why = cls.protocols.get(protocol, "n/a: not declared")
        if why.startswith("n/a"):
            offered = [p for p, s in cls.protocols.items() if not s.startswith("n/a")]
            raise HarnessError(f"{where}: task {name!r} has no {protocol!r} protocol ({why[4:].strip()}); "
                               f"it offers: {', '.join(offered)}")
        return protocol

    def grade(self, item: Item, completion: str, protocol: str | None = None) -> Verdict:
        """Cut at the stop strings (except for RAW_PROTOCOLS), then read and check under `protocol`
        (default: the task's `protocol` field, else "harness")."""
        p = self.check_protocol(protocol or self.default_protocol)
        text = completion if p in RAW_PROTOCOLS else truncate_at_stop(completion, self.stop_strings)
        return self._grade(item, text, p)

    def _grade(self, item: Item, text: str, protocol: str) -> Verdict:
        """Protocol-aware tasks override this; single-protocol tasks override `score` instead (every
        registered task does one or the other: tests/test_contract.py grades each task's own answers)."""
        if type(self).score is Task.score:  # a programming error in a new task class, not a user error
            raise TypeError(f"task class {type(self).__name__} must override _grade or score")
        return Verdict(value=float(self.score(item, text)), protocol=protocol)

    def item_from_answer(self, item_id: str, question: str, answer, meta: dict | None = None) -> Item:
        """An item built from a row of generations made elsewhere (`dlm-harness score`): the
        question text, the reference answer as the file gives it. ValueError when the answer cannot
        be read (the row is counted as bad); HarnessError when the task cannot be scored from files."""
        raise HarnessError(f"task {getattr(self, 'registry_name', type(self).__name__)!r} cannot be scored "
                           "from a file of generations (its items need more than a question and an answer)")

    @property
    @abc.abstractmethod
    def gen_length(self) -> int:
        """Completion canvas length in tokens of the built-in tokenizer, EOS included."""

    def source(self) -> str:
        """Where the items came from (recorded in the manifest)."""
        return "generated"
