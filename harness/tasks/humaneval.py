"""`humaneval`: 164 hand-written Python problems (Chen et al., 2021), scored by running the tests.

Format "plain" (zero-shot, the field's standard): the prompt is the function signature with its
docstring; the model continues the body. The program run in the sandbox is prompt + completion
(cut at the stop strings) + the problem's `test` + `check(entry_point)`. A completion that
instead restates the whole function (`def entry_point(`), possibly inside a ```python fence, is
placed after the prompt (so the prompt's imports still apply) and overrides its stub; a repeat of
it cut off by the end of the canvas is dropped (`drop_truncated_tail`).
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from harness.registry import TASKS
from harness.tasks._code import checked_score, clean_code, cut_at, drop_truncated_tail, fenced
from harness.tasks._real import RealTask
from harness.tasks._trusted import CodeCheck, humaneval_check
from harness.types import HarnessError, Item

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# After a full function definition, only code that would run at import time is cut.
TAIL_STOPS = ("\nif __name__", "\nprint(", "\nassert ", "\n```")


def extract(completion: str, entry_point: str | None = None) -> str:
    """The code to place after the prompt: a full definition of `entry_point` if the completion
    restates one, else the body continuation cut at the stop strings."""
    text = clean_code(completion)
    code = fenced(text)
    if entry_point and re.search(rf"^def {re.escape(entry_point)}\s*\(", code or text, re.M):
        full = cut_at(code if code is not None else text, TAIL_STOPS).strip("\n")
        return "\n" + drop_truncated_tail(full) + "\n"
    if code is not None:
        text = code
    return cut_at(text, STOPS)


def build_program(item: Item, completion: str) -> str:
    """The program as the benchmark defines it (prompt, completion, test, `check`); for reading:
    scoring runs `build_check` instead."""
    body = extract(completion, item.meta["entry_point"])
    return f"{item.prompt}{body}\n\n{item.meta['test']}\n\ncheck({item.meta['entry_point']})\n"


def build_check(item: Item, completion: str) -> CodeCheck:
    """The trusted check of a completion (harness/tasks/_trusted.py): the test's calls are planned
    with the dataset's canonical solution, the completion runs on their inputs alone, the test's
    asserts run in a third program without it."""
    return humaneval_check(item.prompt, extract(completion, item.meta["entry_point"]), item.meta["test"],
                           item.meta["entry_point"], reference=item.meta.get("canonical_solution"))


@TASKS.register("humaneval")
@dataclass(frozen=True, kw_only=True)
class HumanEval(RealTask):
    """HumanEval (test only): pass@1 of the completion against the problem's tests, in the sandbox."""

    version = "1"
    lm_eval_task = "humaneval"
    hub_id = "openai/openai_humaneval"
    local_file = "humaneval/HumanEval.jsonl.gz"
    splits = ("test",)
    stop_strings: ClassVar[tuple[str, ...]] = STOPS
    # Scoring protocols (harness/tasks/base.py): pass@1 in the harness sandbox only.
    protocols: ClassVar[dict[str, str]] = {
        "harness": "pass@1 of the stop-cut completion against the tests, in the harness sandbox",
        "d1": "n/a: the d1 repository does not evaluate HumanEval",
        "lm-eval": "n/a: lm-eval's humaneval runs code through its own code_eval; the harness runs code only in "
                   "its sandbox (the bridge's dlmh_humaneval task scores with the harness protocol)",
        "strict": "n/a: a program passes its tests or not; there is no answer fallback to remove",
    }
    runs_code: ClassVar[bool] = True  # scored in the sandbox: runs and records carry its isolation level
    fewshot: int = 0
    prompt_format: Literal["plain"] = "plain"
    timeout_s: float = 10.0

    def __post_init__(self):
        if self.fewshot != 0 or self.prompt_format != "plain":
            raise HarnessError("humaneval: only the zero-shot 'plain' format exists (fewshot must be 0)")

    @property
    def gen_length(self) -> int:
        return 512

    @staticmethod
    def _read_local(path, split: str) -> list[dict]:
        with gzip.open(path, "rt") as f:
            return [json.loads(line) for line in f if line.strip()]

    def doc_to_item(self, doc: dict, index: int) -> Item:
        return Item(id=doc["task_id"], prompt=doc["prompt"], reference=f"{doc['test']}\ncheck({doc['entry_point']})",
                    meta={"entry_point": doc["entry_point"], "test": doc["test"],
                          "canonical_solution": doc["canonical_solution"]})

    def program(self, item: Item, completion: str) -> str:
        return build_program(item, completion)

    def check(self, item: Item, completion: str) -> CodeCheck:
        return build_check(item, completion)

    def score(self, item: Item, completion: str) -> float:
        return checked_score(self.check(item, completion), self.timeout_s)
