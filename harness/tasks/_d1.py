"""The `d1` scoring protocol: the conventions of the d1 repository's evaluation scripts.

Source: dllm-reasoning/d1, `eval/parse_and_get_acc.py` (`parse_gsm_answers`, `parse_math_answers`,
`parse_countdown_answers`, `parse_sudoku_answers`) and the MATH helpers it imports from
`eval/parser_helper.py` (`last_boxed_only_string`, `remove_boxed`, `is_equiv`, `strip_string`:
the Hendrycks-MATH normalisation, with d1's own box helpers: no box gives the whole text back),
and `Parser.extract_answer_gsm8k` (`eval/parsers.py`, the GSM8K ground truth). Read through the
forks SimonCao1207/d1 and xiaohangt/wd1, whose `eval/` files agree with each other (the search
index holds no copy of the upstream folder). Re-implemented here (no code copied), quirks kept
on purpose, because the point of this protocol is to reproduce d1's numbers from d1's generations:

- GSM8K: the FIRST `\\boxed{...}` (non-greedy up to the first `}`) whose content reads as a float
  (Python `float`, else its first number) wins; else the first `<answer>...</answer>` (its whole
  content as a float, else its LAST number); no other fallback. Compared with `==` to the float
  reference. Thousands commas are not removed (`\\boxed{43,500}` reads 43).
- GSM8K reference: the number after `####` read without a sign (`Parser.extract_answer_gsm8k`),
  so the two negative GSM8K test answers can never be matched.
- MATH500: the last `\\boxed` (`parser_helper.last_boxed_only_string`); with no box at all the
  WHOLE generation is the answer (so `<answer>5</answer>` alone is wrong); an empty or unclosed
  last box falls back to the first `<answer>` content; `\\fbox{4}` stays `\\fbox{4}`. Checked by
  Hendrycks `is_equiv` (string equality after `strip_string`; on a normalisation error, raw
  string equality).
- Countdown: the last box's content; with no box the WHOLE text (the `<answer>` tag is read only
  when the last box is unclosed); LaTeX `\\times \\div \\cdot` mapped; the first `expr = number`
  anywhere keeps its expression (a step in the reasoning can win over the answer); the multiset
  of integers in it (`\\d+`) must equal the given numbers; the value (Python arithmetic: `**`,
  `//`, unary minus, decimals all allowed; any other character is an error) within 1e-5 of the
  target. Evaluated on Python's own grammar (`ast`), never `eval`.
- Sudoku: the first of five patterns (fenced digits in `<answer>`, `<answer>` content up to an
  end token, text after `</answer>`, 16 digits before `</answer>`, any 16-digit word) with
  non-blank content; whitespace removed, padded with 0 or cut to 16; the metric is cell accuracy:
  blank cells equal to the reference solution (not any valid solution) / blanks.
"""
from __future__ import annotations

import ast
import re
from fractions import Fraction

# -- the Hendrycks-MATH helpers (parser_helper) ---------------------------------------------------


class _Bad(Exception):
    """Where the reference helpers raise (assertion, index or type errors)."""


def last_boxed(text: str) -> str | None:
    """`parser_helper.last_boxed_only_string`: `\\boxed{...}` / `\\fbox{...}` as written, from the
    LAST occurrence; `\\boxed X` up to `$` when the text has a `\\boxed ` anywhere; None when the
    last box never closes; and, when there is no box at all, the WHOLE text."""
    idx = text.rfind("\\boxed")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return text
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx:i + 1]
    return None


