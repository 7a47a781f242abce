"""Countdown and Sudoku scorers on hand-made messy model outputs (true positives and negatives)."""
from __future__ import annotations

import pytest

from harness.registry import TASKS
from harness.types import Item

CD = Item(id="x", prompt="3,5,2:16=", reference="(3+5)*2", meta={"numbers": [3, 5, 2], "target": 16})
CD_CASES = [
    ("(3+5)*2", 1), ("2*(3+5)", 1), ("(5+3)*2<|endoftext|><|endoftext|>", 1), ("<answer>(3+5)*2</answer>", 1),
    ("<reasoning>3+5=8, 8*2=16</reasoning>\n<answer>(3 + 5) * 2</answer><|im_end|>", 1),
    ("<answer>(3+5)*2 = 16</answer>", 1), ("<answer>16 = (3+5)*2</answer>", 1), ("(3+5)\\times 2", 1),
    ("$(3 + 5) \\times 2 = 16$", 1), ("(3+5) x 2", 1), ("(3+5)×2", 1), ("Let me try 3*5+2=17. No.\n(3+5)*2=16", 1),
    ("<|im_start|>assistant\n(3+5)*2<|im_end|>", 1), ("(3+5)*2<|mdm_mask|><|mdm_mask|>", 1),
    ("The expression is (3+5)*2.", 1), ("<answer>(3+5)*2", 1),  # truncated closing tag
    ("3*5+2", 0), ("<answer>3*5+2</answer>", 0), ("(3+5)*2=15", 0), ("<answer>16</answer>", 0),
    ("(3+5)*2*2", 0), ("(3+3)*2", 0), ("(3+5)*", 0), ("(3+5)*(2", 0), ("", 0), ("<|endoftext|>", 0),
    ("-(3+5)*2", 0), ("(3+5)**2", 0), ("__import__('os').system('ls')", 0), ("(3+5)*2.0", 0),
    ("<answer>(3+5)*2=16</answer> and <answer>3+5+2</answer>", 0),  # the last answer counts
    ("(3+5)*2 is wrong; 3+5+2", 0),
]


@pytest.mark.parametrize("completion, expected", CD_CASES)
def test_countdown3_messy_outputs(completion, expected):
    assert TASKS.build("countdown3", {"n_test": 10, "n_train": 0}).score(CD, completion) == expected


PUZZLE, SOLUTION = "3102200002100320", "3142243142131324"
SD = Item(id="x", prompt=PUZZLE + "=", reference=SOLUTION, meta={"puzzle": PUZZLE, "solution": SOLUTION})
ROWS = "\n".join(SOLUTION[i : i + 4] for i in range(0, 16, 4))
SD_CASES = [
    (SOLUTION, 1), (ROWS, 1), ("3 1 4 2\n2 4 3 1\n4 2 1 3\n1 3 2 4", 1),
    ("[[3,1,4,2],[2,4,3,1],[4,2,1,3],[1,3,2,4]]", 1),
    ("| 3 | 1 | 4 | 2 |\n| 2 | 4 | 3 | 1 |\n| 4 | 2 | 1 | 3 |\n| 1 | 3 | 2 | 4 |", 1),
    (f"<answer>{SOLUTION}</answer>", 1), (f"<answer>\n{ROWS}\n</answer><|im_end|>", 1),
    (f"<reasoning>Row 1 has 3, 1, 2 so the blank is 4.</reasoning><answer>{SOLUTION}</answer>", 1),
    (f"{SOLUTION}<|endoftext|><|endoftext|>", 1), (f"{SOLUTION}<|mdm_mask|><|mdm_mask|>", 1),
    (f"{PUZZLE}={SOLUTION}", 1), (f"Puzzle: {PUZZLE}\nSolution: {SOLUTION}", 1),
    ("Row 1: 3 1 4 2\nRow 2: 2 4 3 1\nRow 3: 4 2 1 3\nRow 4: 1 3 2 4", 1), (SOLUTION + "9999", 1),
    (f"The solved grid is {SOLUTION}.", 1), (f"<|im_start|>assistant\n{SOLUTION}<|im_end|>", 1),
    (SOLUTION[:15], 0), ("", 0), (PUZZLE, 0), ("3142243142131314", 0), ("2431314242131324", 0),
    (f"<answer>{PUZZLE}</answer>", 0), (f"<answer>{SOLUTION[:12]}</answer>", 0),
    (f"{SOLUTION}\nWait, actually {PUZZLE}", 0),  # the last grid counts
    ("Row 1: 3 1 4 2\nRow 2: 2 4 3 1\nRow 3: 4 2 1 3", 0), ("<|endoftext|>" * 3, 0), ("1234" * 4, 0),
    (SOLUTION.replace("4", "0", 1), 0), ("3 1 4 2 2 4 3 1 4 2 1 3 1 3 2", 0), ("I cannot solve this.", 0),
]


@pytest.mark.parametrize("completion, expected", SD_CASES)
def test_sudoku4_messy_outputs(completion, expected):
    assert TASKS.build("sudoku4", {"n_test": 10, "n_train": 0}).score(SD, completion) == expected
