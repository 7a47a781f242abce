"""HumanEval and MBPP scorers on hand-made messy completions for real problems, end to end.

Each case is a completion as a model might write it (chat markup, end-of-text and mask runs,
fences, [BEGIN]/[DONE], repeats cut off by the end of the canvas, CRLF, tabs, print noise) for a
real problem (prompt and tests as in the datasets, checked against the offline copies when
present), scored by the task's `score` in the sandbox: true positives must pass, true negatives
(truncated, wrong, partly right, looping, exiting early) must fail. All cases run once, in
parallel, in a module fixture; each case is then its own test.
"""
from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.registry import TASKS
from harness.tasks import data as data_mod
from harness.types import Item

# Short enough that the infinite loops below cost little, long enough for a loaded 2-core machine.
TIMEOUT_S = 3.0
EOT = "<|endoftext|>"
MASK = "<|mdm_mask|>"

# -- real HumanEval problems (prompt, test, entry point exactly as in openai_humaneval) ----------
_META = "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\n"


def _he(task_id: str, entry_point: str, prompt: str, test: str) -> Item:
    return Item(id=task_id, prompt=prompt, reference="", meta={"entry_point": entry_point, "test": test})


HE0 = _he("HumanEval/0", "has_close_elements", (
    "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
    "    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n"
    '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n'), _META + (
    "def check(candidate):\n"
    "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
    "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
    "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
    "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n"
    "    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n"
    "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n"
    "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n\n"))
HE2 = _he("HumanEval/2", "truncate_number", (
    '\n\ndef truncate_number(number: float) -> float:\n    """ Given a positive floating point number, it can be '
    "decomposed into\n    and integer part (largest integer smaller than given number) and decimals\n"
    "    (leftover part always smaller than 1).\n\n    Return the decimal part of the number.\n"
    '    >>> truncate_number(3.5)\n    0.5\n    """\n'), _META + (
    "def check(candidate):\n    assert candidate(3.5) == 0.5\n"
    "    assert abs(candidate(1.33) - 0.33) < 1e-6\n    assert abs(candidate(123.456) - 0.456) < 1e-6\n"))
HE13 = _he("HumanEval/13", "greatest_common_divisor", (
    '\n\ndef greatest_common_divisor(a: int, b: int) -> int:\n    """ Return a greatest common divisor of two '
    "integers a and b\n    >>> greatest_common_divisor(3, 5)\n    1\n    >>> greatest_common_divisor(25, 15)\n"
    '    5\n    """\n'), _META + (
    "def check(candidate):\n    assert candidate(3, 7) == 1\n    assert candidate(10, 15) == 5\n"
    "    assert candidate(49, 14) == 7\n    assert candidate(144, 60) == 12\n"))
HE55 = _he("HumanEval/55", "fib", (
    '\n\ndef fib(n: int):\n    """Return n-th Fibonacci number.\n    >>> fib(10)\n    55\n    >>> fib(1)\n'
    '    1\n    >>> fib(8)\n    21\n    """\n'), (
    "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(10) == 55\n    assert candidate(1) == 1\n"
    "    assert candidate(8) == 21\n    assert candidate(11) == 89\n    assert candidate(12) == 144\n\n"))
HE_ITEMS = (HE0, HE2, HE13, HE55)

GCD_BODY = "    while b:\n        a, b = b, a % b\n    return a\n"
GCD_DEF = "def greatest_common_divisor(a: int, b: int) -> int:\n" + GCD_BODY
FIB_DEF = "def fib(n: int):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
HCE_BODY = ("    ordered = sorted(numbers)\n    for x, y in zip(ordered, ordered[1:]):\n"
            "        if y - x < threshold:\n            return True\n    return False\n")

