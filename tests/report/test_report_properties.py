"""Reports pass the mechanical checks of tests/report/report_checks.py: no interval outside its
support, no comparative sentence without its test, no empty or single-point figure.

The checks are first shown to catch each fault on hand-made input (so a pass means something), then
run on reports rendered from small runs: the two-sampler run of conftest.py (fast), and, marked
slow, every built-in suite (default, estimators, samplers, rl) shrunk to a few items by its `quick`
block. The RL section's own statements (its seeds and levels) are checked by the RL report's tests.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.report.markdown import write_report
from harness.runner import Runner
from harness.stats.intervals import ALPHA, Interval
from tests.report.report_checks import Capture, capture, claim_problems, figure_problems, interval_problems

ROOT = Path(__file__).resolve().parents[2]
RL_LINES: tuple[str, ...] = ()  # no summary line is exempt: the RL section states its tests too


def test_checks_catch_each_fault():
    bad_table = ("| cell | accuracy [95% CI] | variance |\n|---|---|---|\n"
                 "| `a` | 0.977 [0.950, 1.004] | 9.176 [-0.898, 19.251] |\n")
    problems = interval_problems(bad_table)
    assert any("outside [0, 1]" in p for p in problems) and any("below 0" in p for p in problems)
    assert interval_problems("", Capture(intervals=[Interval(0.9, 0.8, 1.01, 5, "t", (0.0, 1.0))]))
    assert not interval_problems("| cell | accuracy [95% CI] |\n|---|---|\n| `a` | 0.977 [0.921, 0.995] |\n")
    summary = "## Summary\n\n- Samplers: `a` is faster and more accurate than `b`.\n"
    assert claim_problems(summary)
    assert not claim_problems("## Summary\n\n- `a` beats `b` (exact McNemar, Holm, α = 0.05).\n")
    assert claim_problems("## Summary\n\n- `a` gains +0.04 [+0.01, +0.07] (not significant at 0.01: McNemar).\n")
    one = [{"points": {(1.0, 0.5)}, "bars": [0.4, 0.6], "ylabel": "accuracy", "visible": True,
            "empty_legend_only": False}]
    assert figure_problems(Capture(figures=[("f", one)]))
    over = [{**one[0], "points": {(1.0, 0.5), (2.0, 0.9)}, "bars": [0.8, 1.02]}]
    assert figure_problems(Capture(figures=[("f", over)])) == ["figure f: accuracy error bars outside [0, 1]"]


def _render(run_dir, out: Path, monkeypatch) -> tuple[str, Capture]:
    cap = capture(monkeypatch)
    md = write_report(run_dir, out)
    return md.read_text(), cap


def _check(md: str, cap: Capture) -> list[str]:
    return interval_problems(md, cap) + claim_problems(md, ALPHA, skip=RL_LINES) + figure_problems(cap)


def test_two_sampler_report_passes(report_runs, tmp_path, monkeypatch):
    md, cap = _render(report_runs[0], tmp_path / "reports", monkeypatch)
    assert cap.intervals and cap.figures  # the instruments saw the report being built
    assert _check(md, cap) == []


def _shrunk(name: str, tmp: Path) -> Path:
    """suites/<name>.yaml with its quick block cut to a few items and replicates."""
    quick = {"default": "{n_items: 8, replicates: 4}", "estimators": "{n_items: 2, replicates: 4}",
             "samplers": "{n_items: 8, replicates: 2}", "rl": "{n_items: 8, replicates: 1}"}[name]
    text = re.sub(r"^quick: .*$", f"quick: {quick}", (ROOT / "suites" / f"{name}.yaml").read_text(), flags=re.M)
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["default", "estimators", "samplers", "rl"])
def test_builtin_suite_reports_pass(suite, tmp_path, monkeypatch):
    run_dir = Runner(_shrunk(suite, tmp_path), results=tmp_path / "results", quick=True, progress=False).run()
    md, cap = _render(run_dir, tmp_path / "reports", monkeypatch)
    assert cap.intervals
    assert _check(md, cap) == []
