"""Prompt parity of the RL tables built on d1's evaluation code: `spg`, `wd1` and `d1-reported`.

Sources read (file and function), each against dllm-reasoning/d1 `eval/` (commit 837888f2):
- facebookresearch/SPG (commit a1c7120) `eval/gsm8k.py` `GSM8KDataset.create_prompt` and `collate_fn`,
  `eval/math500.py` `MATH500Dataset`, `eval/countdown.py` `CTDDataset.__getitem__`, `eval/eval.py`
  (`add_reasoning=True`, "prefill for all models"), `eval/generate.py`: statement for statement d1's (the
  same system prompts, the same layout, `tokenizer(prompts, padding_side="left", padding="longest")` with
  special tokens on). Two differences: `eval/sudoku.py` (`create_few_shot_prompt` over its own
  `short_example_1..3`, run with `--few_shot 3` on `dataset/test_sudoku_split_new.csv`) and
  `eval/parse_and_get_acc.py` `parse_gsm_answers`, which reads a third fallback after d1's two (the text
  after the last `<answer>`, or the whole generation, as a float, else its last number).
- xiaohangt/wd1 (commit 0898985) `eval/*.py` and `wd1/eval/evalR.py` (what `eval/run_eval_all.sh` runs):
  d1's code reformatted; the prompt, tokenizer call and parser are d1's.
- The three repositories ship the same `dataset/countdown_cd3_test.jsonl` and `dataset/4x4_test_sudoku.csv`
  (git blob ids below), the files of the harness countdown3 / sudoku4 `dataset: d1`.

So the rows use the harness `prompt_format: d1-eval` formats with `protocol.add_special_tokens`, as d1.yaml's
rows do; these tests check that they feed d1's ids, batch for batch the same as the d1 rows, and that what
still differs (SPG's 3-shot Sudoku, SPG's GSM8K reading) is declared `missing`.
"""
from __future__ import annotations

import csv
import hashlib

from harness import reproduce as R
from harness.tasks.data import data_dir

# llada_ckpt, llada and row_model are fixtures: imported so that the tests below can ask for them
from tests.reproduce.test_prompt_parity import (  # noqa: F401
    BOS,
    CTD_SYSTEM_PROMPT,
    GSM_SYSTEM_PROMPT,
    MATH500_SYSTEM_PROMPT,
    N_ITEMS,
    SUDOKU_SYSTEM_PROMPT,
    _chat,
    _d1_docs,
    _find,
    _jsonl,
    _ours,
    _task,
    llada,
    llada_ckpt,
    row_model,
)

RL_TABLES = ("spg", "wd1", "d1-reported")
# git blob ids of the test files in dllm-reasoning/d1, facebookresearch/SPG and xiaohangt/wd1 (identical in all three)
D1_FILES = {"countdown/cd3_test.jsonl": "426050624e8db0284203ef638a5ec6b6cd51b4a7",
            "sudoku/4x4_test.csv": "508c410ed6d26e2c686eb782b2846bc6d8e2b225"}


