"""Shared pieces of the code tasks: pulling code out of messy completions, scoring in the sandbox."""
from __future__ import annotations

import re
import warnings

from harness.tasks._extract import clean

FENCE = re.compile(r"(```|~~~)[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:\1|$)", re.S | re.I)
TOP_DEF = re.compile(r"^(?:@|(?:async[ \t]+)?def[ \t]|class[ \t])", re.M)


def fenced(text: str) -> str | None:
    """The first ``` or ~~~ fenced code block (an unclosed fence runs to the end: truncated output), or None."""
    m = FENCE.search(text)
    return m.group(2) if m else None


def drop_truncated_tail(code: str) -> str:
    """`code` without a trailing top-level definition cut off by the end of the canvas.

    A diffusion LM repeats its answer until the canvas ends, so a complete solution is often
    followed by a truncated copy. When `code` does not compile, it is cut at the latest top-level
    `def`/`class`/decorator after which the rest compiles; unchanged when no such cut exists.
    """
    if _compiles(code):
        return code
    for start in reversed([m.start() for m in TOP_DEF.finditer(code)][1:]):
        head = code[:start]
        if _compiles(head):
            return head
    return code


def _compiles(code: str) -> bool:
    """Whether `code` parses (nothing runs; warnings such as invalid escapes are silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(code, "<completion>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return True


def cut_at(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the earliest stop string (lm-eval's `until` does not truncate; the harness does)."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def clean_code(completion: str) -> str:
    """Completion without chat/EOS markup; tabs and line ends untouched otherwise."""
    return clean(completion.replace("\r\n", "\n"), strip=False)


def checked_score(check, timeout_s: float) -> float:
    """1.0 iff the trusted run of `check` (a `_trusted.CodeCheck`) passes; see `_trusted.run_check`."""
    from harness.tasks._trusted import run_check

    return float(run_check(check, timeout_s=timeout_s).passed)
