"""Scoring protocols on hand-made messy outputs: one expected verdict per (output, protocol).

Each table row is a completion a real model could write, with the verdict every protocol must
give (1 correct, 0 not). The expectations were worked out by hand from each protocol's rules
(harness/tasks/base.py and the task docstrings): the d1 columns follow dllm-reasoning/d1
`eval/parse_and_get_acc.py` (`parse_gsm_answers`, `parse_math_answers`, `parse_countdown_answers`,
`parse_sudoku_answers`), its `parser_helper` (`last_boxed_only_string`, `remove_boxed`,
`is_equiv`) and `parsers.Parser.extract_answer_gsm8k` (read in the forks SimonCao1207/d1 and
xiaohangt/wd1), quirks included: the first numeric box wins for GSM8K, commas split numbers, a
negative GSM8K reference never matches, with no box the whole text is the MATH answer and the
Countdown equation (so a lone `<answer>` tag is not read), a claimed wrong value after `=` is
ignored for Countdown, Sudoku cells are compared with the reference only. The lm-eval
columns follow lm-evaluation-harness tasks/gsm8k/gsm8k.yaml (strict-match, flexible-extract,
exact_match with its regexes_to_ignore) and minerva_math's `math_verify` metric.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.registry import TASKS
from harness.types import HarnessError

GSM8K = TASKS.build("gsm8k", {})

# (completion, reference, harness, d1, lm-eval strict-match, lm-eval flexible-extract, strict)
GSM8K_CASES = [
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", 1, 0, 1, 1, 1),
    ("<reasoning>3*4=12</reasoning>\n<answer>\\boxed{12}</answer>", "12", 1, 1, 0, 1, 1),
    ("The total is \\boxed{43,500}.", "43500", 1, 0, 0, 1, 1),  # d1 reads 43
    ("Adding them gives 20 + 16 = \\boxed{36", "36", 1, 0, 0, 1, 0),  # unclosed box: last-number fallback
    ("\\boxed{} so 12 apples", "12", 1, 0, 0, 1, 0),  # an empty box declares nothing
    ("First \\boxed{5}, wait, actually \\boxed{7}.", "7", 1, 0, 0, 1, 0),  # d1: the first box
    ("First \\boxed{5}, wait, actually \\boxed{7}.", "5", 0, 1, 0, 0, 0),
    ("The answer is 42.\n\nQuestion: Tom has 3 apples and eats 1. The answer is 7.", "42", 1, 0, 0, 1, 1),
    ("#### 18.00", "18", 1, 0, 0, 0, 1),  # lm-eval compares text
    ("<answer>$1,250</answer>", "1250", 1, 0, 0, 1, 1),  # d1: the last number of '$1,250' is 250
    ("<answer>\n\\boxed{\\frac{1}{2}}\n</answer>", "0.5", 1, 0, 0, 0, 1),  # d1's regex stops at the first }
    ("<answer>The answer is 30</answer> blah 99", "30", 1, 1, 0, 0, 1),
    ("<answer></answer> The final count is 15.", "15", 1, 0, 0, 1, 0),
    ("<|im_start|>assistant\nShe pays 3 * 4 = 12 dollars.\n#### 12<|im_end|><|endoftext|><|endoftext|>", "12",
     1, 0, 1, 1, 1),
    ("The temperature drops to \\boxed{-5} degrees.", "-5", 1, 0, 0, 1, 1),  # d1: its reference reads no sign
    ("#### 1,000,000", "1000000", 1, 0, 1, 1, 1),
    ("I am not sure.", "3", 0, 0, 0, 0, 0),
    ("<answer>\\boxed{3.0}</answer>", "3", 1, 1, 0, 0, 1),
    ("\\boxed{...} then the answer is \\boxed{8}", "8", 1, 1, 0, 1, 1),  # d1 skips a box of dots
    ("The answer is 25 dollars per hour, so 25 * 8 = 200 for the day.", "200", 0, 0, 0, 1, 1),
    ("#### 12\n#### 15", "12", 1, 0, 1, 0, 0),  # strict: two declared answers disagree
    ("Answer: \\boxed{\\$18}", "18", 1, 1, 0, 1, 1),
    ("<answer>5 + 3 = 8</answer>", "8", 1, 1, 0, 1, 1),
    ("It drops by \\boxed{-10} degrees.", "-10", 1, 0, 0, 1, 1),
    ("So \\boxed{10 - 3 = 7}.", "7", 0, 0, 0, 1, 1),  # harness and d1 read a box's first number; strict its result
]


@pytest.mark.parametrize("text,ref,harness,d1,lm_strict,lm_flex,strict", GSM8K_CASES)
def test_gsm8k_protocols(text, ref, harness, d1, lm_strict, lm_flex, strict):
    item = GSM8K.item_from_answer("x", "q", ref)
    assert GSM8K.grade(item, text, "harness").value == harness
    assert GSM8K.grade(item, text, "d1").value == d1
    lm = GSM8K.grade(item, text, "lm-eval")
    assert (lm.value, lm.extra["strict-match"], lm.extra["flexible-extract"]) == (lm_strict, lm_strict, lm_flex)
    assert lm.metric == "exact_match"
    assert GSM8K.grade(item, text, "strict").value == strict


def test_gsm8k_cot_strict_match_reads_the_answer_is():
    """gsm8k-cot.yaml: strict-match is `The answer is (\\-?[0-9\\.\\,]+).`, not `####`."""
    cot = TASKS.build("gsm8k", {"prompt_format": "cot"})
    item = cot.item_from_answer("x", "q", "8")
    assert cot.grade(item, "23 - 15 is 8. The answer is 8.", "lm-eval").value == 1.0
    assert cot.grade(item, "23 - 15 is 8.\n#### 8", "lm-eval").value == 0.0


MATH500 = TASKS.build("math500", {})

# (completion, reference, harness, d1, lm-eval math_verify, strict)
MATH_CASES = [
    ("So $x = \\boxed{\\frac{1}{4}}$.", "\\frac14", 1, 1, 1, 1),
    ("The probability is \\boxed{0.25}.", "\\frac14", 1, 0, 1, 1),  # d1 compares normalised strings
    ("Hence $z = \\boxed{7i - 2}$.", "-2 + 7i", 1, 0, 1, 1),
    ("The side is \\boxed{12 \\text{ cm}}.", "12", 1, 1, 1, 1),
    ("Adding, the answer is \\boxed{36", "36", 0, 0, 0, 0),  # truncated: no answer
    ("Maybe \\boxed{2}. No: \\boxed{3}.", "3", 1, 1, 0, 0),  # strict: disagree; math-verify reads the set {2, 3}
    ("<answer>5</answer> \\boxed{}", "5", 1, 1, 0, 1),
    ("Final Answer: The final answer is $\\frac{2}{3}$. I hope it is correct.", "\\frac{2}{3}", 1, 0, 1, 1),
    ("Therefore $x = \\boxed{5}$.", "5", 1, 1, 1, 1),
    ("\\boxed{x = 5}", "5", 1, 1, 1, 1),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1, 1, 1, 1),
    ("The angle is \\boxed{90^\\circ}.", "90", 1, 1, 1, 1),
    ("\\boxed{50\\%}", "50", 1, 1, 1, 1),
    ("<answer>\\sqrt{2}</answer>", "\\sqrt2", 1, 0, 0, 1),  # d1: no box, so the whole text is the answer
    ("5", "5", 0, 1, 1, 0),  # ... right when the whole text is the answer; harness/strict need a declared one
    ("\\boxed{(1, 2)}", "(1,2)", 1, 1, 1, 1),
    ("The answer is 6.", "6", 1, 0, 1, 0),  # strict reads no prose
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", 1, 1, 1, 1),
    ("\\fbox{4}", "4", 1, 0, 0, 1),  # d1's remove_boxed refuses \fbox; math-verify does not read it
    ("\\boxed 5", "5", 1, 1, 1, 0),  # strict: only braced boxes
    ("I give up.", "3", 0, 0, 0, 0),
    ("\\boxed{1,000}", "1000", 1, 0, 1, 1),
    ("\\boxed{3.0}", "3", 1, 0, 1, 1),
]


@pytest.mark.parametrize("text,ref,harness,d1,lm,strict", MATH_CASES)
def test_math500_protocols(text, ref, harness, d1, lm, strict):
    item = MATH500.item_from_answer("x", "q", ref)
    assert MATH500.grade(item, text, "harness").value == harness
    assert MATH500.grade(item, text, "d1").value == d1
    v = MATH500.grade(item, text, "lm-eval")
    assert (v.value, v.metric) == (lm, "math_verify")
    assert MATH500.grade(item, text, "strict").value == strict


COUNTDOWN = TASKS.build("countdown3", {})
CD_ITEM = COUNTDOWN.item_from_answer("x", "44,19,35:98=", [[44, 19, 35], 98])

# (completion, harness, d1, strict); numbers 44, 19, 35, target 98
COUNTDOWN_CASES = [
    ("<answer>44 + 19 + 35</answer>", 1, 0, 1),  # d1: no box, the whole text (with its tags) is evaluated
    ("<answer>44 + 19 + 35 = 98</answer>", 1, 1, 1),  # d1: the `expr = N` regex digs it out
    ("<answer>(44 + 19) + 35 = 97</answer>", 0, 1, 0),  # d1 drops the claimed (wrong) value
    ("<answer>44 \\times 2 + 10</answer>", 0, 0, 0),
    ("\\boxed{35 + 44 + 19}", 1, 1, 1),
    ("<answer>44 + 19 + 35 + 0</answer>", 0, 0, 0),
    ("I think 44 + 19 + 35 works.", 1, 0, 0),  # d1 evaluates the whole sentence: invalid
    ("<answer>44+19+35</answer><answer>1+1</answer>", 0, 0, 0),
    ("<answer>19 * 35 / 44</answer>", 0, 0, 0),
    ("<answer>44 + 19 + 35.</answer>", 1, 0, 1),
    ("<answer>98 = 44 + 19 + 35</answer>", 1, 0, 0),
    ("\\boxed{(44+19)+35}", 1, 1, 1),
    ("44 + 35 + 19", 1, 1, 0),  # a bare expression: d1 evaluates the whole text; strict wants a tag or box
    ("\\boxed{44 - -19 + 35}", 0, 1, 0),  # Python's unary minus: only d1 accepts it
    ("<answer>\n44 + 19 + 35\n</answer>\nSo the answer is 98.", 1, 0, 1),
    ("<answer>44 + 19 + 35 = 98</answer><|endoftext|><|endoftext|>", 1, 1, 1),
    ("<reasoning>44 + 19 = 63, 63 + 35 = 98</reasoning><answer>44 + 19 + 35 = 98</answer>", 1, 0, 1),
    ("Unclosed \\boxed{44 + 19 <answer>(44 + 19) + 35</answer>", 1, 1, 1),  # d1 reads the tag only here
    ("<answer>$44 + 19 + 35$</answer>", 1, 0, 1),  # d1's character check refuses `$`
    ("<answer>19 + 44 + 35 = 98 </answer>", 1, 1, 1),
    ("<answer></answer>", 0, 0, 0),
    ("44 + 19 + 35 = 98", 1, 1, 0),  # strict: no tag, no box
    ("<answer>44 + 19 + 35 = 98</answer> \\boxed{1+2}", 1, 0, 1),  # d1: the box beats the tag
]


@pytest.mark.parametrize("text,harness,d1,strict", COUNTDOWN_CASES)
def test_countdown_protocols(text, harness, d1, strict):
    assert COUNTDOWN.grade(CD_ITEM, text, "harness").value == harness
    assert COUNTDOWN.grade(CD_ITEM, text, "d1").value == d1
    assert COUNTDOWN.grade(CD_ITEM, text, "strict").value == strict


SUDOKU = TASKS.build("sudoku4", {})
PUZZLE, SOLUTION = "3024400313022400", "3124421313422431"  # blanks at 1, 5, 6, 10, 14, 15
SD_ITEM = SUDOKU.item_from_answer("x", PUZZLE, SOLUTION)

# (completion, harness accuracy, d1 cell accuracy, strict accuracy)
SUDOKU_CASES = [
    ("<answer>3124421313422431</answer>", 1, 1, 1),
    ("<answer>\n3124\n4213\n1342\n2431\n</answer>", 1, 1, 1),
    ("3124421313422431", 1, 1, 1),
    ("The solution is 3124421313422431.", 1, 1, 0),
    ("<answer>3124 4213 1342 2431</answer>", 1, 1, 1),
    ("<answer>3124|4213|1342|2431</answer>", 1, 1 / 6, 1),  # d1 keeps the bars
    ("<answer>3124421313422432</answer>", 0, 5 / 6, 0),
    ("<answer>1124421313422431</answer>", 0, 1, 0),  # d1 never checks the givens
    ("<answer>31244213</answer>", 0, 3 / 6, 0),  # d1 pads with zeros
    ("Row 1: 3 1 2 4\nRow 2: 4 2 1 3\nRow 3: 1 3 4 2\nRow 4: 2 4 3 1", 1, 0, 0),
    ("<answer>\n```\n3124\n4213\n1342\n2431\n```\n</answer>", 1, 1, 0),
    ("", 0, 0, 0),
    ("<answer></answer> 3124421313422431", 1, 1, 0),
    ("<answer>3124421313422431<|eot_id|>", 1, 1, 1),
    ("<answer>1111222233334444</answer> <answer>3124421313422431</answer>", 1, 2 / 6, 1),  # d1: first tag
    ("<answer>3,1,2,4,4,2,1,3,1,3,4,2,2,4,3,1</answer>", 1, 1 / 6, 1),
    ("<answer>31244213134224311234</answer>", 1, 1, 0),
    ("<answer>312442131342243x</answer>", 0, 5 / 6, 0),
    ("<|mdm_mask|><answer>3124421313422431</answer><|endoftext|><|endoftext|>", 1, 1, 1),
    ("<answer>\n3 1 2 4\n4 2 1 3\n1 3 4 2\n2 4 3 1\n</answer>", 1, 1, 1),
    ("<answer>3024400313022400</answer>", 0, 0, 0),
]


@pytest.mark.parametrize("text,harness,d1_cells,strict", SUDOKU_CASES)
def test_sudoku_protocols(text, harness, d1_cells, strict):
    h = SUDOKU.grade(SD_ITEM, text, "harness")
    assert (h.value, h.metric) == (harness, "accuracy")
    d = SUDOKU.grade(SD_ITEM, text, "d1")
    assert d.metric == "cell_accuracy" and d.value == pytest.approx(d1_cells)
    assert d.extra["accuracy"] == float(d1_cells == 1)
    assert SUDOKU.grade(SD_ITEM, text, "strict").value == strict


def test_sudoku_cell_accuracy_beside_whole_puzzle():
    """Harness protocol: accuracy is primary, cell accuracy (blanks right / blanks) rides along."""
    v = SUDOKU.grade(SD_ITEM, "<answer>3124421313422432</answer>")
    assert (v.value, v.extra["cell_accuracy"], v.extra["blanks"]) == (0.0, pytest.approx(5 / 6), 6)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_declares_four_protocols(name):
    cls = TASKS.get(name)
    assert set(cls.protocols) == {"harness", "d1", "lm-eval", "strict"}
    for p, why in cls.protocols.items():
        assert why.strip(), (name, p)
        if why.startswith("n/a"):
            with pytest.raises(HarnessError, match="has no"):
                cls.check_protocol(p)


def test_unknown_protocol_names_the_known_ones():
    with pytest.raises(HarnessError, match="harness, d1, lm-eval, strict"):
        TASKS.build("gsm8k", {"protocol": "paper"})
    with pytest.raises(HarnessError, match="no 'lm-eval' protocol"):
        TASKS.build("sudoku4", {"protocol": "lm-eval"})


def test_stop_strings_cut_before_every_protocol_but_d1():
    """An invented next question after the answer is not read (gsm8k stops at "Question:")."""
    item = GSM8K.item_from_answer("x", "q", "42")
    text = "So she has 42 left.\n\nQuestion: Ann has 5 pens and buys 2. How many? She has 7."
    assert GSM8K.grade(item, text).value == 1.0
    assert GSM8K.grade(item, text, "strict").value == 0.0  # no declared answer before the cut
    assert GSM8K.score(item, text) == 1.0
    d1_text = "<answer>42</answer>\n\nQuestion: Next? <answer>7</answer>"
    assert GSM8K.grade(item, d1_text, "d1").value == 1.0  # d1 reads the raw text (first tag)


def test_gsm8k_lm_eval_protocol_equals_lm_eval_itself():
    """Conformance with EleutherAI/lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml: the
    `strict-match` and `flexible-extract` filters (lm_eval/filters/extraction.py `RegexFilter`,
    then take_first) and `exact_match` (lm_eval/api/metrics.py `exact_match_hf_evaluate`, with the
    yaml's ignore_case and regexes_to_ignore), run on every messy output above against the full
    reference solution, must give the lm-eval protocol's verdicts."""
    lm_eval = pytest.importorskip("lm_eval")
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    from harness.tasks.base import truncate_at_stop

    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    metric = cfg["metric_list"][0]
    filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
    for text, ref, *_ in GSM8K_CASES:
        item = GSM8K.item_from_answer("x", "q", ref)
        got = GSM8K.grade(item, text, "lm-eval").extra
        cut = truncate_at_stop(text, cfg["generation_kwargs"]["until"])
        for name, f in filters.items():
            rx = RegexFilter(regex_pattern=f["regex_pattern"], group_select=f.get("group_select", 0))
            pred = list(rx.apply([[cut]], [None]))[0][0]
            want = exact_match_hf_evaluate([pred], [f"Work.\n#### {ref}"],
                                           regexes_to_ignore=metric["regexes_to_ignore"],
                                           ignore_case=metric["ignore_case"],
                                           ignore_punctuation=metric["ignore_punctuation"])["exact_match"]
            assert got[name] == want, (text, name, pred)