# (item, completion, expected score, id)
HE_CASES = [
    # -- true positives
    (HE13, GCD_BODY + EOT * 20, 1, "body-then-endoftext-run"),
    (HE13, GCD_BODY + MASK * 30, 1, "body-then-mdm-mask-run"),
    (HE13, GCD_BODY + "<|mask|><|mask|>[PAD][PAD][PAD]", 1, "body-then-mask-and-PAD-run"),
    (HE13, "<|im_start|>assistant\n" + GCD_BODY + "<|im_end|>\n<|im_start|>user\nthanks<|im_end|>", 1,
     "chatml-turn-then-hallucinated-user-turn"),
    (HE13, "<|start_header_id|>assistant<|end_header_id|>\n\n```python\n" + GCD_DEF + "```<|eot_id|>", 1,
     "llama3-header-fenced-restated-eot_id"),
    (HE13, GCD_BODY + "</s><s>def greatest_common_divisor(a, b):\n    return 0\n", 1, "body-</s>-then-wrong-junk"),
    (HE13, GCD_BODY + "<eos><eos><pad><pad>", 1, "body-gemma-eos-pad-tail"),
    (HE13, "Here is the function:\n\n```python\n" + GCD_DEF + "```\n\nIt uses Euclid's algorithm.", 1,
     "prose-around-python-fence"),
    (HE13, "```\n" + GCD_DEF + "```", 1, "bare-fence"),
    (HE13, "```Python\r\n" + GCD_DEF.replace("\n", "\r\n") + "```\r\n", 1, "Python-fence-crlf"),
    (HE13, "~~~python\n" + GCD_DEF + "~~~\n", 1, "tilde-fence"),
    (HE13, GCD_BODY.replace("\n", "\r\n"), 1, "body-crlf"),
    (HE13, GCD_DEF, 1, "restated-signature-unfenced"),
    (HE13, "def greatest_common_divisor(a, b):\n\twhile b:\n\t\ta, b = b, a % b\n\treturn a\n", 1,
     "restated-tab-indented"),
    (HE13, "import math\n\n\ndef greatest_common_divisor(a: int, b: int) -> int:\n    return math.gcd(a, b)\n", 1,
     "restated-with-import"),
    (HE13, "    import math\n    return math.gcd(a, b)\n", 1, "body-local-import"),
    (HE13, "    print('debug', a, b)\n" + GCD_BODY, 1, "print-noise-in-body"),
    (HE13, GCD_BODY + "\n\nprint(greatest_common_divisor(25, 15))\nwhile True:\n    pass\n", 1,
     "top-level-demo-cut-before-loop"),
    (HE13, GCD_DEF + "\n\nif __name__ == '__main__':\n    import doctest\n    doctest.testmod()\n", 1,
     "restated-with-main-block"),
    (HE13, GCD_DEF + "\n\nassert greatest_common_divisor(3, 5) == 2\n", 1, "restated-own-wrong-assert-cut"),
    (HE13, GCD_DEF + "\n" + GCD_DEF + "\n" + GCD_DEF, 1, "restated-repeated-3x"),
    (HE13, GCD_DEF + "\n" + GCD_DEF + "\ndef greatest_common_divisor(a: int, b: int) -> int:\n"
     "    while b:\n        a, b = b, a %", 1, "restated-repeated-last-copy-truncated"),
    (HE13, "```python\n" + GCD_DEF + "```\n```python\n" + GCD_DEF + "```\n```python\ndef greatest_", 1,
     "fenced-answer-repeated-until-canvas-ends"),
    (HE55, FIB_DEF + "\n\n# Example usage\nprint(fib(10))\n", 1, "restated-with-example-usage"),
    (HE55, '    """Iterative."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
     1, "body-with-own-docstring"),
    (HE0, "```python\nfrom typing import List\n\n\ndef _pairs(xs):\n    s = sorted(xs)\n    return zip(s, s[1:])\n\n\n"
     "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
     "    return any(y - x < threshold for x, y in _pairs(numbers))\n```", 1, "restated-with-helper-function"),
    (HE0, "    def close(x, y):\n        return abs(x - y) < threshold\n"
     "    return any(close(x, y) for i, x in enumerate(numbers) for y in numbers[i + 1:])\n", 1,
     "body-with-nested-helper"),
    (HE0, HCE_BODY + "\n\n\ndef main():\n    print(has_close_elements([1.0], 0.5))\n", 1, "body-then-main-cut"),
    (HE2, "    return number - int(number)\n<|endoftext|>\n\n    return 0.0\n", 1, "endoftext-then-wrong-repeat"),
    # -- true negatives
    (HE13, "    while b:\n        a, b = b, a % b\n", 0, "truncated-before-return"),
    (HE13, "    while b:\n        a, b = b, a %" + MASK * 10, 0, "truncated-mid-expression-masks"),
    (HE13, "```python\ndef greatest_common_divisor(a: int, b: int) -> int:\n    while b:\n", 0,
     "unclosed-fence-truncated"),
    (HE13, "def greatest_common_divisor(a: int, b: int) -> int:\n    while b:\n        a, b = b, a %", 0,
     "restated-truncated-only-copy"),
    (HE13, "    return min(a, b)\n", 0, "wrong-min"),
    (HE13, "    return a if a == b else 1\n", 0, "passes-first-assert-only"),
    (HE13, "    while a != b:\n        a = a - b\n    return a\n", 0, "wrong-subtraction-loop"),
    (HE55, "    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 3)\n", 0, "wrong-recurrence"),
    (HE55, "    return [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55][n]\n", 0, "lookup-table-passes-3-of-5"),
    (HE0, "    return len(numbers) > 1\n", 0, "degenerate"),
    (HE0, "    return any(abs(x - y) < threshold for x in numbers for y in numbers)\n", 0, "compares-x-with-itself"),
    (HE2, "    return round(number % 1, 1)\n", 0, "rounding-passes-first-only"),
    (HE13, "<|im_start|>assistant\n```python\ndef greatest_common_divisor(a, b):\n    return a * b\n```<|im_end|>",
     0, "chatml-fenced-wrong"),
    (HE13, EOT * 10, 0, "only-endoftext"),
    (HE13, MASK * 40, 0, "only-masks"),
    (HE13, "I cannot solve this.<|im_end|>", 0, "prose-only"),
    (HE13, "    raise SystemExit(0)\n", 0, "exit-0-before-tests"),
    (HE13, "    while True:\n        pass\n", 0, "infinite-loop-body"),
    (HE55, "def fib(n: int):\n    while n:\n        n += 1\n    return n\n", 0, "infinite-loop-restated"),
]


