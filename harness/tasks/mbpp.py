"""`mbpp`: Mostly Basic Python Problems (Austin et al., 2021), scored by running the asserts.

Format "plain": the standard 3-shot prompt (exemplars: task ids 2, 3, 4), each problem as
"You are an expert Python programmer, and here is your task: {text} Your code should pass these
tests:\\n\\n{tests}\\n[BEGIN]\\n" followed, for exemplars, by "{code}\\n[DONE]". The code is what
comes before the first `[DONE]` (after a repeated `[BEGIN]`), or a ```python fence in it; the program is that
code + `test_setup_code` + the three asserts. Splits: test = task ids 11-510, train = 601-974.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

from harness.registry import TASKS
from harness.tasks._code import checked_score, clean_code, cut_at, drop_truncated_tail, fenced
from harness.tasks._real import RealTask, _cached_rows
from harness.tasks._trusted import CodeCheck, mbpp_check
from harness.types import HarnessError, Item

ID_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
FEWSHOT_IDS = (2, 3, 4)


def extract(completion: str) -> str:
    """The code of an MBPP completion: the text before the first `[DONE]` (anything after it is a
    hallucinated next problem), after a repeated `[BEGIN]`; within it a fenced block if any. A
    trailing definition cut off by the end of the canvas is dropped (`drop_truncated_tail`)."""
    text = clean_code(completion).split("[DONE]", 1)[0]
    if "[BEGIN]" in text:
        text = text.rsplit("[BEGIN]", 1)[1]
    code = fenced(text)
    if code is None:
        code = cut_at(text, ("\n```",)).strip("\n")
    return drop_truncated_tail(code)


def problem_text(doc: dict) -> str:
    tests = "\n".join(doc["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


@TASKS.register("mbpp")
@dataclass(frozen=True, kw_only=True)
class MBPP(RealTask):
    """MBPP (test: 500 problems): pass@1 of the code against the problem's asserts, in the sandbox."""

    version = "1"
    lm_eval_task = "mbpp"
    hub_id = "google-research-datasets/mbpp"
    hub_config = "full"
    local_file = "mbpp/mbpp.jsonl"
    splits = ("train", "test")
    stop_strings: ClassVar[tuple[str, ...]] = ("[DONE]",)
    # Scoring protocols (harness/tasks/base.py): pass@1 in the harness sandbox only.
    protocols: ClassVar[dict[str, str]] = {
        "harness": "pass@1 of the stop-cut completion against the tests, in the harness sandbox",
        "d1": "n/a: the d1 repository does not evaluate MBPP",
        "lm-eval": "n/a: lm-eval's mbpp runs code through its own code_eval; the harness runs code only in "
                   "its sandbox (the bridge's dlmh_mbpp task scores with the harness protocol)",
        "strict": "n/a: a program passes its tests or not; there is no answer fallback to remove",
    }
    runs_code: ClassVar[bool] = True  # scored in the sandbox: runs and records carry its isolation level
    fewshot: int = 3
    prompt_format: Literal["plain"] = "plain"
    timeout_s: float = 10.0

    def __post_init__(self):
        if self.prompt_format != "plain" or not 0 <= self.fewshot <= len(FEWSHOT_IDS):
            raise HarnessError(f"mbpp: prompt_format 'plain' with fewshot 0..3, got {self.prompt_format!r}, "
                               f"{self.fewshot}")

    @property
    def gen_length(self) -> int:
        return 512

    @staticmethod
    def _read_local(path, split: str) -> list[dict]:
        lo, hi = ID_RANGES[split]
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return sorted((r for r in rows if lo <= int(r["task_id"]) <= hi), key=lambda r: int(r["task_id"]))

    def _shots(self) -> str:
        if not self.fewshot:
            return ""
        rows = {int(r["task_id"]): r for r in _cached_rows(type(self), "prompt")[0]}
        return "".join(f"{problem_text(rows[i])}{rows[i]['code']}\n[DONE]\n\n" for i in FEWSHOT_IDS[: self.fewshot])

    def doc_to_item(self, doc: dict, index: int) -> Item:
        tests = "\n".join(doc["test_list"])
        return Item(id=f"mbpp/{doc['task_id']}", prompt=self._shots() + problem_text(doc),
                    reference=f"{doc.get('test_setup_code') or ''}\n{tests}".strip("\n"),
                    meta={"task_id": int(doc["task_id"]), "test_list": list(doc["test_list"]),
                          "test_setup_code": doc.get("test_setup_code") or "", "code": doc["code"]})

    def program(self, item: Item, completion: str) -> str:
        """The program as the benchmark defines it (code, setup, asserts); scoring runs `check`."""
        setup = item.meta["test_setup_code"].replace("\r\n", "\n")
        tests = "\n".join(item.meta["test_list"])
        return f"{extract(completion)}\n\n{setup}\n{tests}\n"

    def check(self, item: Item, completion: str) -> CodeCheck:
        """The trusted check (harness/tasks/_trusted.py): the code runs on the asserts' inputs, the
        asserts run in a second program without it."""
        setup = item.meta["test_setup_code"].replace("\r\n", "\n")
        reference = item.meta.get("code")
        return mbpp_check(extract(completion), setup, list(item.meta["test_list"]),
                          reference=reference.replace("\r\n", "\n") if reference is not None else None)

    def score(self, item: Item, completion: str) -> float:
        return checked_score(self.check(item, completion), self.timeout_s)
