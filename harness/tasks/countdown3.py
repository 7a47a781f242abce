"""`countdown3`: reach a target with three numbers, each used once, and + - * / ( ).

Prompt (`prompt_format`): "compact", `a,b,c:target=` (e.g. `3,5,2:16=`); or "d1-eval", the prompt of
d1's evaluation (dllm-reasoning/d1 `eval/countdown.py` `CTDDataset.__getitem__` through
`GSM8KDataset.create_prompt`): its system prompt (transcribed, `\\boxed{}` answer, no space before
"Respond"), a blank line, `Numbers: [a, b, c]\\nTarget: t` as one user turn, the answer prefilled
with `<reasoning>` (`prefill`, placed after the chat template's generation prompt). Reference: one
compact expression such as `(3+5)*2`.
Generated items come from a random expression tree over three numbers in 1..max_number whose exact
(Fraction) value is a positive integer, so every item is solvable. With `dataset="d1"` the test
split is d1's `countdown/cd3_test.jsonl` (256 rows, numbers up to 100, no expressions given): its
references are found by brute force over the 192 expressions of three numbers; train is generated
with numbers up to the file's largest, minus the test problems. The scorer parses the completion
with a small recursive-descent parser (never `eval`) and accepts any exact solution.

Protocols (`protocol`, see harness/tasks/base.py):
- harness: `answer_expression` (the `<answer>` content, else the last run of arithmetic), exact.
- d1: dllm-reasoning/d1 `eval/parse_and_get_acc.py::parse_countdown_answers` (harness/tasks/_d1.py):
  last box, else first `<answer>`, else the whole text; the integers in it must be the given
  numbers; Python arithmetic (read with `ast`, not `eval`) within 1e-5 of the target; raw text.
- lm-eval: n/a (lm-evaluation-harness has no Countdown task).
- strict: only the `<answer>` content or the last closed `\\boxed{}`, which must be one
  expression (optionally `= target`); no run of arithmetic picked out of prose.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import ClassVar, Literal

import numpy as np

from harness.registry import TASKS
from harness.tasks import _d1
from harness.tasks._extract import all_boxed, answer_span, clean
from harness.tasks.base import Task, Verdict
from harness.tasks.data import data_file, sha256_file
from harness.types import HarnessError, Item

D1_FILE = "countdown/cd3_test.jsonl"
OPS = "+-*/"
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
# dllm-reasoning/d1 eval/countdown.py CTD_SYSTEM_PROMPT (a prompt string, transcribed)
D1_EVAL_SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target "
    "number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think "
    "step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without including an "
    "equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following format:\n<reasoning>\n"
    "Your reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
D1_EVAL_PREFILL = "<reasoning>"  # d1 eval/eval.py: add_reasoning=True, "prefill for all models"
MAX_EXPR_CHARS = 64  # longer completions are rejected before parsing (bounds recursion depth)


class _ParseError(ValueError):
    pass


_TOKEN = re.compile(r"\s*([0-9]+|[-+*/()])")


def _tokens(text: str) -> list[str]:
    """Integers, operators and brackets; anything else (letters, '.', '=', '**' parts) is an error."""
    out, i, text = [], 0, text.rstrip()
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise _ParseError(f"unexpected {text[i:].lstrip()[:1]!r} at {i}")
        out.append(m.group(1))
        i = m.end()
    return out


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := int | '(' expr ')'.

    Evaluates exactly with Fractions and records the integer literals used. No unary minus, so
    only the given numbers can appear as operands.
    """

    def __init__(self, text: str):
        self.toks, self.i, self.numbers = _tokens(text), 0, []

    def parse(self) -> Fraction:
        value = self.expr()
        if self.i != len(self.toks):
            raise _ParseError(f"unexpected {self.toks[self.i]!r}")
        return value

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self) -> str:
        tok = self.peek()
        self.i += 1 if tok else 0
        return tok

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, rhs = self.take(), self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.factor()
            if op == "/" and rhs == 0:
                raise _ParseError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            value = self.expr()
            if self.take() != ")":
                raise _ParseError("expected ')'")
            return value
        if not tok.isdigit():
            raise _ParseError(f"expected a number, got {tok!r}")
        self.numbers.append(int(tok))
        return Fraction(int(tok))


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the numbers it uses; ValueError if invalid."""
    if len(expression) > MAX_EXPR_CHARS:
        raise _ParseError("expression too long")
    parser = _Parser(expression)
    return parser.parse(), parser.numbers


def _apply(a: Fraction | None, op: str, b: Fraction | None) -> Fraction | None:
    """a op b exactly; None propagates a division by zero."""
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _render(x: int, op1: str, y: int, op2: str, z: int, left: bool) -> tuple[str, Fraction | None]:
    """`(x op1 y) op2 z` if left else `x op1 (y op2 z)`, with only the brackets exactness needs.

    Returns the text and its exact value (None on division by zero).
    """
    if left:
        inner = f"{x}{op1}{y}"
        text = f"({inner}){op2}{z}" if _PREC[op1] < _PREC[op2] else f"{inner}{op2}{z}"
        return text, _apply(_apply(Fraction(x), op1, Fraction(y)), op2, Fraction(z))
    inner = f"{y}{op2}{z}"
    # A right operand needs brackets under a tighter operator or under the non-associative - and /.
    bracket = _PREC[op2] < _PREC[op1] or (_PREC[op2] == _PREC[op1] and op1 in "-/")
    text = f"{x}{op1}({inner})" if bracket else f"{x}{op1}{inner}"
    return text, _apply(Fraction(x), op1, _apply(Fraction(y), op2, Fraction(z)))


def solve(numbers: tuple[int, int, int], target: int) -> str:
    """The first solution in a fixed search order (orderings, operators, bracketings), or ''."""
    for x, y, z in itertools.permutations(numbers):
        for op1, op2, left in itertools.product(OPS, OPS, (True, False)):
            text, value = _render(x, op1, y, op2, z, left)
            if value == target:
                return text
    return ""


@TASKS.register("countdown3")
@dataclass(frozen=True, kw_only=True)
class Countdown3(Task):
    """Countdown with three numbers: `a,b,c:target=`, answer any exact expression using each once."""

    version = "1"
    protocols: ClassVar[dict[str, str]] = {
        "harness": "harness/tasks/countdown3.py answer_expression, exact evaluation",
        "d1": "dllm-reasoning/d1 eval/parse_and_get_acc.py parse_countdown_answers",
        "lm-eval": "n/a: lm-evaluation-harness has no Countdown task",
        "strict": "<answer> content or the last closed box, one whole expression",
    }
    # Named `dataset`, not `source`: a field would shadow the `Task.source()` method.
    dataset: Literal["generated", "d1"] = "generated"
    max_number: int = 20
    n_train: int = 20_000
    n_test: int = 500
    seed: int = 0
    prompt_format: Literal["compact", "d1-eval"] = "compact"
    protocol: str = "harness"  # a scoring protocol (harness/tasks/base.py PROTOCOLS)

    def __post_init__(self):
        self.check_protocol(self.protocol, "countdown3.protocol")
        if self.dataset not in ("generated", "d1"):
            raise ValueError(f"dataset must be 'generated' or 'd1', got {self.dataset!r}")
        if self.prompt_format not in ("compact", "d1-eval"):
            raise HarnessError(f"countdown3: prompt_format must be compact or d1-eval, got {self.prompt_format!r}")
        if not 2 <= self.max_number <= 9999:
            raise ValueError(f"max_number must be in 2..9999, got {self.max_number}")
        if self.n_test < 1 or self.n_train < 0:
            raise ValueError("n_test must be >= 1 and n_train >= 0")

    @cached_property
    def _d1(self) -> list[tuple[tuple[int, int, int], int]]:
        path = data_file(D1_FILE, 'd1\'s Countdown test set, JSON lines {"input": "a,b,c", "output": target}')
        rows = []
        with open(path) as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    numbers = tuple(int(v) for v in str(row["input"]).split(","))
                    target = int(row["output"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise HarnessError(f"{path}: line {i + 1}: {exc}") from None
                if len(numbers) != 3:
                    raise HarnessError(f"{path}: line {i + 1}: expected three numbers, got {numbers}")
                rows.append((numbers, target))
        return rows

    @property
    def prefill(self) -> str:
        return D1_EVAL_PREFILL if self.prompt_format == "d1-eval" else ""

    def _prompt(self, numbers: tuple[int, int, int], target: int) -> str:
        if self.prompt_format == "d1-eval":  # CTDDataset.__getitem__: the numbers as a Python list
            return D1_EVAL_SYSTEM_PROMPT + "\n\n" + f"Numbers: {list(numbers)}\nTarget: {target}"
        a, b, c = numbers
        return f"{a},{b},{c}:{target}="

    @property
    def _train_max(self) -> int:
        """Largest operand of generated items: d1's own range when training for d1."""
        return max(max(n) for n, _ in self._d1) if self.dataset == "d1" else self.max_number

    @property
    def gen_length(self) -> int:
        # Compact references of three operands need at most one pair of brackets: 3 numbers of
        # at most `digits` characters, 2 operators, 2 brackets, + EOS. One value for both splits.
        digits = len(str(self._train_max))
        return 3 * digits + 2 + 2 + 1

    def source(self) -> str:
        if self.dataset == "d1":
            path = data_file(D1_FILE)
            return f"{path} sha256:{sha256_file(path)}"
        return "generated"

    def _draw(self, rng: np.random.Generator, n: int, max_number: int) -> list[tuple[tuple, int, str]]:
        """Up to n solvable problems (numbers, target, reference): random trees, positive integer values."""
        numbers = rng.integers(1, max_number + 1, size=(n, 3))  # [n, 3]
        orders = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)  # [n, 3]
        ops = rng.integers(0, 4, size=(n, 2))  # [n, 2]
        left = rng.random(n) < 0.5  # [n]
        out = []
        for nums, order, (o1, o2), lft in zip(numbers.tolist(), orders.tolist(), ops.tolist(), left.tolist()):
            x, y, z = (nums[k] for k in order)
            text, value = _render(x, OPS[o1], y, OPS[o2], z, lft)
            if value is not None and value.denominator == 1 and value > 0:
                out.append((tuple(nums), int(value), text))
        return out

    @staticmethod
    def _key(numbers: tuple, target: int) -> tuple:
        return tuple(sorted(numbers)), target  # a reordering of the numbers is the same problem

    def _test(self) -> list[tuple[tuple, int, str]]:
        if self.dataset == "d1":
            return [(n, t, solve(n, t)) for n, t in self._d1]
        rng = np.random.default_rng([self.seed, 1])
        test: dict[tuple, tuple] = {}
        while len(test) < self.n_test:
            for p in self._draw(rng, 2 * self.n_test, self.max_number):
                test.setdefault(self._key(p[0], p[1]), p)
        return list(test.values())[: self.n_test]

    def _train(self, held: set[tuple]) -> list[tuple[tuple, int, str]]:
        # Its own stream, every test problem removed, so the splits never overlap.
        rng = np.random.default_rng([self.seed, 0])
        train: list[tuple] = []
        while len(train) < self.n_train:
            draws = self._draw(rng, self.n_train, self._train_max)
            train += [p for p in draws if self._key(p[0], p[1]) not in held]
        return train[: self.n_train]

    def _items(self, split: str) -> list[Item]:
        test = self._test()
        prefix = "d1" if self.dataset == "d1" else "test"
        problems = test
        if split == "train":
            problems, prefix = self._train({self._key(n, t) for n, t, _ in test}), "train"
        return [
            Item(id=f"{prefix}-{i}", prompt=self._prompt((a, b, c), t), reference=ref,
                 meta={"numbers": [a, b, c], "target": t, "solvable": bool(ref)})
            for i, ((a, b, c), t, ref) in enumerate(problems)
        ]

    def item_from_answer(self, item_id: str, question: str, answer, meta: dict | None = None) -> Item:
        """Numbers and target from the answer (`[[a, b, c], target]` as d1 stores it, or
        `{"numbers": [...], "target": t}`), else from the question (`a,b,c:t=`, or d1's
        `Numbers: [a, b, c]` / `Target: t`)."""
        numbers, target = None, None
        if isinstance(answer, (list, tuple)) and len(answer) == 2 and isinstance(answer[0], (list, tuple)):
            numbers, target = answer
        elif isinstance(answer, dict):
            numbers, target = answer.get("numbers"), answer.get("target")
        elif (m := re.search(r"(\d+),(\d+),(\d+):(\d+)=?", str(answer or "") + " " + question)):
            numbers, target = [m.group(1), m.group(2), m.group(3)], m.group(4)
        else:
            nums = re.search(r"Numbers: \[([\d, ]+)\]", question, re.I)
            tgt = re.search(r"Target: (\d+)", question, re.I)
            if nums and tgt:
                numbers, target = nums.group(1).split(","), tgt.group(1)
        try:
            numbers, target = [int(n) for n in numbers], int(target)
        except (TypeError, ValueError):
            raise ValueError(f"no Countdown numbers and target in answer {answer!r} or the question") from None
        if len(numbers) != 3:
            raise ValueError(f"countdown3 takes three numbers, got {numbers}")
        ref = solve(tuple(numbers), target)
        return Item(id=item_id, prompt=question, reference=ref,
                    meta={"numbers": numbers, "target": target, "solvable": bool(ref), **(meta or {})})

    def _grade(self, item: Item, text: str, protocol: str) -> Verdict:
        """The answer expression must use each number once and hit the target."""
        target, numbers = item.meta["target"], item.meta["numbers"]
        if protocol == "d1":
            ok, expr = _d1.countdown_correct(text, numbers, target)
            return Verdict(float(ok), expr, protocol=protocol)
        expr = strict_expression(text, target) if protocol == "strict" else answer_expression(text, target)
        if expr is None:
            return Verdict(0.0, None, protocol=protocol)
        try:
            value, used = evaluate(expr)
        except ValueError:
            return Verdict(0.0, expr, protocol=protocol)
        return Verdict(float(value == target and sorted(used) == sorted(numbers)), expr, protocol=protocol)