# -- real MBPP problems (test_list exactly as in the dataset, no test_setup_code) ------------------
def _mb(task_id: int, tests: list[str]) -> Item:
    return Item(id=f"mbpp/{task_id}", prompt="", reference="",
                meta={"task_id": task_id, "test_list": tests, "test_setup_code": "", "code": ""})


MB11 = _mb(11, ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                'assert remove_Occ("PHP","P") == "H"'])
MB17 = _mb(17, ["assert square_perimeter(10)==40", "assert square_perimeter(5)==20",
                "assert square_perimeter(4)==16"])
MB19 = _mb(19, ["assert test_duplicate(([1,2,3,4,5]))==False", "assert test_duplicate(([1,2,3,4, 4]))==True",
                "assert test_duplicate([1,1,2,2,3,3,4,4,5])==True"])
MB23 = _mb(23, ["assert maximum_Sum([[1,2,3],[4,5,6],[10,11,12],[7,8,9]]) == 33",
                "assert maximum_Sum([[0,1,1],[1,1,2],[3,2,1]]) == 6",
                "assert maximum_Sum([[0,1,3],[1,2,1],[9,8,2],[0,1,0],[6,4,8]]) == 19"])
MB_ITEMS = (MB11, MB17, MB19, MB23)

RM = ("def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n        s = s[:i] + s[i + 1:]\n"
      "    j = s.rfind(ch)\n    if j >= 0:\n        s = s[:j] + s[j + 1:]\n    return s\n")
