"""GSM8K: the extractor and scorer on hand-made messy model outputs; prompts; offline loading."""
from __future__ import annotations

import pytest

from harness.registry import TASKS
from harness.tasks import data as data_mod
from harness.tasks._passk import mean_pass_at_k, pass_at_k
from harness.tasks.gsm8k import extract
from harness.types import HarnessError, Item

HAVE_DATA = (data_mod.data_dir() / "gsm8k" / "test.jsonl").is_file()
ITEM = Item(id="x", prompt="", reference="18")
BIG = Item(id="y", prompt="", reference="1234")
NEG = Item(id="z", prompt="", reference="-3")

CASES = [
    # (completion, item, expected score)
    ("She sells 16 - 3 - 4 = 9 eggs for 9 * 2 = 18 dollars.\n#### 18", ITEM, 1),
    ("#### 18", ITEM, 1),
    ("####18", ITEM, 1),
    ("... so she makes $18.\n#### $18", ITEM, 1),
    ("#### 18.00", ITEM, 1),
    ("#### 18.", ITEM, 1),
    ("The answer is 18.", ITEM, 1),
    ("The answer is $18.00.", ITEM, 1),
    ("Therefore the final answer is: 18 dollars", ITEM, 1),
    ("9 eggs at $2 each is \\boxed{18}.", ITEM, 1),
    ("\\boxed{\\$18}", ITEM, 1),
    ("<reasoning>16-3-4=9, 9*2=18</reasoning>\n<answer>18</answer>", ITEM, 1),
    ("<reasoning>9*2 = 18</reasoning><answer>\n$18\n</answer><|im_end|>", ITEM, 1),
    ("<answer>18", ITEM, 1),  # truncated before the closing tag
    ("#### 18<|endoftext|><|endoftext|><|endoftext|>", ITEM, 1),
    ("#### 18<|mdm_mask|><|mdm_mask|>20<|mdm_mask|>", ITEM, 0),  # masks removed: "1820" is not 18
    ("#### 18\n#### 18\n#### 18\n#### 18", ITEM, 1),  # repeated until the canvas ends
    ("The answer is 18. The answer is 18. The answer is 18.", ITEM, 1),
    ("<|im_start|>assistant\nShe makes 18 dollars.<|im_end|>\n<|im_start|>user\nWhat about 25?", ITEM, 1),
    ("She makes 18 dollars per day.</s></s></s>", ITEM, 1),
    ("<|start_header_id|>assistant<|end_header_id|>\n\n18<|eot_id|>", ITEM, 1),
    ("18<eos><pad><pad><pad>", ITEM, 1),
    ("It is 9 * 2 = 18", ITEM, 1),  # last number
    ("#### 17", ITEM, 0),
    ("The answer is 81.", ITEM, 0),
    ("#### 180", ITEM, 0),
    ("#### 1.8", ITEM, 0),
    ("She makes 18 dollars, no wait, 20 dollars", ITEM, 0),  # the last number counts
    ("#### 16 - 3 - 4 = 9 ", ITEM, 0),
    ("", ITEM, 0),
    ("<|endoftext|><|endoftext|>", ITEM, 0),
    ("I do not know.", ITEM, 0),
    ("9 * 2 = 1", ITEM, 0),  # truncated mid-number
    ("#### 1,234", BIG, 1),
    ("The total is $1,234.00.", BIG, 1),
    ("#### 1234", BIG, 1),
    ("#### 1 234", BIG, 0),
    ("#### 123", BIG, 0),
    ("#### -3", NEG, 1),
    ("The temperature fell to \u22123 degrees.", NEG, 1),
    ("#### 3", NEG, 0),
]


@pytest.mark.parametrize("completion, item, expected", CASES)
def test_gsm8k_scores_messy_outputs(completion, item, expected):
    assert TASKS.build("gsm8k").score(item, completion) == expected


