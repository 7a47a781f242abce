"""The leaderboard: cells ranked by each pre-registered metric, with intervals and ties.

A pure function of records. For each metric of the suite's `metrics` map ({name: "higher" |
"lower"}), the cells whose ok records report that metric are ranked by their mean (the mean of
item means when replicates repeat items; the 95% interval is `mean_interval` clustered by item).
A cell is tied with the cell ranked just above it when their intervals overlap OR the paired test
between the two is not significant at `alpha` after Holm's correction across the adjacent
comparisons of that metric. Pairing: the seeds of two cells differ (they derive from the cell id),
so units are paired on the item: each cell's replicates are averaged per item and the shared items
compared, with exact McNemar when both cells are 0/1 per item and the sign-flip permutation test
on per-item differences otherwise. Ties chain (a tie with the cell above joins its rank group);
tied cells share the rank of their group's first cell, written "=k". The rendered board shows a rank
group of tied cells as one row and one line naming its cells, the level at which they are
indistinguishable and the smallest difference the items could have detected; its knobs column shows
only the parameters that differ between the board's cells and are away from their defaults.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np

from harness.stats.denominator import counted, error_metrics, is_error
from harness.stats.intervals import ALPHA, Interval, mean_interval
from harness.stats.paired import holm, mcnemar_exact, paired_permutation_test

DEFAULT_METRICS = {"accuracy": "higher"}


def _per_item(units: list[tuple[dict, float]]) -> dict[str, float]:
    vals: dict[str, list[float]] = defaultdict(list)
    for r, v in units:
        vals[r["item_id"]].append(v)
    return {k: float(np.mean(v)) for k, v in vals.items()}


def protocol_of(recs: list[dict]) -> str:
    """The scoring protocol(s) the records' outcomes name ("" for outcomes that name none)."""
    return ", ".join(sorted({str(r["outcome"]["protocol"]) for r in recs if (r.get("outcome") or {}).get("protocol")}))


def _overlap(a: Interval, b: Interval) -> bool:
    if any(math.isnan(x) for x in (a.lo, a.hi, b.lo, b.hi)):
        return True  # an interval we cannot compute separates nothing
    return a.lo <= b.hi and b.lo <= a.hi


def _paired(above: dict[str, float], below: dict[str, float], seed) -> tuple[float, str, int]:
    """(p, test, n pairs) for the shared items of two cells (per-item means)."""
    items = [k for k in above if k in below]
    if not items:
        return math.nan, "no shared items", 0
    a = np.array([above[k] for k in items])
    b = np.array([below[k] for k in items])
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        m = mcnemar_exact(a, b)
        return m["p"], f"McNemar exact (b01={m['b01']}, b10={m['b10']})", len(items)
    return paired_permutation_test(b - a, seed=seed), "sign-flip permutation", len(items)


def _task_key(r: dict) -> str:
    """Cells are ranked against each other only on the same task (name, parameters and split): item
    ids repeat across tasks (`test-0` of two addition variants), and a paired test across tasks would
    pair unrelated items."""
    t = r.get("task") or {}
    return json.dumps([t.get("name"), t.get("params"), t.get("split")], sort_keys=True, default=str)


def board_labels(keys: list[str]) -> dict[str, str]:
    """A short label per task key: the task name plus the parameters that differ between the keys."""
    parsed = {k: json.loads(k) for k in keys}
    names = {k: v[0] for k, v in parsed.items()}
    out = {}
    for k, (name, params, split) in parsed.items():
        params = params or {}
        same_name = [parsed[o] for o in keys if o != k and names[o] == name]
        differ = sorted(p for p in params if any((o[1] or {}).get(p) != params[p] for o in same_name))
        extra = [f"{p}={params[p]}" for p in differ]
        if any(o[2] != split for o in same_name):
            extra.append(f"split={split}")
        out[k] = f"`{name}`" + (f" ({', '.join(extra)})" if extra else "")
    return out