SQ = "def square_perimeter(a):\n    return 4 * a\n"
DUP = "def test_duplicate(arraynums):\n    return len(set(arraynums)) != len(arraynums)\n"
MS = "def maximum_Sum(list1):\n    return max(sum(x) for x in list1)\n"
NEXT = "\n\nYou are an expert Python programmer, and here is your task: Write a function to"
NEXT_PROBLEM = (NEXT + " find the area of a circle. Your code should pass these tests:\n\nassert area(1) == 3\n"
                "[BEGIN]\ndef area(r):\n    return 3 * r * r\n[DONE]")

MB_CASES = [
    # -- true positives
    (MB11, RM + "[DONE]" + NEXT, 1, "done-then-next-problem-text"),
    (MB17, SQ + "[DONE]" + NEXT_PROBLEM, 1, "done-then-whole-hallucinated-problem"),
    (MB11, RM + "[DONE]" + EOT * 20, 1, "done-then-endoftext-run"),
    (MB11, RM + MASK * 30, 1, "no-done-mask-run"),
    (MB11, RM.replace("\n", "\r\n") + "[DONE]\r\n", 1, "crlf"),
    (MB11, RM.replace("    ", "\t") + "[DONE]", 1, "tab-indented"),
    (MB17, "[BEGIN]\n" + SQ + "[DONE]", 1, "echoed-begin"),
    (MB17, "\n" + SQ + "[DONE]\n[BEGIN]\n" + SQ + "[DONE]\n[BEGIN]\ndef square_per", 1,
     "block-repeated-last-copy-truncated"),
    (MB17, SQ + "\n" + SQ + "\ndef square_perimeter(a):\n    return 4 *", 1, "no-done-def-repeated-truncated"),
    (MB17, "```python\n" + SQ + "```\n[DONE]", 1, "fence-then-done"),
    (MB17, "Here is the code:\n```python\n" + SQ + "```\nThis multiplies the side by 4.", 1, "prose-around-fence"),
    (MB17, "~~~python\n" + SQ + "~~~\n[DONE]", 1, "tilde-fence"),
    (MB17, "```\n" + SQ + "```", 1, "bare-fence"),
    (MB17, "```python\n" + SQ, 1, "unclosed-fence-complete-code"),
    (MB17, "<|im_start|>assistant\n```python\n" + SQ + "```<|im_end|>" + EOT * 5, 1, "chatml-fence"),
    (MB17, "<start_of_turn>model\n" + SQ + "[DONE]<end_of_turn>", 1, "gemma-turn"),
    (MB19, "import collections\n\n\ndef _counts(xs):\n    return collections.Counter(xs)\n\n\n"
     "def test_duplicate(arraynums):\n    return any(c > 1 for c in _counts(arraynums).values())\n[DONE]", 1,
     "import-and-helper"),
    (MB19, DUP + "\nprint(test_duplicate([1, 2, 2]))\n[DONE]", 1, "print-noise"),
    (MB19, DUP + "\n\nassert test_duplicate([1, 2, 3]) == False\n[DONE]", 1, "own-correct-assert"),
    (MB19, DUP + DUP + "[DONE]", 1, "def-repeated"),
    (MB23, MS + "[DONE]</s>", 1, "done-then-</s>"),
    (MB23, "<|start_header_id|>assistant<|end_header_id|>\n\n" + MS + "[DONE]<|eot_id|>", 1, "llama3-turn"),
    (MB23, "def maximum_Sum(list1):\n    best = None\n    for row in list1:\n        s = 0\n        for v in row:\n"
     "            s += v\n        if best is None or s > best:\n            best = s\n    return best\n[DONE]", 1,
     "explicit-loops"),
    # -- true negatives
    (MB23, "    " + MS.replace("\n", "\n    ") + "[DONE]", 0, "whole-code-indented"),
    (MB11, "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n[DONE]", 0, "removes-first-only"),
    (MB11, "def remove_Occ(s, ch):\n    return s.strip(ch)\n[DONE]", 0, "strip-passes-2-of-3"),
    (MB11, "def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n        s = s[:i] + s[i + 1:]\n" + MASK * 9,
     0, "truncated-no-return"),
    (MB11, "def remove_Occ(s, ch):\n    return s.strip(", 0, "truncated-mid-call"),
    (MB17, "def square_perimeter(a):\n    return a * a\n[DONE]", 0, "area-not-perimeter"),
    (MB17, "def square_perimeter(a):\n    return 40 if a == 10 else 20\n[DONE]", 0, "passes-2-of-3"),
    (MB17, "```python\ndef square_perimeter(a):\n    return 4 *", 0, "unclosed-fence-truncated"),
    (MB17, "def square_perimeter(a):\n    return a * a\n[DONE]\n[BEGIN]\n" + SQ + "[DONE]", 0,
     "wrong-first-answer-right-after-done"),
    (MB19, "def test_duplicate(arraynums):\n    return len(arraynums) > len(set(arraynums[1:]))\n[DONE]", 0,
     "wrong-slice"),
    (MB19, "def test_duplicate(arraynums):\n    while True:\n        pass\n[DONE]", 0, "infinite-loop"),
    (MB23, "def maximum_Sum(list1):\n    return sum(max(x) for x in list1)\n[DONE]", 0, "sum-of-maxima"),
    (MB23, "def max_sum(list1):\n    return max(sum(x) for x in list1)\n[DONE]", 0, "wrong-function-name"),
    (MB23, "[DONE]" + EOT * 10, 0, "empty-done"),
    (MB23, MASK * 50, 0, "only-masks"),
    (MB23, "I am unable to write this function.<|im_end|>", 0, "prose-only"),
    (MB23, "import sys\nsys.exit(0)\n" + MS + "[DONE]", 0, "exit-0-before-tests"),
]


