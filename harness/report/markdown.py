"""The markdown report: a summary of headline findings, the leaderboard, one registered section per
study family (harness/report/sections.py), one table per study, provenance, and how to reproduce.

Pure function of a run directory's manifest and records: rebuilding it needs nothing else.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from harness.records import read_manifest, read_records
from harness.report.format import md_table, save_figure  # noqa: F401  (re-exported)
from harness.report.leaderboard import protocol_of
from harness.report.sections import Context, load_sections
from harness.stats.denominator import counted
from harness.stats.intervals import ALPHA, LEVEL, mean_interval


def _cell_row(cell_id: str, recs: list[dict], metrics: dict | None = None, exclude_errors: bool = False) -> dict:
    ok = [r for r in recs if r["status"] == "ok"]
    metric = ok[0]["outcome"]["metric"] if ok else "-"
    # error units count as failures of a declared higher-is-better metric (harness/stats/denominator.py)
    units, _ = counted(recs, metric, (metrics or {"accuracy": "higher"}).get(metric, ""), exclude_errors=exclude_errors)
    if ok and (protocol := protocol_of(ok)):
        metric = f"{metric} ({protocol})"  # which scoring protocol made the number
    iv = mean_interval([v for _, v in units], clusters=[r["item_id"] for r, _ in units])
    n_units = len(ok)
    mean = lambda key: sum(r["cost"][key] for r in ok) / max(1, n_units)  # noqa: E731
    total_wall = sum(r["cost"]["wall_s"] for r in ok)
    return {
        "cell": cell_id, "metric": metric, "value [95% CI]": iv.fmt(3), "n items": iv.n,
        "units": n_units, "not ok": len(recs) - n_units, "non-finite": sum(map(_non_finite, recs)),
        "interval": iv.method,
        "NFE/unit": f"{mean('nfe'):.1f}", "tokens/unit": f"{mean('tokens'):.0f}",
        "GFLOP/unit": f"{mean('flops') / 1e9:.4f}", "model s": f"{total_wall:.2f}",
    }


def results_table(run_dir: Path, limit: int = 30) -> str:
    """A short plain-text table of a run's cells (metric, value with its 95% interval, items, units
    not ok, NFE per unit) for the terminal at the end of `dlm-harness run`."""
    by_cell: dict[str, list] = defaultdict(list)
    for r in read_records(run_dir):
        if not str(r.get("study", "")).endswith(".steps"):  # an rl cell's per-step records
            by_cell[r["cell_id"]].append(r)
    rows = [("cell", "metric", "value [95% CI]", "n", "not ok", "NFE/unit")]
    for cell_id, recs in list(by_cell.items())[:limit]:
        row = _cell_row(cell_id, recs)
        rows.append((cell_id, row["metric"], row["value [95% CI]"], str(row["n items"]), str(row["not ok"]),
                     row["NFE/unit"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if len(by_cell) > limit:
        lines.append(f"... and {len(by_cell) - limit} more cells (dlm-harness report {run_dir})")
    return "\n".join(lines)


FILTERS = ("strict-match", "flexible-extract")  # lm-eval's gsm8k filters, recorded beside the value


def _filter_rows(records: list[dict]) -> dict[tuple, list[tuple[str, float | None]]]:
    """(task, version, filter, metric, protocol) -> [(item_id, value or None for a unit not ok)]: one
    group per lm-eval filter, whether the records are per filter (`eval`) or carry both filters'
    values in `outcome.extra` (`score` under the lm-eval protocol)."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        out = r.get("outcome") or {}
        task = r.get("task") or {}
        name, version = task.get("name", "?"), str(task.get("version", "-"))
        metric, protocol = out.get("metric", "-"), out.get("protocol") or "-"
        ok = r.get("status") == "ok" and out.get("value") is not None
        extra = out.get("extra") or {}
        if ok and any(f in extra for f in FILTERS):
            for f in FILTERS:
                if f in extra:
                    groups[(name, version, f, metric, protocol)].append((r["item_id"], float(extra[f])))
            continue
        filt = (r.get("generation") or {}).get("filter") or "none"
        groups[(name, version, filt, metric, protocol)].append((r["item_id"], float(out["value"]) if ok else None))
    return groups