def _git_blob(path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _rows_of(task: str):
    return [(t, r) for t in RL_TABLES for r in _find(t).rows if r.harness_task and r.harness_task["name"] == task]


def _d1_source(tok, system: str, questions: list[str]) -> list[list[int]]:
    """d1's `create_prompt` (system prompt, blank line, question as one user turn, `<reasoning>` after the
    generation prompt) and `collate_fn` (`tokenizer(prompts)`: special tokens on), unpadded."""
    return [tok(_chat(tok, system + "\n\n" + q) + "<reasoning>")["input_ids"] for q in questions]


class _Cache:
    """The harness ids per (row layout, item index): rows that build their prompt alike share one encoding."""

    def __init__(self, load):
        self.load, self.ids = load, {}

    def __call__(self, row) -> list[list[int]]:
        key = (repr(row.harness_task), tuple(sorted(R.row_model_options(row).items())), row.protocol.get("prefill"))
        if key not in self.ids:
            model = self.load(row)
            self.ids[key] = [_ours(model, row, item) for item in _task(row).items("test")[:N_ITEMS]]
        else:
            R.check_prefill(row, _task(row))  # every row, not only the first of its layout
        return self.ids[key]


def test_rl_rows_declare_d1s_prompt_options():
    """Every row of the three tables: LLaDA's chat template with special tokens on (two BOS), `<reasoning>`
    prefilled, a d1-eval format; the only prompt still missing is SPG's 3-shot Sudoku."""
    for table in RL_TABLES:
        for r in _find(table).rows:
            where = f"{table}/{r.id}"
            assert R.row_model_options(r) == {"chat": True, "add_special_tokens": True}, where
            assert r.protocol["prefill"] == "<reasoning>" and r.protocol["scoring"] == "d1", where
            assert r.harness_task["params"]["prompt_format"] == "d1-eval", where
            prompt_missing = [m for m in r.missing if m.startswith("prompt:")]
            if table == "spg" and r.task == "sudoku":
                assert len(prompt_missing) == 1 and "3-shot" in prompt_missing[0], where
            else:
                assert prompt_missing == [], where


def test_rl_gsm8k_and_math500_rows_feed_the_d1_rows_ids(llada, row_model):  # noqa: F811
    """GSM8K and MATH500 rows of SPG, wd1 and d1-reported feed the ids of d1.yaml's rows (same task, same
    options), which are d1's `create_prompt` + `collate_fn` ids."""
    _, tok = llada
    ours = _Cache(row_model)
    d1_rows = {r.harness_task["name"]: r for r in _find("d1").rows}
    systems = {"gsm8k": (GSM_SYSTEM_PROMPT, "question"), "math500": (MATH500_SYSTEM_PROMPT, "problem")}
    for task, (system, key) in systems.items():
        ref = d1_rows[task]
        source = _d1_source(tok, system, [d[key] for d in _d1_docs(task)])
        assert source[0][:2] == [BOS, BOS]
        assert ours(ref) == source
        rows = _rows_of(task)
        assert {t for t, _ in rows} == set(RL_TABLES), task
        for table, r in rows:
            assert r.harness_task == ref.harness_task, f"{table}/{r.id}"
            assert R.row_model_options(r) == R.row_model_options(ref), f"{table}/{r.id}"
            assert ours(r) == source, f"{table}/{r.id}"


def test_rl_countdown_and_d1_sudoku_rows_feed_d1s_ids(llada, row_model):  # noqa: F811
    """Countdown rows (all three tables) and wd1's Sudoku rows (d1's 4x4 test file): d1's `CTDDataset` /
    `SudokuDataset.__getitem__` questions through `create_prompt`, on the files the three repositories share."""
    _, tok = llada
    for name, blob in D1_FILES.items():
        assert _git_blob(data_dir() / name) == blob, name
    ours = _Cache(row_model)
    rows = _jsonl(data_dir() / "countdown" / "cd3_test.jsonl")[:N_ITEMS]
    with open(data_dir() / "sudoku" / "4x4_test.csv", newline="") as f:
        grids = list(csv.DictReader(f))[:N_ITEMS]
    sources = {
        "countdown3": _d1_source(tok, CTD_SYSTEM_PROMPT, [
            f"Numbers: {[int(n) for n in r['input'].split(',')]}\nTarget: {int(r['output'])}" for r in rows]),
        "sudoku4": _d1_source(tok, SUDOKU_SYSTEM_PROMPT, [
            f"Solve the following Sudoku puzzle: {g['Puzzle']}\n" for g in grids]),
    }
    checked = set()
    for name, source in sources.items():
        for table, r in _rows_of(name):
            if r.harness_task["params"].get("dataset") != "d1":
                assert table == "spg" and name == "sudoku4", f"{table}/{r.id}"  # SPG's own split: below
                continue
            assert ours(r) == source, f"{table}/{r.id}"
            checked.add((table, name))
    assert checked == {("spg", "countdown3"), ("wd1", "countdown3"), ("d1-reported", "countdown3"),
                       ("wd1", "sudoku4")}


def test_spg_sudoku_rows_declare_the_three_shot_prompt_split_and_pooling(llada, row_model):  # noqa: F811
    """SPG's Sudoku rows: the harness feeds d1's zero-shot layout (no exemplar), which is not SPG's 3-shot
    prompt, on a set that is not SPG's split: the rows say so and never run."""
    _, tok = llada
    rows = [r for t, r in _rows_of("sudoku4") if t == "spg"]
    assert len(rows) == 21  # 7 models x 3 generation lengths
    first = rows[0]
    item = _task(first).items("test")[0]
    assert "Question:" not in item.prompt  # SPG's layout puts its exemplars, then "Question: ...\nAnswer:\n"
    question = f"Solve the following Sudoku puzzle: {item.meta['puzzle']}\n"
    assert _ours(row_model(first), first, item) == _d1_source(tok, SUDOKU_SYSTEM_PROMPT, [question])[0]
    for r in rows:
        kinds = sorted(m.split(":")[0] for m in r.missing)
        assert r.protocol["shots"] == 3 and not r.runnable, r.id
        assert {"prompt", "task", "scoring"} <= set(kinds), r.id


def test_spg_gsm8k_rows_declare_spgs_third_reading():
    """SPG's `parse_gsm_answers` also reads an unclosed `<answer>` (or a generation without one) by its last
    number; d1's parser, the harness d1 protocol, reads neither. SPG's GSM8K rows declare it; wd1's and
    d1-reported's (d1's parser) do not."""
    from harness.registry import TASKS

    task = TASKS.build("gsm8k", {"prompt_format": "d1-eval", "protocol": "d1"})
    item = task.items("test")[0]
    assert item.reference == "18"
    assert task.grade(item, "<answer>18</answer>").value == 1.0
    for text in ("She makes 9 * 2 = 18 dollars.\n<answer>\n18", "She makes 9 * 2 = 18 dollars."):
        verdict = task.grade(item, text)  # SPG's third reading: 18, correct
        assert verdict.value == 0.0 and verdict.extracted is None, text
    for table, r in _rows_of("gsm8k"):
        declares = any(m.startswith("scoring:") and "parse_gsm_answers" in m for m in r.missing)
        assert declares == (table == "spg"), f"{table}/{r.id}"
        if table == "spg":
            assert not r.runnable, r.id