def _score_all(name: str, cases: list) -> list[float]:
    task = TASKS.build(name, {"timeout_s": TIMEOUT_S})
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda case: task.score(case[0], case[1]), cases))


@pytest.fixture(scope="module")
def he_scores() -> list[float]:
    return _score_all("humaneval", HE_CASES)


@pytest.fixture(scope="module")
def mb_scores() -> list[float]:
    return _score_all("mbpp", MB_CASES)


def test_case_counts_and_balance():
    for cases in (HE_CASES, MB_CASES):
        assert len(cases) >= 32
        assert sum(c[2] == 1 for c in cases) >= 12 and sum(c[2] == 0 for c in cases) >= 12
        assert len({c[3] for c in cases}) == len(cases)  # ids unique


@pytest.mark.parametrize("index", range(len(HE_CASES)), ids=[c[3] for c in HE_CASES])
def test_humaneval_messy(he_scores, index):
    item, completion, expected, _ = HE_CASES[index]
    assert he_scores[index] == expected, TASKS.build("humaneval").program(item, completion)


@pytest.mark.parametrize("index", range(len(MB_CASES)), ids=[c[3] for c in MB_CASES])
def test_mbpp_messy(mb_scores, index):
    item, completion, expected, _ = MB_CASES[index]
    assert mb_scores[index] == expected, TASKS.build("mbpp").program(item, completion)


def test_problems_match_the_datasets():
    """The inline problems are the real ones (checked when the offline copies exist)."""
    he_path = data_mod.data_dir() / "humaneval" / "HumanEval.jsonl.gz"
    mb_path = data_mod.data_dir() / "mbpp" / "mbpp.jsonl"
    if not he_path.is_file() or not mb_path.is_file():
        pytest.skip("offline HumanEval/MBPP copies absent")
    with gzip.open(he_path, "rt") as f:
        he = {r["task_id"]: r for r in map(json.loads, filter(str.strip, f))}
    for item in HE_ITEMS:
        row = he[item.id]
        assert (item.prompt, item.meta["test"], item.meta["entry_point"]) == (
            row["prompt"], row["test"], row["entry_point"])
    with open(mb_path) as f:
        mb = {int(r["task_id"]): r for r in map(json.loads, filter(str.strip, f))}
    for item in MB_ITEMS:
        row = mb[item.meta["task_id"]]
        assert item.meta["test_list"] == row["test_list"] and not row.get("test_setup_code")
