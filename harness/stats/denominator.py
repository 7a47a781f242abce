"""The denominator of every accuracy the harness prints: a unit it could not grade is a failure.

A record with status "error" (a row of `score` with no reference or an unreadable field, a unit
whose generation or grading failed, an lm-eval sample without a value) is a unit that was asked
for and got no correct answer. Leaving it out would let failures vanish: one correct and two
ungradable rows would read 1.000 (n = 1) instead of 0.333 (n = 3). So by default an error record
counts as a failure, with the metric's failing value, and the number of error records is shown
beside n; `exclude_errors=True` (`--exclude-errors`) gives the other denominator, over the graded
units only, for the rare reader who wants it.

The failing value is defined by the values, not by the metric's name: for a metric where higher
is better and every graded value of the cell lies in [0, 1] (accuracy, pass@1, a cell accuracy),
it is 0.0. A metric with no such bound (a loss, a reward) has no value a failure could take: its
error records are counted and shown but cannot enter the mean.
"""
from __future__ import annotations

import math

FAILED = 0.0


def is_error(record: dict) -> bool:
    """A unit the harness could not grade."""
    return record.get("status") != "ok"


def failure_value(values: list[float], direction: str) -> float | None:
    """The value an ungradable unit takes for a metric with these graded `values`, or None."""
    if direction != "higher":
        return None
    if all(isinstance(v, (int, float)) and not math.isnan(v) and 0.0 <= v <= 1.0 for v in values):
        return FAILED
    return None


def error_metrics(record: dict, cell_metrics: set[str], metrics: dict[str, str]) -> set[str]:
    """The metrics an error record is a failure of: the one its outcome names, else those its
    cell's graded records report, else every metric of `metrics` where higher is better."""
    named = (record.get("outcome") or {}).get("metric")
    if named:
        return {named} & set(metrics)
    if cell_metrics:
        return set(cell_metrics)
    return {m for m, d in metrics.items() if d == "higher"}


def counted(records: list[dict], metric: str, direction: str, *, exclude_errors: bool = False,
            ) -> tuple[list[tuple[dict, float]], int]:
    """The units of ONE cell that its `metric` averages -> ([(record, value)], number of error
    records). `records` holds the cell's graded records of that metric and its error records
    (`error_metrics` decides which); error records enter with `failure_value` unless
    `exclude_errors` or the metric has no failing value."""
    graded = [(r, float(r["outcome"]["value"])) for r in records
              if not is_error(r) and (r.get("outcome") or {}).get("metric") == metric
              and r["outcome"].get("value") is not None]
    errors = [r for r in records if is_error(r)]
    fail = failure_value([v for _, v in graded], direction)
    if errors and not exclude_errors and fail is not None:
        graded += [(r, fail) for r in errors]
    return graded, len(errors)


def accuracy(records: list[dict], metric: str = "accuracy", direction: str = "higher", *,
             exclude_errors: bool = False) -> tuple[float, int, int]:
    """Mean of `metric` over one cell's records by the rule above -> (mean, n counted, n errors)."""
    units, n_err = counted(records, metric, direction, exclude_errors=exclude_errors)
    if not units:
        return math.nan, 0, n_err
    return sum(v for _, v in units) / len(units), len(units), n_err


def summarize(records: list[dict], metrics: dict[str, str] | None = None, *,
              exclude_errors: bool = False) -> list[dict]:
    """One row per (cell, metric) by the rule above: cell, metric, mean, n (units counted), errors
    (error records of the cell), exclude_errors. What `score` and `eval` print and store."""
    metrics = metrics or {"accuracy": "higher"}
    cells: dict[str, list[dict]] = {}
    for r in records:
        cells.setdefault(r["cell_id"], []).append(r)
    rows = []
    for cell, recs in cells.items():
        reported = {(r.get("outcome") or {}).get("metric") for r in recs if not is_error(r)} & set(metrics)
        wanted = set(reported)
        for r in recs:
            if is_error(r) and (reported or all(is_error(x) for x in recs)):
                wanted |= error_metrics(r, reported, metrics)
        for metric in [m for m in metrics if m in wanted]:
            mean, n, n_err = accuracy(recs, metric, metrics[metric], exclude_errors=exclude_errors)
            rows.append({"cell": cell, "metric": metric, "mean": mean, "n": n, "errors": n_err,
                         "exclude_errors": exclude_errors})
    return rows


def format_summary(rows: list[dict]) -> list[str]:
    """`cell metric: mean (n = N, E errors counted as failures)` lines."""
    out = []
    for r in rows:
        how = ("left out (--exclude-errors)" if r["exclude_errors"] else "counted as failures")
        errs = f", {r['errors']} error rows {how}" if r["errors"] else ""
        mean = "n/a" if math.isnan(r["mean"]) else f"{r['mean']:.3f}"
        out.append(f"{r['cell']} {r['metric']}: {mean} (n = {r['n']}{errs})")
    return out
