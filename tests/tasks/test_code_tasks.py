"""HumanEval and MBPP: program assembly from messy completions, and the reference solutions of
every problem passing (slow) while a wrong solution for each fails."""
from __future__ import annotations

import pytest

from harness.registry import TASKS
from harness.tasks import data as data_mod
from harness.tasks._trusted import run_checks
from harness.tasks.humaneval import extract as he_extract
from harness.tasks.mbpp import extract as mbpp_extract
from harness.types import Item

HAVE_HE = (data_mod.data_dir() / "humaneval" / "HumanEval.jsonl.gz").is_file()
HAVE_MBPP = (data_mod.data_dir() / "mbpp" / "mbpp.jsonl").is_file()
PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
HE_ITEM = Item(id="t", prompt=PROMPT, reference="", meta={
    "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n"})
MB_ITEM = Item(id="m", prompt="", reference="", meta={
    "test_list": ["assert add(2, 3) == 5", "assert add(0, 0) == 0"], "test_setup_code": ""})

HE_CASES = [
    ("    return a + b\n", 1),
    ("    return a + b\n<|endoftext|><|endoftext|>", 1),
    ("    return a + b\n\ndef unrelated():\n    raise SystemExit(1)\n", 1),  # cut at "\ndef "
    ("    return a + b\nprint(add(1, 2))\nwhile True: pass\n", 1),  # cut at "\nprint("
    ("```python\ndef add(a, b):\n    return a + b\n```\nThis adds.", 1),  # full restated function in a fence
    ("def add(a: int, b: int) -> int:\n    return b + a\n\nif __name__ == '__main__':\n    input()\n", 1),
    ("<|im_start|>assistant\n    return a + b<|im_end|>", 1),
    ("    return a - b\n", 0),
    ("    return None\n", 0),
    ("    pass\n", 0),
    ("    return a +", 0),  # truncated
    ("", 0),
    ("    import sys; sys.exit(0)\n", 0),
    ("    return a + b\ndef check(candidate):\n    pass\n", 1),  # cut anyway; the real check runs
    ("    return 5\n", 0),
]


@pytest.mark.parametrize("completion, expected", HE_CASES)
def test_humaneval_program_assembly(completion, expected):
    assert TASKS.build("humaneval").score(HE_ITEM, completion) == expected


MB_CASES = [
    ("def add(a, b):\n    return a + b\n[DONE]", 1),
    ("def add(a, b):\r\n    return a + b\r\n[DONE]\n\nYou are an expert Python programmer", 1),
    ("```python\ndef add(a, b):\n    return a + b\n```", 1),
    ("[BEGIN]\ndef add(a, b):\n    return a + b\n[DONE]", 1),
    ("def add(a, b):\n    return a + b\n[DONE]<|endoftext|><|endoftext|>", 1),
    ("def add(a, b):\n    return a + b", 1),  # no [DONE]: canvas ended
    ("def add(a, b):\n    return a * b\n[DONE]", 0),
    ("def add(a, b):\n    return None\n[DONE]", 0),
    ("def add(a, b):\n    return a +", 0),
    ("import os\nos._exit(0)\n[DONE]", 0),
    ("", 0),
]


@pytest.mark.parametrize("completion, expected", MB_CASES)
def test_mbpp_program_assembly(completion, expected):
    assert TASKS.build("mbpp").score(MB_ITEM, completion) == expected


def test_extractors_directly():
    assert he_extract("    return 1\n#comment\n") == "    return 1"
    assert mbpp_extract("x = 1\n[DONE] trailing") == "x = 1"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_HE, reason="offline HumanEval copy (../shared/data/humaneval) absent")
def test_humaneval_canonical_solutions_all_pass_and_wrong_ones_fail(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = TASKS.build("humaneval")
    items = task.items("test")
    assert len(items) == 164 and items[0].id == "HumanEval/0" and task.source().startswith("local:")
    checks = [task.check(i, i.meta["canonical_solution"]) for i in items]
    assert all(c.planner and c.checker for c in checks)  # every problem is planned and checked by trusted runs
    good = run_checks(checks, workers=4, timeout_s=30)
    assert [i.id for i, r in zip(items, good) if not r.passed] == []
    wrong = run_checks([task.check(i, "    return None\n") for i in items], workers=4, timeout_s=30)
    assert [i.id for i, r in zip(items, wrong) if r.passed] == []


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MBPP, reason="offline MBPP copy (../shared/data/mbpp) absent")
def test_mbpp_reference_code_passes_all_500_and_wrong_code_fails(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = TASKS.build("mbpp")
    items = task.items("test")
    assert len(items) == 500 and [i.meta["task_id"] for i in items] == list(range(11, 511))
    assert items[0].prompt.count("[BEGIN]") == 4 and items[0].prompt.count("[DONE]") == 3
    assert "task: Write a function to find the similar elements" in items[0].prompt  # task 2 first
    # mbpp/123 (amicable numbers below 9999) takes ~6 s alone on a loaded 2-core machine: 60 s here.
    checks = [task.check(i, i.meta["code"] + "\n[DONE]") for i in items]
    # Every problem, mbpp/367 (whose setup builds a tree of the completion's own Node class)
    # included, is checked by a trusted run (harness/tasks/_trusted.py).
    assert all(c.checker for c in checks)
    good = run_checks(checks, workers=4, timeout_s=60)
    assert [i.id for i, r in zip(items, good) if not r.passed] == []
    # Wrong: every function defined by the reference returns None.
    wrong_code = [_returns_none(i.meta["code"]) for i in items]
    wrong = run_checks([task.check(i, c) for i, c in zip(items, wrong_code)], workers=4, timeout_s=60)
    assert [i.id for i, r in zip(items, wrong) if r.passed] == []


def _returns_none(code: str) -> str:
    import ast
    import warnings

    with warnings.catch_warnings():  # some references hold invalid escape sequences like '\w'
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(code.replace("\r\n", "\n").replace("\t", "    "))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = [ast.Return(value=ast.Constant(value=None))]
    return ast.unparse(tree)