def lm_eval_table(run_dir: Path, exclude_errors: bool = False) -> str:
    """The results of a `score` or `eval` run in lm-evaluation-harness's table layout (Tasks, Version,
    Filter, n-shot, Metric, Value ± Stderr), with the 95% interval, the number of items and the scoring
    protocol beside it; one row per filter (strict-match and flexible-extract both). Stderr is the
    sample standard error lm-eval prints; the interval is the harness's (Wilson for 0/1 outcomes).
    A unit that is not ok counts as a failure (harness/stats/denominator.py) unless `exclude_errors`;
    the "not ok" column says how many there are either way."""
    import math

    from harness.stats.denominator import failure_value

    run_dir = Path(run_dir)
    nshot: dict = {}
    res = run_dir / "lm_eval_results.json"
    if res.is_file():
        try:
            nshot = json.loads(res.read_text()).get("n-shot") or {}
        except ValueError:
            nshot = {}
    header = ("Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr", "95% CI", "n",
              "not ok", "Protocol")
    rows = [header]
    last = None
    for (task, version, filt, metric, protocol), units in sorted(_filter_rows(read_records(run_dir)).items()):
        vals = [(i, v) for i, v in units if v is not None]
        fail = failure_value([v for _, v in vals], "higher")
        if not exclude_errors and fail is not None:
            vals += [(i, fail) for i, v in units if v is None]
        iv = mean_interval([v for _, v in vals], clusters=[i for i, _ in vals])
        n = len(vals)
        sd = math.sqrt(sum((v - iv.mean) ** 2 for _, v in vals) / (n - 1)) if n > 1 else math.nan
        ci = f"[{iv.lo:.4f}, {iv.hi:.4f}]" if n and not math.isnan(iv.lo) else "-"
        rows.append(("" if task == last else task, "" if task == last else version, filt,
                     str(nshot.get(task, "-")), metric, "↑", f"{iv.mean:.4f}" if n else "n/a", "±",
                     f"{sd / math.sqrt(n):.4f}" if n > 1 else "n/a", ci, str(iv.n),
                     str(sum(v is None for _, v in units)), protocol))
        last = task
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {1, 3, 6, 8, 10, 11}
    fmt = lambda r: "|" + "|".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(r, widths))) + "|"
    rule = "|" + "|".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(rows[0]), rule, *(fmt(r) for r in rows[1:])])


def _non_finite(record: dict) -> bool:
    """A unit that failed because a model pass or its result held NaN/inf (harness/budget.py, records.py)."""
    return record["status"] == "error" and "non-finite" in str(record.get("error") or "")





def render(run_dir: Path, out_dir: Path | None = None) -> str:
    """The report's markdown; sections with figures write them into out_dir (skipped when None)."""
    manifest = read_manifest(run_dir)
    return render_records(read_records(run_dir), manifest, run_dir, out_dir)