def leaderboard(records: list[dict], metrics: dict[str, str] | None = None, *, alpha: float = ALPHA,
                seed: int = 0, exclude_errors: bool = False) -> list[dict]:
    """One row per (metric, cell), best first within each board: the cells of one metric on one
    task (see `_task_key`).

    Row keys: metric, direction, rank (int), rank_label ("1", "=2", ...), cell, study, component,
    component_kind, params, interval (Interval), mean, n (items), units, errors (error records, counted
    as failures unless `exclude_errors`: `harness.stats.denominator`), tied (with the cell above),
    overlap, test, p and p_holm (vs the cell above; NaN for the first), n_pairs, board (the task key).
    """
    metrics = metrics or DEFAULT_METRICS
    boards: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    reported, has_ok = defaultdict(set), set()
    # an rl cell is one training run: the RL section ranks algorithms over runs (harness/report/rl.py)
    records = [r for r in records if r.get("kind") != "rl"]
    for r in records:
        out = r.get("outcome")
        has_ok.update([r["cell_id"]] if not is_error(r) else [])
        if not is_error(r) and out and out.get("metric") in metrics and out.get("value") is not None:
            boards[(out["metric"], _task_key(r))][r["cell_id"]].append(r)
            reported[r["cell_id"]].add(out["metric"])
    for r in records:  # error records: failures of their cell's metrics
        if is_error(r) and (reported[r["cell_id"]] or r["cell_id"] not in has_ok):
            for m in error_metrics(r, reported[r["cell_id"]], metrics):
                boards[(m, _task_key(r))][r["cell_id"]].append(r)
    rows: list[dict] = []
    order = list(metrics)
    for bi, ((metric, board), cells) in enumerate(sorted(boards.items(), key=lambda kv: (order.index(kv[0][0]),
                                                                                        kv[0][1]))):
        direction = metrics[metric]
        mi = (order.index(metric), bi)
        entries = []
        for cell_id, recs in cells.items():
            units, n_err = counted(recs, metric, direction, exclude_errors=exclude_errors)
            iv = mean_interval([v for _, v in units], clusters=[r["item_id"] for r, _ in units])
            comp = recs[0]["component"]
            items = _per_item(units)
            entries.append({"metric": metric, "direction": direction, "cell": cell_id, "study": recs[0]["study"],
                            "component": comp["name"], "component_kind": comp["kind"],
                            "params": comp.get("params") or {}, "interval": iv, "mean": iv.mean, "n": iv.n,
                            "board": board,
                            "units": len(units), "errors": n_err, "_items": items, "protocol": protocol_of(recs),
                            "sd": float(np.std(list(items.values()), ddof=1)) if len(items) > 1 else math.nan})
        sign = -1.0 if direction == "higher" else 1.0
        entries.sort(key=lambda e: (sign * e["mean"] if not math.isnan(e["mean"]) else math.inf, e["cell"]))
        rngs = np.random.default_rng([seed, *mi]).spawn(max(0, len(entries) - 1))
        raw = [_paired(entries[i - 1]["_items"], entries[i]["_items"], rngs[i - 1]) for i in range(1, len(entries))]
        finite = [i for i, t in enumerate(raw) if not math.isnan(t[0])]
        adj = np.full(len(raw), math.nan)
        if finite:
            adj[finite] = holm([raw[i][0] for i in finite], alpha)[0]
        rank = 1
        for i, e in enumerate(entries):
            if i == 0:
                e.update(tied=False, overlap=False, test="", p=math.nan, p_holm=math.nan, n_pairs=0)
            else:
                p, test, n_pairs = raw[i - 1]
                overlap = _overlap(entries[i - 1]["interval"], e["interval"])
                not_sig = math.isnan(adj[i - 1]) or adj[i - 1] >= alpha
                e.update(tied=overlap or not_sig, overlap=overlap, test=test, p=p, p_holm=float(adj[i - 1]),
                         n_pairs=n_pairs)
                if not e["tied"]:
                    rank = i + 1
            e["rank"] = rank
        group_size = defaultdict(int)
        for e in entries:
            group_size[e["rank"]] += 1
        for e in entries:
            e["rank_label"] = ("=" if group_size[e["rank"]] > 1 else "") + str(e["rank"])
            del e["_items"]
            rows.append(e)
    return rows


def _defaults(kind: str, name: str) -> dict:
    """The component's parameter defaults from its registry ({} when it is not registered here)."""
    from harness.registry import REGISTRIES
    from harness.types import HarnessError

    reg = REGISTRIES.get(kind if kind.endswith("s") else kind + "s")
    try:
        return {k: d for k, (_, d) in reg.fields(name).items()} if reg is not None else {}
    except HarnessError:
        return {}


