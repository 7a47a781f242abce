"""A first markdown report: one table per study (cell group), provenance, and how to reproduce.

Pure function of a run directory's manifest and records: rebuilding it needs nothing else.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from harness.records import read_manifest, read_records
from harness.stats.intervals import mean_interval


def _cell_row(cell_id: str, recs: list[dict]) -> dict:
    ok = [r for r in recs if r["status"] == "ok"]
    metric = ok[0]["outcome"]["metric"] if ok else "-"
    iv = mean_interval([r["outcome"]["value"] for r in ok], clusters=[r["item_id"] for r in ok])
    n_units = len(ok)
    mean = lambda key: sum(r["cost"][key] for r in ok) / max(1, n_units)  # noqa: E731
    total_wall = sum(r["cost"]["wall_s"] for r in ok)
    return {
        "cell": cell_id, "metric": metric, "value [95% CI]": iv.fmt(3), "n items": iv.n,
        "units": n_units, "not ok": len(recs) - n_units, "interval": iv.method,
        "NFE/unit": f"{mean('nfe'):.1f}", "tokens/unit": f"{mean('tokens'):.0f}",
        "GFLOP/unit": f"{mean('flops') / 1e9:.4f}", "model s": f"{total_wall:.2f}",
    }


def _table(rows: list[dict]) -> str:
    if not rows:
        return "_no records_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(run_dir: Path, out_dir: Path | None = None) -> str:
    """The report's markdown; sections with figures write them into out_dir (skipped when None)."""
    manifest = read_manifest(run_dir)
    records = read_records(run_dir)
    by_study: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_study[r["study"]][r["cell_id"]].append(r)
    out = [f"# Suite `{manifest['suite']}`: run `{manifest['run_id']}`\n",
           f"Status: **{manifest.get('status')}**. Every value is a mean with a 95% interval "
           "(Wilson for 0/1 outcomes; Student-t over item means when items repeat); "
           "costs are measured by the meter, per unit (item x replicate).\n"]
    from harness.report import estimators as estimator_report

    if estimator_report.has_estimator_study(records):
        out.append(estimator_report.render_section(records, manifest, run_dir, out_dir))
    if out_dir is not None and any(r["kind"] == "generate" for r in records):
        from harness.report.samplers import render_samplers_section

        out.append(render_samplers_section(run_dir, out_dir))
    for study, cells in by_study.items():
        kind = next(iter(cells.values()))[0]["kind"]
        comp = next(iter(cells.values()))[0]["component"]
        out.append(f"## Study `{study}` ({kind}, {comp['kind']} `{comp['name']}`)\n")
        out.append(_table([_cell_row(cid, recs) for cid, recs in cells.items()]))
        errors = [r for recs in cells.values() for r in recs if r["status"] != "ok"]
        if errors:
            out.append(f"\n{len(errors)} unit(s) not ok; first: `{errors[0]['status']}`: "
                       f"{(errors[0]['error'] or '').strip().splitlines()[-1] if errors[0]['error'] else ''}\n")
    out.append("## Provenance\n")
    prov = {k: manifest.get(k) for k in ("suite_path", "suite_sha256", "git", "versions", "device",
                                         "seeds", "models", "tasks", "started_at", "finished_at")}
    out.append("```json\n" + json.dumps(prov, indent=1, sort_keys=True, default=str) + "\n```\n")
    cmd = " ".join(manifest.get("command") or [])
    out.append("## Reproduce\n")
    out.append(f"```\ndlm-harness run {manifest.get('suite_path')}{' --quick' if manifest.get('quick') else ''}\n"
               f"dlm-harness report <the printed run directory>\n```\n\nOriginal command: `{cmd}`\n")
    return "\n".join(out)


def write_report(run_dir: Path, reports: Path = Path("reports")) -> Path:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    out_dir = Path(reports) / manifest["suite"] / manifest["run_id"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(run_dir, out_dir))
    tmp.replace(path)
    return path
