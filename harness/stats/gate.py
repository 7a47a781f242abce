"""The regression gate: is a new run significantly worse than a base run? (docs/architecture.md, "Statistics")

Records of the two runs are paired by (cell, item, seed); for each cell and each pre-registered
metric the per-unit differences (new - base) go through a paired test (exact McNemar for 0/1
outcomes, a sign-flip permutation test otherwise) with Holm's correction across all comparisons.
A comparison is "worse" only when the adjusted p is below alpha AND the mean change is worse than
the tolerance in the metric's direction. The gate fails (exit 1) only on a "worse".

Some regressions need no test, and each is a "worse" row of its own: more failed units in a cell
than the base run had (a unit whose model returned NaN is a failed unit, harness/records.py); a
pre-registered metric that the base run measured but the new run has no finite value for (every
unit of the cell failed); and evidence the new run lacks: a cell of the base run with no record in
the new run, or units (item, seed) of a base cell with no record in the new one. A run killed
halfway, or with a cell's records deleted, therefore fails the gate instead of passing on what is
left; `allow_missing` (`compare --allow-missing`) turns the missing cells and units into notes, for
a new run that drops cells on purpose. A new run with no records at all fails whatever its
manifest's status says. alpha must be in (0, 1), the tolerance finite and >= 0, and the seed an
integer in [0, 2**32): a NaN or a negative alpha would disable the gate silently.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness import validate
from harness.records import read_manifest, read_records
from harness.stats.intervals import Interval
from harness.stats.paired import Comparison, compare_many
from harness.types import HarnessError

ALPHA = validate.Range(0.0, 1.0, lo_open=True, hi_open=True)
TOLERANCE = validate.Range(0.0)
SEED = validate.Range(0, 2**32 - 1, integer=True)

DEFAULT_METRICS = {"accuracy": "higher"}


def _units(records: list[dict]) -> dict:
    """{(cell, metric): {(item, seed): value}} for the records with status ok."""
    out: dict = defaultdict(dict)
    for r in records:
        if r["status"] == "ok" and r.get("outcome"):
            out[(r["cell_id"], r["outcome"]["metric"])][(r["item_id"], r["seed"])] = float(r["outcome"]["value"])
    return out


def _present(records: list[dict]) -> dict:
    """{cell: {(item, seed)}}: every unit with a record of any status."""
    out: dict = defaultdict(set)
    for r in records:
        out[r["cell_id"]].add((r["item_id"], r["seed"]))
    return out


def _failed(records: list[dict]) -> tuple[dict, dict]:
    """-> ({cell: failed units (status error)}, {cell: units})."""
    failed: dict = defaultdict(int)
    total: dict = defaultdict(int)
    for r in records:
        total[r["cell_id"]] += 1
        failed[r["cell_id"]] += r["status"] == "error"
    return failed, total


def _no_test_row(cell: str, what: str, n: int, base: float, new: float, test: str, alpha: float,
                 tolerance: float) -> tuple[str, Comparison, float, float]:
    """A "worse" row decided without a test (a count rose, or a metric vanished)."""
    diff = new - base if math.isfinite(new) else math.nan
    iv = Interval(diff, math.nan, math.nan, n, "none")
    c = Comparison(f"{cell}/{what}", n, diff, iv, math.nan, math.nan, "worse", test, alpha, tolerance, True)
    return cell, c, base, new


def gate(base_dir: Path, new_dir: Path, *, metrics: dict[str, str] | None = None, alpha: float = 0.05,
         tolerance: float = 0.02, seed: int = 0,
         allow_missing: bool = False) -> tuple[list[tuple[str, Comparison, float, float]], list[str]]:
    """-> ([(cell, comparison, base mean, new mean)], notes). Raises HarnessError on bad input."""
    validate.check(alpha, ALPHA, "compare --alpha")
    validate.check(tolerance, TOLERANCE, "compare --tolerance")
    if not isinstance(alpha, (int, float)) or not isinstance(tolerance, (int, float)):
        raise HarnessError(f"compare: alpha and tolerance must be numbers, got {alpha!r}, {tolerance!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HarnessError(f"compare --seed: expected {SEED.describe()}, got {seed!r}")
    validate.check(seed, SEED, "compare --seed")
    base_m, new_m = read_manifest(base_dir), read_manifest(new_dir)
    if base_m["suite"] != new_m["suite"]:
        raise HarnessError(f"{base_dir} is suite {base_m['suite']!r} but {new_dir} is suite {new_m['suite']!r}: "
                           "compare runs of the same suite")
    metrics = metrics or new_m.get("metrics") or DEFAULT_METRICS
    for name, direction in metrics.items():
        if direction not in ("higher", "lower"):
            raise HarnessError(f"metric {name!r}: direction must be 'higher' or 'lower', got {direction!r}")
    base_records, new_records = read_records(base_dir), read_records(new_dir)
    base, new = _units(base_records), _units(new_records)
    notes = []
    extra = []  # regressions decided without a test
    base_failed, _ = _failed(base_records)
    new_failed, new_total = _failed(new_records)
    for cell in sorted(new_total):
        if new_failed[cell] > base_failed.get(cell, 0):
            extra.append(_no_test_row(cell, "failed units", new_total[cell], base_failed.get(cell, 0),
                                      new_failed[cell], "failed-unit count: any rise fails", alpha, tolerance))
    extra += _missing(base_records, new_records, new_m, new_dir, allow_missing, notes, alpha, tolerance)
    if base_m.get("suite_sha256") != new_m.get("suite_sha256"):
        notes.append("the suite file changed between the runs (different sha256); cells are paired by id")
    diffs, meta = {}, {}
    for key in sorted(set(base) | set(new)):
        cell, metric = key
        if metric not in metrics:
            continue
        if key in base and key not in new and cell in new_total:  # measured before, no finite value now
            extra.append(_no_test_row(cell, metric, len(base[key]), float(np.mean(list(base[key].values()))),
                                      math.nan, "metric lost: no finite value in the new run", alpha, tolerance))
            continue
        if key not in base or key not in new:
            if key in new or allow_missing:  # a base cell absent from the new run is a row of _missing
                notes.append(f"{cell}/{metric}: only in the {'new' if key in new else 'base'} run; not compared")
            continue
        shared = [u for u in base[key] if u in new[key]]
        missing = len(base[key]) + len(new[key]) - 2 * len(shared)
        if missing:
            notes.append(f"{cell}/{metric}: {missing} unit(s) without a partner were left out")
        if not shared:
            continue
        a = np.array([base[key][u] for u in shared])
        b = np.array([new[key][u] for u in shared])
        diffs[f"{cell}/{metric}"] = b - a
        binary = bool(np.isin(np.concatenate([a, b]), (0.0, 1.0)).all())
        meta[f"{cell}/{metric}"] = (cell, metric, binary, float(a.mean()), float(b.mean()))
    if not diffs and not extra:
        raise HarnessError(f"no pre-registered metric ({', '.join(metrics)}) has paired records in "
                           f"{base_dir} and {new_dir}")
    comps = compare_many(diffs, alpha=alpha, tolerance=tolerance, seed=seed,
                         higher_is_better={k: metrics[m[1]] == "higher" for k, m in meta.items()},
                         binary={k: m[2] for k, m in meta.items()}) if diffs else []
    return [(meta[c.name][0], c, meta[c.name][3], meta[c.name][4]) for c in comps] + extra, notes


def _missing(base_records: list[dict], new_records: list[dict], new_m: dict, new_dir: Path, allow_missing: bool,
             notes: list[str], alpha: float, tolerance: float) -> list:
    """Rows (or, with allow_missing, notes) for the evidence of the base run that the new run lacks."""
    rows = []
    status = new_m.get("status")
    if not new_records:  # nothing to compare: never a pass, whatever the manifest says
        why = f"the new run {new_dir} has no records (its manifest says status {status!r})"
        rows.append(_no_test_row("(run)", "records", 0, float(len(base_records)), 0.0,
                                 "no records: an empty run never passes", alpha, tolerance))
        notes.append(why)
        return rows
    if status not in (None, "complete"):
        notes.append(f"the new run's manifest says status {status!r} (not complete)")
    base_units, new_units = _present(base_records), _present(new_records)
    for cell in sorted(base_units):
        lost = base_units[cell] - new_units.get(cell, set())
        if not lost:
            continue
        whole = cell not in new_units
        what = "cell missing" if whole else "units missing"
        n = len(base_units[cell])
        if allow_missing:
            notes.append(f"{cell}: {'the whole cell' if whole else f'{len(lost)} of {n} unit(s)'} of the base run "
                         "missing from the new run; not compared (--allow-missing)")
            continue
        example = ", ".join(f"{item} (seed {seed})" for item, seed in sorted(lost, key=str)[:3])
        notes.append(f"{cell}: {len(lost)} of {n} unit(s) of the base run have no record in the new run "
                     f"(e.g. {example}); pass --allow-missing if that is intended")
        rows.append(_no_test_row(cell, what, n, float(n), float(n - len(lost)),
                                 "missing evidence: any unit of the base run absent fails", alpha, tolerance))
    return rows


def format_table(rows, notes) -> str:
    head = "| cell | metric | n | base | new | new - base [95% CI] | test | p | p (Holm) | verdict |"
    lines = [head, "|" + "---|" * 10]
    for cell, c, base_mean, new_mean in rows:
        lines.append(f"| {cell} | {c.name.split('/', 1)[1]} | {c.n} | {base_mean:.4f} | {new_mean:.4f} | "
                     f"{c.interval.fmt(4)} | {c.test} | {c.p:.4g} | {c.p_adjusted:.4g} | **{c.verdict}** |")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
