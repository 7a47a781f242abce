"""MATH500: boxed-answer extraction and equivalence on hand-made messy outputs; prompts; loading."""
from __future__ import annotations

import pytest

from harness.registry import TASKS
from harness.tasks import data as data_mod
from harness.tasks._extract import last_boxed
from harness.tasks._math_equiv import is_equiv, normalize
from harness.tasks.math500 import extract
from harness.types import HarnessError, Item

HAVE_DATA = (data_mod.data_dir() / "math500" / "test.jsonl").is_file()


def item(ref: str) -> Item:
    return Item(id="x", prompt="", reference=ref)


CASES = [
    # (reference, completion, expected score)
    ("\\frac{1}{2}", "So $x = \\boxed{\\frac{1}{2}}$.", 1),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1),
    ("\\frac{1}{2}", "\\boxed{\\dfrac12}", 1),
    ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", 1),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", 0),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "The point is $\\boxed{(3,\\frac{\\pi}{2})}$", 1),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}", 0),
    ("[2,5)", "Final Answer: The final answer is $[2,5)$. I hope it is correct.", 1),
    ("[2,5)", "\\boxed{[2,5]}", 0),
    ("24", "We get \\boxed{24}.\nFinal Answer: The final answer is $24$. I hope it is correct.<|endoftext|>", 1),
    ("24", "\\boxed{24}\\boxed{24}\\boxed{24}", 1),  # repeated
    ("24", "First \\boxed{12}, but correcting: \\boxed{24}", 1),  # the last box counts
    ("24", "\\boxed{24} ... wait, \\boxed{25}", 0),
    ("24", "\\fbox{24}", 1),
    ("24", "\\boxed 24", 1),
    ("24", "The answer is $\\boxed{24", 0),  # truncated inside the box, nothing else
    ("24", "<answer>24</answer><|im_end|><|im_end|>", 1),
    ("24", "<answer>\\boxed{24}</answer>", 1),
    ("24", "<|mdm_mask|><|mdm_mask|>", 0),
    ("24", "", 0),
    ("24", "24.0 is the number but no box", 0),  # no answer marker: not guessed from prose
    ("90^\\circ", "\\boxed{90}", 1),
    ("90", "\\boxed{90^{\\circ}}", 1),
    ("10\\%", "\\boxed{10}", 1),
    ("5\\text{ cm}", "\\boxed{5}", 1),
    ("\\$18.90", "\\boxed{18.9}", 1),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{2}}", 0),
    ("x^2+2x", "\\boxed{2x + x^2}", 1),
    ("x^2+2x", "\\boxed{x^2-2x}", 0),
    ("3", "\\boxed{x=3}", 1),
    ("\\text{(C)}", "\\boxed{C}", 1),
    ("\\text{(C)}", "\\boxed{\\text{(D)}}", 0),
    ("1,2", "\\boxed{2, 1}", 1),
    ("10", "\\boxed{10,000}", 0),
    ("10000", "\\boxed{10,000}", 1),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", 1),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}", 0),
    ("\\{1,2\\}", "\\boxed{\\{1, 2\\}}", 1),
    ("-\\frac{2}{3}", "\\boxed{-\\frac{2}{3}}", 1),
    ("-\\frac{2}{3}", "\\boxed{\\frac{2}{3}}", 0),
    ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", 1),
    ("\\text{Evelyn}", "\\boxed{\\text{Bob}}", 0),
]


@pytest.mark.parametrize("reference, completion, expected", CASES)
def test_math500_scores_messy_outputs(reference, completion, expected):
    assert TASKS.build("math500").score(item(reference), completion) == expected


def test_boxed_extraction_nested_and_truncated():
    assert last_boxed("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed{1} and \\boxed{2") == "1"  # the unclosed last box is skipped
    assert last_boxed("no box") is None
    assert extract("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.") == "\\frac{3}{4}"
    assert extract("so the answer is $7$.") == "7"


def test_never_plain_string_equality_alone():
    assert normalize("\\left(1,2\\right)") == normalize("(1, 2)")
    assert is_equiv("0.50", "\\frac12") and not is_equiv("0.51", "\\frac12")
    assert not is_equiv(None, "1") and not is_equiv("", "1") and not is_equiv("1" * 1000, "1")


def test_math500_parameters_are_checked():
    with pytest.raises(HarnessError, match="fewshot"):
        TASKS.build("math500", {"fewshot": 5})
    with pytest.raises(HarnessError, match="split"):
        TASKS.build("math500").docs("train")


@pytest.mark.skipif(not HAVE_DATA, reason="offline data directory (../shared/data) absent")
def test_math500_offline_items_and_references(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = TASKS.build("math500")
    test = task.items("test")
    assert len(test) == 500 and task.source().startswith("local:") and "sha256=35dc4108" in task.source()
    assert test[0].prompt == f"Problem:\n{task.docs('test')[0]['problem']}\n\nSolution:"
    four = TASKS.build("math500", {"fewshot": 4}).items("test")[0].prompt
    assert four.count("Problem:") == 5 and four.count("I hope it is correct.") == 4
    # Each reference is equivalent to itself boxed, and (for a sample) not to another reference.
    assert all(task.score(i, f"\\boxed{{{i.reference}}}") == 1.0 for i in test)
    others = [(a, b) for a, b in zip(test[:60], test[1:61]) if normalize(a.reference) != normalize(b.reference)]
    assert sum(task.score(a, f"\\boxed{{{b.reference}}}") for a, b in others) == 0