def _norm(v):
    return tuple(v) if isinstance(v, list) else v


def knobs(rows: list[dict]) -> dict[str, str]:
    """Per cell of one board: only its knobs that matter for reading the board, i.e. the parameters set
    away from the component's default, of those that differ between the board's cells (a knob every
    cell shares says nothing about the ranking). "defaults" when none."""
    keys = {k for r in rows for k in r["params"]}
    varied = {k for k in keys if len({repr(_norm(r["params"].get(k))) for r in rows}) > 1}
    out = {}
    for r in rows:
        d = _defaults(r["component_kind"], r["component"])
        shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(r["params"].items())
                 if k in varied and v is not None and (k not in d or _norm(v) != _norm(d[k]))]
        out[r["cell"]] = ", ".join(shown).replace("|", "/") or "defaults"
    return out


def _groups(mrows: list[dict]) -> list[list[dict]]:
    """The board's rank groups, best first (cells tied with each other share a group)."""
    groups: dict[int, list[dict]] = {}
    for r in mrows:
        groups.setdefault(r["rank"], []).append(r)
    return list(groups.values())


def detectable(group: list[dict], alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest difference the board's items detect with `power` at `alpha` (two-sided, normal
    approximation for two independent arms of n items; pairing on items detects less when outcomes
    agree): from the group's mean for a proportion, from its item-level spread otherwise."""
    from harness.stats.power import minimum_detectable_effect

    n = min(r["n"] for r in group)
    if n < 2:
        return math.nan
    p = float(np.mean([r["mean"] for r in group]))
    if all(r["interval"].support == (0.0, 1.0) for r in group):
        return minimum_detectable_effect(n, p=min(max(p, 1.0 / n), 1 - 1.0 / n), alpha=alpha, power=power,
                                         paired=False)
    sd = float(np.mean([r["sd"] for r in group if not math.isnan(r["sd"])] or [math.nan]))
    return minimum_detectable_effect(n, sd=sd, alpha=alpha, power=power, paired=False) if sd == sd else math.nan


def _vs_above(row: dict) -> str:
    """The paired test that separates a group from the one above it."""
    if row["p"] != row["p"]:  # NaN: the first row, or nothing to pair
        return "-" if not row["test"] else f"n/a ({row['test']})"
    return f"p {row['p']:.3g} (Holm {row['p_holm']:.3g}; {row['test']}, {row['n_pairs']} items)"


def _n(row: dict) -> str:
    """n, with the number of error records beside it (counted in n unless excluded)."""
    return f"{row['n']} ({row['errors']} errors)" if row["errors"] else str(row["n"])


def _count(k: int, n: int) -> str:
    if k == n:
        return "the other cell" if n == 1 else f"all {n} other cells"
    return f"{k} of the other {n} cells"


def _boards(rows: list[dict], metrics: dict[str, str]):
    """-> [(metric, direction, board label or "", rows of that board)] in metric order."""
    labels = board_labels(sorted({r["board"] for r in rows}))
    out = []
    for metric, direction in metrics.items():
        keys = list(dict.fromkeys(r["board"] for r in rows if r["metric"] == metric))
        for k in keys:
            out.append((metric, direction, labels[k] if len(labels) > 1 else "",
                        [r for r in rows if r["metric"] == metric and r["board"] == k]))
    return out


def leaderboard_summary(records: list[dict], metrics: dict[str, str] | None = None, *,
                        exclude_errors: bool = False) -> list[str]:
    """Headline sentences: per metric and task, the top cell (or the cells tied at the top) with its
    interval, and how many cells rank below it. Nothing for a board of one cell."""
    metrics = metrics or DEFAULT_METRICS
    out = []
    for metric, direction, label, mrows in _boards(leaderboard(records, metrics, exclude_errors=exclude_errors),
                                                   metrics):
        if len(mrows) < 2:
            continue
        on = f" on {label}" if label else ""
        top = [r for r in mrows if r["rank"] == 1]
        best = top[0]
        who = (f"`{best['cell']}` ({best['component']})" if len(top) == 1 else
               f"{len(top)} cells tie for first, led by `{best['cell']}` ({best['component']})")
        below = len(mrows) - len(top)
        test = f"adjacent paired tests (exact McNemar or sign-flip permutation), Holm, α = {ALPHA:g}"
        out.append(f"Best {metric}{on} ({direction} is better): {who} at {best['interval'].fmt(3)} "
                   f"(n = {best['n']} items), ranked above {_count(below, len(mrows) - 1)} ({test})." if below else
                   f"Best {metric}{on}: no cell is significantly ahead of the other {len(mrows) - 1} ({test}); "
                   f"`{best['cell']}` ({best['component']}) has the highest mean, {best['interval'].fmt(3)}.")
    return out