_CANDIDATE = re.compile(r"-?[0-9(][0-9+\-*/(). ]*")


def answer_expression(completion: str, target: int) -> str | None:
    """The expression a messy completion answers with: inside `<answer>` tags if there are any,
    else the last run of arithmetic (`x` / `\\times` / `÷` read as * and /) that has an operator;
    a restated `= target` (or `target =`) around it is dropped; `expr = N` with N not the target
    counts as wrong. None if there is none.
    """
    text = clean(completion)
    span = answer_span(text)
    text = span if span is not None else text
    for a, b in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("−", "-"),
                 ("\\left", ""), ("\\right", ""), ("$", "")):
        text = text.replace(a, b)
    text = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", text)
    for line in reversed(text.splitlines() or [""]):
        parts = re.split(r"=|\\approx|≈", line)
        for k in range(len(parts) - 1, -1, -1):
            runs = [m.group(0).strip().rstrip(".").strip() for m in _CANDIDATE.finditer(parts[k])]
            for run in reversed(runs):
                if any(op in run[1:] for op in OPS):
                    claimed = parts[k + 1].strip().rstrip(".") if k + 1 < len(parts) else ""
                    # `expr = N` with N not the target states a false answer: wrong as a whole.
                    return None if re.fullmatch(r"-?\d+", claimed) and int(claimed) != target else run
    return None


def strict_expression(completion: str, target: int) -> str | None:
    """Countdown under `strict`: the `<answer>` content, else the last closed box, taken whole
    (a trailing `= target` is dropped; any other claimed value makes it no answer)."""
    text = clean(completion)
    span = answer_span(text)
    boxes = all_boxed(span if span is not None else text)
    if boxes:
        span = boxes[-1]
    if not span:
        return None
    for a, b in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("$", "")):
        span = span.replace(a, b)
    lhs, eq, rhs = span.strip().rstrip(".").partition("=")
    if eq and rhs.strip() != str(target):
        return None
    return lhs.strip() or None
