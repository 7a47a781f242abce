"""Report section: where the generated code of code tasks ran (README: Sandbox).

Records of code tasks carry `sandbox`, the isolation level their completions ran at. The section
states the levels with their record counts, and the summary warns when any ran without namespaces
(those scores are only as trustworthy as the code was).
"""
from __future__ import annotations

from collections import Counter

from harness.report.sections import register_section

KINDS = ("generate", "rl", "lm_eval", "score")  # the record kinds that score completions


def levels(records: list[dict]) -> Counter:
    return Counter(r["sandbox"] for r in records if r.get("sandbox"))


def weak_levels(records: list[dict]) -> list[str]:
    return sorted(lv for lv in levels(records) if not lv.endswith("-ns"))


def render_section(records: list[dict]) -> str:
    found = levels(records)
    if not found:
        return ""
    parts = ", ".join(f"`{lv}` ({n} records)" for lv, n in sorted(found.items()))
    weak = weak_levels(records)
    warn = (f" **Without namespace isolation ({', '.join(f'`{w}`' for w in weak)}): a program could have read "
            "this machine's files and reached its processes and network; these scores are only as trustworthy "
            "as the code was.**" if weak else "")
    return f"## Sandbox\n\nGenerated code ran at isolation level {parts} (README: Sandbox).{warn}\n"


def _summary(ctx) -> list[str]:
    weak = weak_levels(ctx.records)
    return [f"Generated code ran without namespace isolation ({', '.join(weak)}): see the Sandbox section."] \
        if weak else []


SECTION = register_section("sandbox", kinds=KINDS, order=90, summary=_summary,
                           render=lambda ctx: render_section(ctx.records))
