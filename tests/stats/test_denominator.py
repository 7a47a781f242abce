"""The denominator rule (harness/stats/denominator.py): a unit the harness could not grade is a
failure in every printed accuracy, shown beside n; --exclude-errors gives the other denominator."""
from __future__ import annotations

import math

import pytest

from harness.report.leaderboard import leaderboard, render_leaderboard
from harness.stats.denominator import accuracy, format_summary, summarize


def rec(cell: str, item: str, value: float | None, metric: str = "accuracy", status: str = "ok") -> dict:
    return {"cell_id": cell, "item_id": item, "status": status, "study": "s", "kind": "score",
            "component": {"kind": "source", "name": cell, "params": {}}, "task": {"name": "t", "split": "test"},
            "outcome": None if status != "ok" else {"metric": metric, "value": value, "protocol": "harness"}}


def test_one_right_two_ungradable_is_a_third_not_one():
    """The issue's example: one correct and two rows the harness could not grade."""
    recs = [rec("a", "0", 1.0), rec("a", "1", None, status="error"), rec("a", "2", None, status="error")]
    assert accuracy(recs) == (pytest.approx(1 / 3), 3, 2)
    assert accuracy(recs, exclude_errors=True) == (1.0, 1, 2)
    (row,) = summarize(recs)
    assert (row["mean"], row["n"], row["errors"]) == (pytest.approx(1 / 3), 3, 2)
    assert format_summary([row]) == ["a accuracy: 0.333 (n = 3, 2 error rows counted as failures)"]
    assert format_summary(summarize(recs, exclude_errors=True)) == [
        "a accuracy: 1.000 (n = 1, 2 error rows left out (--exclude-errors))"]


def test_the_leaderboard_counts_errors_and_shows_them():
    recs = [rec("a", str(i), 1.0) for i in range(3)] + [rec("a", str(i), None, status="error") for i in range(3, 9)]
    recs += [rec("b", str(i), 1.0 if i < 5 else 0.0) for i in range(9)]
    rows = {r["cell"]: r for r in leaderboard(recs)}
    assert rows["a"]["mean"] == pytest.approx(3 / 9) and rows["a"]["n"] == 9 and rows["a"]["errors"] == 6
    assert rows["b"]["mean"] == pytest.approx(5 / 9) and rows["b"]["errors"] == 0
    assert [r["cell"] for r in leaderboard(recs)] == ["b", "a"]  # without the rule, a (3/3) would lead
    assert [r["cell"] for r in leaderboard(recs, exclude_errors=True)] == ["a", "b"]
    text = render_leaderboard(recs)
    assert "(n 9 (6 errors))" in text and "count as failures" in text  # a and b tie: one group, errors shown
    assert "left out (--exclude-errors)" in render_leaderboard(recs, exclude_errors=True)


def test_a_cell_with_only_errors_is_ranked_at_zero():
    recs = [rec("a", "0", 1.0), rec("z", "0", None, status="error"), rec("z", "1", None, status="error")]
    rows = {r["cell"]: r for r in leaderboard(recs)}
    assert rows["z"]["mean"] == 0.0 and rows["z"]["n"] == 2 and rows["z"]["errors"] == 2


def test_an_unbounded_metric_has_no_failing_value():
    """A loss (lower is better) or a value outside [0, 1]: errors are counted, not valued."""
    recs = [rec("a", "0", 2.5, "loss"), rec("a", "1", None, "loss", status="error")]
    mean, n, n_err = accuracy(recs, "loss", "lower")
    assert (mean, n, n_err) == (2.5, 1, 1)
    recs = [rec("a", "0", 7.0, "reward"), rec("a", "1", None, "reward", status="error")]
    assert accuracy(recs, "reward", "higher") == (7.0, 1, 1)
    assert math.isnan(accuracy([rec("a", "0", None, status="error")], exclude_errors=True)[0])


def test_the_cells_table_counts_errors_too():
    from harness.report.markdown import _cell_row

    cost = {"nfe": 0, "tokens": 0, "flops": 0.0, "wall_s": 0.0}
    recs = [{**rec("a", "0", 1.0), "cost": cost}] + [{**rec("a", str(i), None, status="error"), "cost": cost}
                                                     for i in (1, 2)]
    row = _cell_row("a", recs)
    assert row["value [95% CI]"].startswith("0.333") and row["n items"] == 3 and row["not ok"] == 2
    assert _cell_row("a", recs, exclude_errors=True)["value [95% CI]"].startswith("1.000")