@pytest.mark.parametrize("completion, expected", [
    ("#### 18.50", "18.5"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("The answer is 1/3", "1/3"), ("nothing", None),
    ("#### 007", "7"), ("answer is .5", "0.5"),
])
def test_gsm8k_extract_canonical_text(completion, expected):
    assert extract(completion) == expected


def test_pass_at_k_unbiased_estimator():
    from math import comb
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 4), (5, 5, 2), (200, 13, 10), (7, 6, 2)]:
        exact = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)  # large n: no overflow
    assert mean_pass_at_k([(1, 1), (1, 0)], 1) == 0.5
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_gsm8k_parameters_are_checked():
    with pytest.raises(HarnessError, match="prompt_format"):
        TASKS.build("gsm8k", {"prompt_format": "chatty"})
    with pytest.raises(HarnessError, match="fewshot"):
        TASKS.build("gsm8k", {"prompt_format": "cot", "fewshot": 9})
    assert TASKS.build("gsm8k").gen_length == 256
    with pytest.raises(HarnessError, match="the d1-eval format is zero-shot"):
        TASKS.build("gsm8k", {"prompt_format": "d1-eval", "fewshot": 2})
    with pytest.raises(HarnessError, match="fewshot_sampler lm-eval draws the plain format's train exemplars"):
        TASKS.build("gsm8k", {"prompt_format": "cot", "fewshot": 4, "fewshot_sampler": "lm-eval"})
    with pytest.raises(HarnessError, match="fewshot_processes must be an integer >= 1, got 0"):
        TASKS.build("gsm8k", {"fewshot": 5, "fewshot_sampler": "lm-eval", "fewshot_processes": 0})
    with pytest.raises(HarnessError, match="fewshot_sampler: expected one of .first., .lm-eval."):
        TASKS.build("gsm8k", {"fewshot_sampler": "random"})
    assert TASKS.build("gsm8k", {"prompt_format": "d1-eval"}).prefill == "<reasoning>"
    assert TASKS.build("gsm8k").prefill == "" and TASKS.build("math500", {"prompt_format": "d1-eval"}).prefill
    with pytest.raises(HarnessError, match=r"fewshot must be 0..4 \(0 for d1-eval\)"):
        TASKS.build("math500", {"prompt_format": "d1-eval", "fewshot": 1})


@pytest.mark.skipif(not HAVE_DATA, reason="offline data directory (../shared/data) absent")
def test_gsm8k_offline_items_and_prompts(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = TASKS.build("gsm8k")
    test = task.items("test")
    assert len(test) == 1319 and len(task.docs("train")) == 7473
    assert test[0].prompt.startswith("Question: Janet") and test[0].prompt.endswith("\nAnswer:")
    assert test[0].reference == "18"
    assert test == [task.doc_to_item(d, i) for i, d in enumerate(task.docs("test"))]
    assert task.source().startswith("local:") and "sha256=3730d312" in task.source()
    five = TASKS.build("gsm8k", {"fewshot": 5}).items("test")[0].prompt
    first_train = task.docs("train")[0]
    assert five.startswith(f"Question: {first_train['question']}\nAnswer: {first_train['answer']}\n\n")
    assert five.count("Question:") == 6 and five.count("####") == 5
    eight = TASKS.build("gsm8k", {"fewshot": 8}).items("test")[0].prompt
    assert eight.count("Question:") == 9 and eight.startswith("Question: There are 15 trees")
    cot = TASKS.build("gsm8k", {"prompt_format": "cot", "fewshot": 8}).items("test")[0].prompt
    assert cot.count("The answer is") == 8 and cot.endswith("\nA:")
    d1 = TASKS.build("gsm8k", {"prompt_format": "d1"}).items("test")[0].prompt
    assert "<answer>" in d1 and d1.startswith("Janet")
    # Every reference answer extracted from its own full solution text scores 1.
    assert all(task.score(i, d["answer"]) == 1.0 for i, d in zip(test, task.docs("test")))
