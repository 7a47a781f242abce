"""The samplers report section: built from a real (small) run of the runner."""
from __future__ import annotations

import pytest

from harness.records import read_records
from harness.report.samplers import FIGURES, ORDER_FIGURE, cell_summaries, render_samplers_section
from harness.runner import Runner
from tests.helpers import write_suite

SUITE = """
suite: samplers-mini
models:
  tiny: {name: tiny, params: {checkpoint: tiny-addition}}
tasks:
  addition: {name: addition, params: {n_digits: 3}, split: test, n_items: 6}
studies:
  - {id: plain, kind: generate, model: tiny, task: addition, sampler: {name: low_confidence}, batch_size: 6,
     sweep: {sampler.params.steps: [2, 5]}}
  - {id: fast, kind: generate, model: tiny, task: addition, sampler: {name: threshold}, batch_size: 6,
     sweep: {sampler.params.cache: [none, dual]}}
  - {id: rnd, kind: generate, model: tiny, task: addition, sampler: {name: random}, replicates: 2, batch_size: 4}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samplers")
    runner = Runner(write_suite(tmp, SUITE), results=tmp / "results", progress=False)
    return runner.run()


def test_cells_summarise_accuracy_nfe_and_throughput(run_dir):
    rows = {r["cell"]: r for r in cell_summaries(read_records(run_dir))}
    assert set(rows) == {"plain[steps=2]", "plain[steps=5]", "fast[cache=none]", "fast[cache=dual]", "rnd"}
    assert rows["plain[steps=5]"]["nfe"] == 5 and rows["plain[steps=2]"]["nfe"] == 2
    dual = rows["fast[cache=dual]"]
    assert dual["nfe_full"] == 1 and dual["nfe_cached"] == pytest.approx(dual["nfe"] - 1)
    assert rows["rnd"]["units"] == 12 and rows["rnd"]["accuracy"].n == 6  # clustered by item
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and 0 <= r["accuracy"].mean <= 1


def test_section_has_a_row_per_cell_and_writes_the_figures(run_dir, tmp_path):
    md = render_samplers_section(run_dir, tmp_path)
    assert md.startswith("## Samplers")
    for cell in ("plain[steps=2]", "fast[cache=dual]", "rnd"):
        assert f"`{cell}`" in md
    assert "Speed-up is against `plain[steps=5]`" in md and "1.00x" in md
    for stem in (*FIGURES, ORDER_FIGURE):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}.svg").stat().st_size > 0
        assert f"({stem}.png)" in md
    assert "Decoding order of item" in md


def test_lines_and_speed_reference_come_from_what_each_sampler_declares(run_dir):
    """A figure line is the sampler plus its non-default parameters minus its declared
    `budget_knobs`; the speed reference is the cell whose sampler's `speed_reference()` holds."""
    rows = {r["cell"]: r for r in cell_summaries(read_records(run_dir))}
    assert rows["plain[steps=2]"]["variant"] == rows["plain[steps=5]"]["variant"] == "low_confidence"
    assert rows["plain[steps=2]"]["knobs"] == "steps=2"  # the budget knob is listed, not a new line
    assert rows["fast[cache=dual]"]["variant"] == "threshold (cache=dual)"
    assert rows["fast[cache=none]"]["variant"] == "threshold"
    from harness.report.samplers import _baseline, _variant

    assert _baseline(list(rows.values()))["cell"] == "plain[steps=5]"  # the most passes of the reference
    # a knob the sampler does not declare as its budget makes its own line; floats print compactly
    assert _variant("low_confidence", {"steps": 4, "temperature": 1.0, "block_length": 8}) == \
        "low_confidence (block_length=8, temperature=1)"
    assert _variant("threshold", {"tau": 0.7, "max_steps": 3}) == "threshold"
    no_ref = [r for r in rows.values() if r["sampler"] != "low_confidence"]
    assert _baseline(no_ref) is None  # no declared reference: no speed-up column rather than a guess