def _missing_note(records: list[dict], manifest: dict) -> str:
    """What a status cannot say: a run with no records, or planned cells with none (a manifest's
    "complete" describes how the run ended, not whether its records are all there)."""
    if not records:
        return "The run has **no records**: nothing below was measured. "
    planned = [c.get("id") for c in manifest.get("cells") or [] if isinstance(c, dict)]
    seen = {r["cell_id"] for r in records}
    missing = [c for c in planned if c not in seen]
    if not missing:
        return ""
    shown = ", ".join(f"`{c}`" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return f"**{len(missing)} of {len(planned)} planned cells have no record** ({shown}). "


def render_records(records: list[dict], manifest: dict, run_dir, out_dir: Path | None = None,
                   sources: list[dict] | None = None, exclude_errors: bool = False) -> str:
    """The report of `records` (one run, or several runs combined: then `sources` lists their
    manifests and `manifest` is the first one's, with `run_id` naming the combination)."""
    by_study: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_study[r["study"]][r["cell_id"]].append(r)
    if sources:
        title = (f"# Suite `{manifest['suite']}`: {len(sources)} runs combined (`{manifest['run_id']}`)\n")
        status = ", ".join(f"`{m['run_id']}` {m.get('status')}" for m in sources)
        lead = (f"Runs: {status}. Records are the concatenation of the runs' records; a cell id present in "
                "more than one run is prefixed by its run id (`<run_id>/<cell>`). ")
    else:
        title = f"# Suite `{manifest['suite']}`: run `{manifest['run_id']}`\n"
        lead = f"Status: **{manifest.get('status')}**. " + _missing_note(records, manifest)
    out = [title,
           lead + f"One level for the whole report: every interval is {100 * LEVEL:g}% and every test is at "
           f"α = {ALPHA:g}. Every value is a mean with its interval, inside what the quantity can be "
           "(Wilson for 0/1 outcomes, at the effective sample size when items repeat; chi-square for "
           "non-negative quantities; Student-t over item means otherwise; docs/methods.md §5); "
           "costs are measured by the meter, per unit (item x replicate).\n"]
    from harness.report.leaderboard import leaderboard_summary, render_leaderboard

    ctx = Context(records, manifest, run_dir, out_dir)
    sections = [sec for sec in load_sections() if sec.applies(records)]
    covered = {k for sec in sections for k in sec.kinds}  # their sections state better headlines
    headlines = leaderboard_summary([r for r in records if r.get("kind") not in covered], manifest.get("metrics"),
                                    exclude_errors=exclude_errors)
    for sec in sections:
        if sec.summary is not None:
            headlines += sec.summary(ctx)
    if headlines:
        out.append("## Summary\n")
        out.append("\n".join(f"- {h}" for h in headlines) + "\n")
    board = render_leaderboard(records, manifest.get("metrics"), exclude_errors=exclude_errors)
    if board:
        out.append(board)
    for sec in sections:
        text = sec.render(ctx)
        if text:
            out.append(text)
    if by_study:
        out.append("## Cells by study\n\nEvery cell's value, interval, failures and measured cost, study by study.\n")
    for study, cells in by_study.items():
        kind = next(iter(cells.values()))[0]["kind"]
        comp = next(iter(cells.values()))[0]["component"]
        out.append(f"### Study `{study}` ({kind}, {comp['kind']} `{comp['name']}`)\n")
        out.append(md_table([_cell_row(cid, recs, manifest.get("metrics"), exclude_errors)
                             for cid, recs in cells.items()]))
        errors = [r for recs in cells.values() for r in recs if r["status"] != "ok"]
        bad = [r for r in errors if _non_finite(r)]
        if bad:
            out.append(f"\n**{len(bad)} unit(s) failed on non-finite values (NaN/inf)**; first: "
                       f"{str(bad[0]['error']).strip().splitlines()[-1]}\n")
        if errors:
            out.append(f"\n{len(errors)} unit(s) not ok; first: `{errors[0]['status']}`: "
                       f"{(errors[0]['error'] or '').strip().splitlines()[-1] if errors[0]['error'] else ''}\n")
    out.append("## Provenance\n")
    keys = ("suite_path", "suite_sha256", "git", "versions", "device", "seeds", "models", "tasks",
            "started_at", "finished_at")
    for m in sources or [manifest]:
        if sources:
            out.append(f"### Run `{m['run_id']}`\n")
        prov = {k: m.get(k) for k in keys}
        out.append("```json\n" + json.dumps(prov, indent=1, sort_keys=True, default=str) + "\n```\n")
    out.append("## Reproduce\n")
    for m in sources or [manifest]:
        cmd = " ".join(m.get("command") or [])
        first = cmd if m.get("kind") == "score" else \
            f"dlm-harness run {m.get('suite_path')}{' --quick' if m.get('quick') else ''}"
        out.append(f"```\n{first}\ndlm-harness report <the printed run directory>\n```\n\nOriginal command: `{cmd}`\n")
    if sources:
        dirs = " ".join(str(m.get("_run_dir", m["run_id"])) for m in sources)
        out.append(f"Combine the runs into this report: `dlm-harness report {dirs}`\n")
    return "\n".join(out)


def _combine(run_dirs: list[Path]) -> tuple[list[dict], dict, list[dict], str]:
    """Records of several runs of one suite, concatenated; cell ids that occur in more than one run
    are prefixed by the run id. -> (records, manifest, source manifests, combined id)."""
    manifests = [read_manifest(d) for d in run_dirs]
    per_run = [read_records(d) for d in run_dirs]
    seen: dict[str, set] = defaultdict(set)
    for m, recs in zip(manifests, per_run):
        for r in recs:
            seen[r["cell_id"]].add(m["run_id"])
    records = []
    for m, recs in zip(manifests, per_run):
        for r in recs:
            if len(seen[r["cell_id"]]) > 1:
                r = {**r, "cell_id": f"{m['run_id']}/{r['cell_id']}"}
            records.append(r)
    key = hashlib.sha256("\n".join(sorted(m["run_id"] for m in manifests)).encode()).hexdigest()[:12]
    combined_id = f"combined-{key}"
    metrics: dict = {}
    for m in manifests:
        metrics.update(m.get("metrics") or {})
    for m, d in zip(manifests, run_dirs):
        m["_run_dir"] = str(d)
    manifest = {**manifests[0], "run_id": combined_id, "metrics": metrics or None,
                "status": ", ".join(sorted({str(m.get("status")) for m in manifests}))}
    return records, manifest, manifests, combined_id


def _write(out_dir: Path, text: str) -> Path:
    from harness.paths import write_text_atomic
    from harness.report.html import write_html

    path = write_text_atomic(out_dir / "index.md", text)  # no .tmp left behind by a failed write
    write_html(text, out_dir)
    return path


def _rescored(records: list[dict], manifest: dict, protocol: str | None) -> tuple[list[dict], dict]:
    """`report --protocol`: the stored generations re-graded under `protocol` (harness/score.py)."""
    if protocol is None:
        return records, manifest
    from harness.score import rescore

    records, metrics = rescore(records, protocol)
    return records, {**manifest, "metrics": {**(manifest.get("metrics") or {}), **metrics}}


def write_report(run_dirs, reports: Path = Path("reports"), protocol: str | None = None,
                 exclude_errors: bool = False):
    """Write reports/<suite>/<run_id>/index.md and index.html for each run directory.

    `run_dirs` is one run directory (returns the index.md path) or a list of them (returns a list
    of index.md paths): runs of the same suite given together are combined into one report,
    reports/<suite>/combined-<hash>/ (a suite given once keeps its own reports/<suite>/<run_id>/).
    """
    single = isinstance(run_dirs, (str, Path))
    dirs = [Path(run_dirs)] if single else [Path(d) for d in run_dirs]
    groups: dict[str, list[Path]] = {}
    for d in dirs:
        suite = read_manifest(d)["suite"]
        if d not in groups.setdefault(suite, []):
            groups[suite].append(d)
    paths = []
    for suite, group in groups.items():
        if len(group) == 1:
            manifest = read_manifest(group[0])
            out_dir = Path(reports) / suite / (manifest["run_id"] + (f"-{protocol}" if protocol else ""))
            out_dir.mkdir(parents=True, exist_ok=True)
            records, manifest = _rescored(read_records(group[0]), manifest, protocol)
            paths.append(_write(out_dir, render_records(records, manifest, group[0], out_dir,
                                                        exclude_errors=exclude_errors)))
        else:
            records, manifest, sources, combined_id = _combine(group)
            records, manifest = _rescored(records, manifest, protocol)
            out_dir = Path(reports) / suite / (combined_id + (f"-{protocol}" if protocol else ""))
            out_dir.mkdir(parents=True, exist_ok=True)
            text = render_records(records, manifest, " ".join(str(d) for d in group), out_dir, sources=sources,
                                  exclude_errors=exclude_errors)
            paths.append(_write(out_dir, text))
    return paths[0] if single else paths