def render_leaderboard(records: list[dict], metrics: dict[str, str] | None = None, *, alpha: float = ALPHA,
                       exclude_errors: bool = False) -> str:
    """The "Leaderboard" section of the report (markdown): one row per rank group; a group of tied
    cells is one row, and one line under the table names its cells and says they are indistinguishable
    at `alpha` and what difference the items could have detected."""
    metrics = metrics or DEFAULT_METRICS
    rows = leaderboard(records, metrics, alpha=alpha, exclude_errors=exclude_errors)
    if not rows:
        return ""  # no cell reports a pre-registered metric: no empty section
    out = ["## Leaderboard\n",
           "Cells ranked by each pre-registered metric, separately on each task (mean with its interval, "
           "clustered by item when replicates repeat items; n = items). A rank step is a significant paired "
           "difference between adjacent cells: per-item means on shared items, exact McNemar for 0/1 "
           "outcomes, else a sign-flip permutation test, Holm-corrected across the adjacent comparisons, "
           f"at α = {alpha:g}, with non-overlapping intervals; cells without one share a rank group (one row). "
           "The knobs column shows only the parameters that differ between the board's cells and are set away "
           "from the component's default. RL cells are single training runs: the RL section ranks their "
           "algorithms over runs instead. "
           + ("Error records (units the harness could not grade) are left out (--exclude-errors).\n"
              if exclude_errors else "Error records (units the harness could not grade) count as failures; "
              "their number is shown beside n.\n")]
    boards = _boards(rows, metrics)
    for metric, direction, label, mrows in boards:
        if len(metrics) > 1 or len(boards) > 1:
            out.append(f"### `{metric}` ({direction} is better)" + (f" on {label}" if label else "") + "\n")
        shown = knobs(mrows)
        kind = mrows[0]["component_kind"]
        lines = [f"| rank | cells | {kind} | knobs | {metric} [95% CI] | n | vs the group above (paired test) |",
                 "|---|---|---|---|---|---|---|"]
        notes = []
        for group in _groups(mrows):
            first = group[0]
            proto = f" ({first['protocol']})" if first["protocol"] else ""  # the scoring protocol beside it
            if len(group) == 1:
                lines.append(f"| {first['rank']} | `{first['cell']}` | {first['component']} | {shown[first['cell']]} | "
                             f"{first['interval'].fmt(3)}{proto} | {_n(first)} | {_vs_above(first)} |")
                continue
            rank = f"{first['rank']}–{first['rank'] + len(group) - 1}"
            comps = ", ".join(dict.fromkeys(r["component"] for r in group))
            means = [r["mean"] for r in group]
            value = (f"{group[0]['interval'].fmt(3)}{proto}" if max(means) == min(means) else
                     f"{min(means):.3f}–{max(means):.3f} (best {first['interval'].fmt(3)}){proto}")
            errs = sum(r["errors"] for r in group)
            lines.append(f"| {rank} | {len(group)} tied cells | {comps} | see below | {value} | "
                         f"{min(r['n'] for r in group)}{f' ({errs} errors)' if errs else ''} | {_vs_above(first)} |")
            mde = detectable(group, alpha)
            members = "; ".join(f"`{r['cell']}` {r['interval'].fmt(3)}" +
                                (f" (n {_n(r)})" if r["errors"] else "") +
                                (f" ({shown[r['cell']]})" if shown[r["cell"]] != "defaults" else "") for r in group)
            notes.append(f"- Ranks {rank}, indistinguishable at α = {alpha:g} (no adjacent paired test significant "
                         "after Holm, or intervals overlap)"
                         + (f"; with {min(r['n'] for r in group)} items a difference below about {mde:.3f} is "
                            "unlikely to be detected (power 0.8)" if mde == mde else "")
                         + f": {members}.")
        out.append("\n".join(lines) + "\n")
        if notes:
            out.append("\n".join(notes) + "\n")
    return "\n".join(out)