def unbox(s: str | None) -> str:
    """`parser_helper.remove_boxed`: the content of `\\boxed{...}` / `\\boxed X`; any other string
    comes back unchanged (`\\fbox{4}`, the whole text); raises _Bad where the reference raises
    (None: an unclosed last box)."""
    if s is None:
        raise _Bad("no closed box")
    if "\\boxed " in s:
        if not s.startswith("\\boxed "):
            raise _Bad("`\\boxed ` not at the start")
        return s[len("\\boxed "):]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[len("\\boxed{"):-1]
    return s


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if not sub:
            raise _Bad("empty \\frac")
        if sub[0] == "{":
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b, rest = sub[0], sub[1], sub[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    if len(s.split("/")) != 2:
        return s
    a, b = s.split("/")
    try:
        ia, ib = int(a), int(b)
    except ValueError:
        raise _Bad("a/b with non-integers") from None  # the reference lets this ValueError escape
    return "\\frac{" + str(ia) + "}{" + str(ib) + "}" if s == f"{ia}/{ib}" else s


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = parts[0]
    for sub in parts[1:]:
        if not sub:
            raise _Bad("empty \\sqrt")
        out += "\\sqrt{" + sub[0] + "}" + sub[1:] if sub[0] != "{" else "\\sqrt" + sub
    return out


def strip_string(s: str) -> str:
    """Hendrycks MATH normalisation (raises _Bad where the reference raises)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units on the right
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise _Bad("several \\text{ ")
        s = parts[0]
    s = s.replace("\\%", "")  # the reference's second replace ("\%") is the same string
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        s = halves[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def hendrycks_equiv(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_string(a) == strip_string(b)
    except _Bad:
        return a == b


# -- per task ---------------------------------------------------------------------------------------
_FIRST_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_D1_NUMBER = re.compile(r"-?\d+\.?\d*")


def _as_float(text: str, pick: int) -> float | None:
    try:
        return float(text)
    except ValueError:
        nums = _D1_NUMBER.findall(text)
        return float(nums[pick]) if nums else None


def gsm8k_reference(reference: str) -> float | None:
    """d1's ground truth (`parsers.Parser.extract_answer_gsm8k` on the dataset answer): the number
    after `####`, commas removed; no sign is read, so a negative reference is None (never matched)."""
    m = re.search(r"####\s*\$?([\d,]+(?:\.\d+)?)", "#### " + str(reference))
    return float(m.group(1).replace(",", "")) if m else None


def gsm8k_answer(text: str) -> float | None:
    """`parse_gsm_answers`' reading of one generation (see the module docstring)."""
    for content in re.findall(r"\\boxed{(.*?)}", text):
        content = content.strip()
        if content and not re.match(r"^\.+$", content):
            value = _as_float(content, 0)
            if value is not None:
                return value
    m = _FIRST_ANSWER.search(text)
    if m and m.group(1).strip():
        return _as_float(m.group(1).strip(), -1)
    return None


def math_answer(text: str) -> str | None:
    """`parse_math_answers`' reading: the last box's content (with no box at all, the whole text),
    else (an empty or unclosed last box) the first `<answer>` content."""
    try:
        got = unbox(last_boxed(text))
    except _Bad:
        got = None
    if not got:
        m = _FIRST_ANSWER.search(text)
        got = m.group(1).strip() if m else got
    return got


def countdown_expression(text: str) -> str:
    """`parse_countdown_answers`' equation text: the last box's content; with no box the whole
    text (its `<answer>` tag is only read when the last box is unclosed); then the first
    `expr = number` anywhere in it keeps its expression."""
    try:
        eq = unbox(last_boxed(text))
    except _Bad:
        m = _FIRST_ANSWER.search(text)
        eq = m.group(1).strip() if m else text
    eq = eq.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    m = re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", eq)
    return m.group(1).strip() if m else eq


_BIN = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: Fraction(a // b)}


def _value(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            if b.denominator != 1 or (abs(b) > 64 and abs(a) > 1):
                raise _Bad("power out of range")  # fractional or huge: never a Countdown target
            return a ** int(b)  # 0 ** -n raises ZeroDivisionError, as in Python
        if type(node.op) in _BIN:
            return _BIN[type(node.op)](a, b)
    raise _Bad(f"not arithmetic: {type(node).__name__}")


def python_value(expr: str) -> Fraction | None:
    """The value Python's arithmetic gives `expr` if it only has d1's allowed characters
    (`^[\\d+\\-*/().\\s]+$`), None where d1's evaluator returns infinity (syntax error, division by
    zero, characters outside the set)."""
    if not re.match(r"^[\d+\-*/().\s]+$", expr):
        return None
    try:
        return _value(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, _Bad, RecursionError, OverflowError):
        return None


def countdown_correct(text: str, numbers, target) -> tuple[bool, str]:
    eq = countdown_expression(text)
    if sorted(int(n) for n in re.findall(r"\d+", eq)) != sorted(int(n) for n in numbers):
        return False, eq
    value = python_value(eq)
    return value is not None and abs(float(value) - float(target)) < 1e-5, eq


_SUDOKU_PATTERNS = (
    r"<answer>.*?```\s*([\d\s]+)```",
    r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
    r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)",
    r".*?(\d{16})\s*</answer>",
    r"\b(\d{16})\b",
)


def sudoku_grid(text: str) -> str:
    """`parse_sudoku_answers`' 16 characters ('' when no pattern has content)."""
    got = ""
    for pattern in _SUDOKU_PATTERNS:
        m = re.search(pattern, text, re.S)
        if m and m.group(1).strip():
            got = m.group(1).strip()
            break
    got = re.sub(r"\s", "", got)
    return (got + "0" * 16)[:16] if got else ""


def sudoku_cells(text: str, puzzle: str, solution: str) -> tuple[int, int, str]:
    """(blank cells equal to the reference solution, blanks, the grid read)."""
    blanks = [i for i in range(16) if puzzle[i] == "0"]
    grid = sudoku_grid(text)
    correct = sum(1 for i in blanks if grid and grid[i] == solution[i])
    return correct, len(blanks), grid
