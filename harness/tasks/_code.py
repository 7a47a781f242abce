"""Shared pieces of the code tasks: pulling code out of messy completions, scoring in the sandbox."""
from __future__ import annotations

import re

from harness.tasks._extract import clean

FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


def fenced(text: str) -> str | None:
    """The first fenced code block (an unclosed fence runs to the end: truncated output), or None."""
    m = FENCE.search(text)
    return m.group(1) if m else None


def cut_at(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the earliest stop string (lm-eval's `until` does not truncate; the harness does)."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def clean_code(completion: str) -> str:
    """Completion without chat/EOS markup; tabs and line ends untouched otherwise."""
    return clean(completion.replace("\r\n", "\n"), strip=False)


def sandbox_score(program: str, timeout_s: float) -> float:
    from harness.tasks.sandbox import run_program

    return float(run_program(program, timeout_s=timeout_s).passed)
