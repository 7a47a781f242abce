"""write_report: one report per run, and several runs of one suite combined into one report."""
from __future__ import annotations

import re

from harness.records import read_manifest, read_records
from harness.report.markdown import write_report


def test_single_run_writes_markdown_and_html_with_leaderboard(report_runs, tmp_path):
    run = report_runs[0]
    path = write_report(run, tmp_path / "reports")
    m = read_manifest(run)
    assert path == tmp_path / "reports" / m["suite"] / m["run_id"] / "index.md"
    md = path.read_text()
    assert md.index("## Leaderboard") < md.index("## Samplers") < md.index("## Provenance")
    assert "| `lowconf` |" in md and "| `rand` |" in md
    page = (path.parent / "index.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) >= 1  # one NFE value: no NFE figure


def test_two_runs_of_one_suite_are_combined(report_runs, tmp_path):
    paths = write_report(report_runs, tmp_path / "reports")
    assert len(paths) == 1
    out = paths[0].parent
    assert out.parent.name == "rep" and out.name.startswith("combined-")
    # the same runs in another order give the same directory
    assert write_report(list(reversed(report_runs)), tmp_path / "reports") == paths
    md = paths[0].read_text()
    ids = [read_manifest(d)["run_id"] for d in report_runs]
    for rid in ids:  # clashing cell ids are prefixed by the run id, and both runs' provenance is there
        assert f"`{rid}/lowconf`" in md and f"`{rid}/rand`" in md
        assert f"### Run `{rid}`" in md
    board = md[md.index("## Leaderboard"):md.index("## Samplers")]
    rows = [x for x in board.splitlines() if x.startswith("| ") and not x.startswith("| rank")]
    groups = [x for x in board.splitlines() if x.startswith("- Ranks ")]
    # the two copies of a cell have identical records (same seeds): tied, so in one rank group, named
    # in that group's line in the order the board ranks them
    for rid in ids[1:]:
        line = next(g for g in groups if f"`{ids[0]}/lowconf`" in g)
        assert f"`{rid}/lowconf`" in line
    cells = [int(r.split("|")[2].split()[0]) if "tied cells" in r else 1 for r in rows]  # a row per group
    assert sum(cells) == 4
    assert sum(len(read_records(d)) for d in report_runs) == 2 * (8 + 16)
    assert (out / "index.html").exists()


def test_different_suites_get_one_report_each(report_runs, tmp_path):
    import json
    import shutil

    other = tmp_path / "other_run"
    shutil.copytree(report_runs[0], other)
    m = json.loads((other / "manifest.json").read_text())
    m["suite"] = "rep2"
    (other / "manifest.json").write_text(json.dumps(m))
    paths = write_report([report_runs[1], other], tmp_path / "reports")
    assert [p.parent.parent.name for p in paths] == ["rep", "rep2"]
    assert paths[0].parent.name == read_manifest(report_runs[1])["run_id"]
