"""`sudoku4`: 4x4 Sudoku (digits 1-4, 0 = blank), generated from a seed or d1's test set.

Prompt (`prompt_format`): "compact", the 16-character puzzle read row by row, then `=` (e.g.
`1030040000203401=`); or "d1-eval", the prompt of d1's evaluation (dllm-reasoning/d1 `eval/sudoku.py`
`SudokuDataset.__getitem__` through `GSM8KDataset.create_prompt`): its system prompt (transcribed; it
starts and ends with a newline), a blank line, `Solve the following Sudoku puzzle: <16 digits>\\n` as
one user turn, the answer prefilled with `<reasoning>` (`prefill`). d1's eval.py evaluates a random
256 of the 500 puzzles (`np.random.choice` after its global seed 42); the harness items are all 500 in
file order. Reference:
the 16-character solution. Generated puzzles blank `n_blanks` cells of a grid drawn uniformly from
all 288 valid 4x4 grids. With `dataset="d1"` the test split is the exact d1 test set
(`sudoku/4x4_test.csv`, 500 puzzles with 8 blanks each); train is still generated, minus those
puzzles. The scorer accepts any valid grid that keeps every given cell, not only the reference.

Two metrics per completion: `accuracy` (the whole puzzle solved) and `cell_accuracy` (blank cells
filled correctly / blanks: every blank counts when the grid is a valid solution, else the blanks
that match the reference solution). Primary: `accuracy` under harness and strict; `cell_accuracy`
under d1, whose papers report it (the other is recorded beside it in `outcome.extra`).

Protocols (`protocol`, see harness/tasks/base.py):
- harness: `answer_grid` (`<answer>` content, the last run of >= 16 digits, or four 4-digit rows).
- d1: dllm-reasoning/d1 `eval/parse_and_get_acc.py::parse_sudoku_answers` (harness/tasks/_d1.py):
  its five patterns in order, padded/cut to 16; cells compared with the reference solution only;
  raw text.
- lm-eval: n/a (lm-evaluation-harness has no Sudoku task).
- strict: the `<answer>` content, or the whole completion when it has no tags, must be exactly 16
  digits (whitespace and `|` `,` separators allowed); no digits picked out of prose.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from math import comb
from typing import ClassVar, Literal

import numpy as np

from harness.registry import TASKS
from harness.tasks import _d1
from harness.tasks._extract import answer_span, clean
from harness.tasks.base import Task, Verdict
from harness.tasks.data import data_file, sha256_file
from harness.types import HarnessError, Item

# dllm-reasoning/d1 eval/sudoku.py SUDOKU_SYSTEM_PROMPT (a prompt string, transcribed)
D1_EVAL_SYSTEM_PROMPT = (
    "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE 16-character "
    "string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact format:\n"
    "<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n[16-character solution string with no "
    "spaces or separators]\n</answer>\n")
D1_EVAL_PREFILL = "<reasoning>"  # d1 eval/eval.py: add_reasoning=True, "prefill for all models"

D1_FILE = "sudoku/4x4_test.csv"
N_GRIDS = 288  # valid complete 4x4 Sudoku grids
_NON_DIGIT = re.compile(r"\D")
# The 12 units (4 rows, 4 columns, 4 boxes) as index lists into the row-major 16-cell string.
_UNITS = (
    [[4 * r + c for c in range(4)] for r in range(4)]
    + [[4 * r + c for r in range(4)] for c in range(4)]
    + [[4 * (br + r) + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
)


@lru_cache(maxsize=1)
def all_grids() -> np.ndarray:
    """Every valid complete grid, [288, 16] uint8, in a fixed (lexicographic) order."""
    grids, cells = [], [0] * 16

    def fill(k: int) -> None:
        if k == 16:
            grids.append(list(cells))
            return
        for d in range(1, 5):
            if all(cells[j] != d for u in _UNITS if k in u for j in u if j < k):
                cells[k] = d
                fill(k + 1)

    fill(0)
    assert len(grids) == N_GRIDS
    return np.array(grids, dtype=np.uint8)


def is_valid_solution(puzzle: str, grid: str) -> bool:
    """True iff `grid` (16 digits) is a complete valid Sudoku agreeing with the puzzle's givens."""
    if len(grid) != 16 or len(puzzle) != 16:
        return False
    if any(p != "0" and p != g for p, g in zip(puzzle, grid)):
        return False
    return all(sorted(grid[j] for j in unit) == ["1", "2", "3", "4"] for unit in _UNITS)


