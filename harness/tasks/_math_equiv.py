"""Equivalence of two MATH answers: LaTeX normalisation, math-verify, then a sympy fallback.

Order (`is_equiv`): (1) the two answers normalised (`\\left`/`\\right`, spacing commands,
`\\dfrac`, degrees, `\\text{}` units, surrounding `$`, trailing periods, `x =` prefixes) are the
same text; (2) math-verify (`parse` + `verify`, the checker of the Open LLM leaderboard and of
lm-eval's minerva_math) says they are equal; (3) sympy, through latex2sympy2, finds the
difference simplifies to 0. Plain string equality of the raw answers is never used alone.

math-verify's timeouts use SIGALRM, which only works in the main thread; elsewhere it runs
without its timeout and answers longer than `MAX_CHARS` are refused instead, which bounds the
work a pathological answer can cause.
"""
from __future__ import annotations

import re
import threading

MAX_CHARS = 400  # longer answers are not parsed (pathological input; real MATH answers are short)
TIMEOUT_S = 5

_UNITS = (
    "degrees?", "cm", "centimeters?", "meters?", "m", "km", "inches", "inch", "feet", "foot", "ft", "units?",
    "square units?", "sq units?", "miles?", "mph", "hours?", "minutes?", "seconds?", "days?", "weeks?", "years?",
    "dollars?", "cents?", "pounds?", "ounces?", "cups?", "gallons?", "liters?", "students?", "people", "ways",
)
_UNIT_WORD = re.compile(r"\\(?:text|mbox|textbf|mathrm)\{\s*(?:" + "|".join(_UNITS) + r")\s*\}", re.I)
_TEXT = re.compile(r"\\(?:text|mbox|textbf|mathrm|textnormal|operatorname)\{([^{}]*)\}")


def normalize(ans: str) -> str:
    """A canonical text form of a LaTeX answer (also the input of the sympy fallback)."""
    s = ans.strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])\s*", "", s)
    s = re.sub(r"\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = _UNIT_WORD.sub("", s)
    s = _TEXT.sub(r"\1", s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    s = re.sub(r"^[a-zA-Z]\s*=(?!=)", "", s)  # `x=3` -> `3` (a single-variable assignment)
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s) if re.fullmatch(r"[\d,]+(\.\d+)?", s) else s
    s = re.sub(r"^0+(\d)", r"\1", s)
    s = re.sub(r"(\.\d*?)0+$", r"\1", s) if re.fullmatch(r"-?\d+\.\d+", s) else s
    s = s.rstrip(".") if re.fullmatch(r"-?\d+\.", s) else s
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    return s


def _math_verify(ref: str, pred: str) -> bool | None:
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        return None
    main = threading.current_thread() is threading.main_thread()
    timeout = TIMEOUT_S if main else None
    try:
        gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=timeout)
        target = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        if not gold or not target:
            return None
        return bool(verify(gold, target, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a checker failure means "not shown equal"
        return None


def _sympy_equal(ref: str, pred: str) -> bool:
    try:
        import sympy
        from latex2sympy2_extended import latex2sympy
    except ImportError:  # pragma: no cover
        return False
    try:
        a, b = latex2sympy(ref), latex2sympy(pred)
        if a == b:
            return True
        diff = sympy.simplify(a - b)
        return bool(diff == 0)
    except Exception:  # noqa: BLE001
        return False


def is_equiv(pred: str | None, ref: str) -> bool:
    """True when the predicted answer is mathematically the reference (see the module docstring)."""
    if pred is None or not pred.strip() or len(pred) > MAX_CHARS:
        return False
    a, b = normalize(pred), normalize(ref)
    if a and a == b:
        return True
    verdict = _math_verify(ref, pred)
    if verdict:
        return True
    if verdict is None and _math_verify(b, a):  # the normalised forms parse where the raw ones did not
        return True
    if verdict is None:
        return _sympy_equal(b, a)
    return False