def _to_strings(rows: np.ndarray) -> list[str]:
    """[n, 16] digit array -> 16-character strings."""
    blob = (rows.astype(np.uint8) + ord("0")).tobytes().decode("ascii")
    return [blob[16 * i : 16 * (i + 1)] for i in range(len(rows))]


@TASKS.register("sudoku4")
@dataclass(frozen=True, kw_only=True)
class Sudoku4(Task):
    """4x4 Sudoku: puzzle digits then `=`, answer the 16 solved digits; any valid solution scores 1."""

    version = "1"
    protocols: ClassVar[dict[str, str]] = {
        "harness": "harness/tasks/sudoku4.py answer_grid, any valid solution",
        "d1": "dllm-reasoning/d1 eval/parse_and_get_acc.py parse_sudoku_answers (cell accuracy)",
        "lm-eval": "n/a: lm-evaluation-harness has no Sudoku task",
        "strict": "exactly 16 digits in <answer> (or as the whole completion)",
    }
    # Named `dataset`, not `source`: a field would shadow the `Task.source()` method.
    dataset: Literal["generated", "d1"] = "generated"
    n_blanks: int = 6
    n_train: int = 20_000
    n_test: int = 500
    seed: int = 0
    prompt_format: Literal["compact", "d1-eval"] = "compact"
    protocol: str = "harness"  # a scoring protocol (harness/tasks/base.py PROTOCOLS)

    def __post_init__(self):
        self.check_protocol(self.protocol, "sudoku4.protocol")
        if self.dataset not in ("generated", "d1"):
            raise ValueError(f"dataset must be 'generated' or 'd1', got {self.dataset!r}")
        if self.prompt_format not in ("compact", "d1-eval"):
            raise HarnessError(f"sudoku4: prompt_format must be compact or d1-eval, got {self.prompt_format!r}")
        if not 1 <= self.n_blanks <= 12:
            raise ValueError(f"n_blanks must be in 1..12, got {self.n_blanks}")
        if self.n_test < 1 or self.n_train < 0:
            raise ValueError("n_test must be >= 1 and n_train >= 0")
        # Leave most of the puzzle space to train: with few blanks there are only a few
        # thousand distinct puzzles (288 grids x 16 cells for one blank).
        if self.n_test > N_GRIDS * comb(16, self.n_blanks) // 4:
            raise ValueError(f"n_test={self.n_test} is too many distinct puzzles for n_blanks={self.n_blanks}")

    @property
    def prefill(self) -> str:
        return D1_EVAL_PREFILL if self.prompt_format == "d1-eval" else ""

    def _prompt(self, puzzle: str) -> str:
        if self.prompt_format == "d1-eval":
            return D1_EVAL_SYSTEM_PROMPT + "\n\n" + f"Solve the following Sudoku puzzle: {puzzle}\n"
        return f"{puzzle}="

    @property
    def gen_length(self) -> int:
        return 17  # 16 digits + EOS

    def source(self) -> str:
        if self.dataset == "d1":
            path = data_file(D1_FILE)
            return f"{path} sha256:{sha256_file(path)}"
        return "generated"

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
        """n random (puzzle, solution) pairs: a uniform grid with n_blanks uniform cells blanked."""
        solutions = all_grids()[rng.integers(0, N_GRIDS, size=n)]  # [n, 16]
        blanks = np.argsort(rng.random((n, 16)), axis=1)[:, : self.n_blanks]  # [n, n_blanks]
        puzzles = solutions.copy()
        np.put_along_axis(puzzles, blanks, 0, axis=1)
        return _to_strings(puzzles), _to_strings(solutions)

    def _generated_test(self) -> list[tuple[str, str]]:
        # First occurrences in draw order, deduplicated by puzzle (several grids can give the
        # same puzzle once enough cells are blank).
        rng = np.random.default_rng([self.seed, 1])
        test: dict[str, str] = {}
        while len(test) < self.n_test:
            for p, s in zip(*self._draw(rng, 2 * self.n_test)):
                test.setdefault(p, s)
        return list(test.items())[: self.n_test]

    def _d1_rows(self) -> list[tuple[str, str]]:
        path = data_file(D1_FILE, "d1's 4x4 Sudoku test set, CSV with columns Puzzle,Solution")
        with open(path, newline="") as f:
            rows = [(r["Puzzle"].strip(), r["Solution"].strip()) for r in csv.DictReader(f)]
        for i, (p, s) in enumerate(rows):
            if not (len(p) == len(s) == 16 and p.isdigit() and is_valid_solution(p, s)):
                raise HarnessError(f"{path}: row {i} is not a 4x4 puzzle with its solution: {p!r}, {s!r}")
        return rows

    def _train(self, held: set[str]) -> list[tuple[str, str]]:
        # Its own stream, every held-out puzzle removed, so the splits never overlap.
        rng = np.random.default_rng([self.seed, 0])
        train: list[tuple[str, str]] = []
        while len(train) < self.n_train:
            train += [(p, s) for p, s in zip(*self._draw(rng, self.n_train)) if p not in held]
        return train[: self.n_train]

    def _items(self, split: str) -> list[Item]:
        if self.dataset == "d1":
            test = self._d1_rows()
            prefix = "d1"
        else:
            test = self._generated_test()
            prefix = "test"
        if split == "test":
            pairs = test
        else:
            pairs, prefix = self._train({p for p, _ in test}), "train"
        return [
            Item(id=f"{prefix}-{i}", prompt=self._prompt(p), reference=s, meta={"puzzle": p, "solution": s})
            for i, (p, s) in enumerate(pairs)
        ]

    def item_from_answer(self, item_id: str, question: str, answer, meta: dict | None = None) -> Item:
        """The answer is the 16-digit solution; the puzzle is `meta.puzzle`, else the question's
        first 16 characters (d1 stores the puzzle as the question), `Sudoku puzzle: <16 digits>`,
        or the harness prompt `<16 digits>=`."""
        solution = re.sub(r"\s", "", str(answer or ""))
        puzzle = (meta or {}).get("puzzle")
        if puzzle is None:
            m = re.match(r"\d{16}", question) or re.search(r"Sudoku puzzle: (\d{16})", question) \
                or re.search(r"(\d{16})=", question)
            puzzle = (m.group(1) if m.groups() else m.group(0)) if m else None
        if puzzle is None or not re.fullmatch(r"[0-4]{16}", puzzle):
            raise ValueError(f"no 16-digit puzzle in the question {question[:60]!r}")
        if not (re.fullmatch(r"[1-4]{16}", solution) and is_valid_solution(puzzle, solution)):
            raise ValueError(f"reference {answer!r} is not a solution of puzzle {puzzle}")
        return Item(id=item_id, prompt=question, reference=solution,
                    meta={**(meta or {}), "puzzle": puzzle, "solution": solution})

    def _grade(self, item: Item, text: str, protocol: str) -> Verdict:
        puzzle, solution = item.meta["puzzle"], item.meta.get("solution") or item.reference
        if protocol == "d1":
            correct, blanks, grid = _d1.sudoku_cells(text, puzzle, solution)
            cells = correct / blanks if blanks else 0.0
            return Verdict(cells, grid or None, metric="cell_accuracy", protocol=protocol,
                           extra={"accuracy": float(blanks > 0 and correct == blanks), "blanks": blanks})
        grid = strict_grid(text) if protocol == "strict" else answer_grid(text)
        solved = is_valid_solution(puzzle, grid or "")
        blanks = [i for i in range(16) if puzzle[i] == "0"]
        matches = grid is not None and len(solution) == 16
        right = len(blanks) if solved else sum(1 for i in blanks if matches and grid[i] == solution[i])
        return Verdict(float(solved), grid, protocol=protocol,
                       extra={"cell_accuracy": right / len(blanks) if blanks else float(solved), "blanks": len(blanks)})


_RUN = re.compile(r"\d(?:[\s|,;\[\]().\-+_/]*\d)*")


def answer_grid(completion: str) -> str | None:
    """The 16 digits a messy completion answers with: inside `<answer>` tags if any, the first 16
    digits of the last run of digits (joined by spaces, bars, commas, brackets, new lines) that has
    at least 16, else the last four runs of exactly four digits (`row 1: 3 1 4 2` lines). None if
    neither exists.
    """
    text = clean(completion)
    span = answer_span(text)
    text = span if span is not None else text
    runs = [_NON_DIGIT.sub("", m.group(0)) for m in _RUN.finditer(text)]
    long = [r for r in runs if len(r) >= 16]
    if long:
        return long[-1][:16]
    rows = [r for r in runs if len(r) == 4]
    return "".join(rows[-4:]) if len(rows) >= 4 else None


def strict_grid(completion: str) -> str | None:
    """Sudoku under `strict`: the `<answer>` content (or the whole completion without tags) is
    exactly 16 digits once whitespace and `|` `,` separators are removed."""
    text = clean(completion)
    span = answer_span(text)
    body = re.sub(r"[\s|,]", "", span if span is not None else text)
    return body if re.fullmatch(r"\d{16}", body) else None
