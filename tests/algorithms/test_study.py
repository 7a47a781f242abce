"""An `rl` study through the runner: plan-time checks, normal records, and resume after a kill."""
from __future__ import annotations

import pytest

from harness.config import load_suite, plan
from harness.records import read_records
from harness.report.rl import render_section
from harness.runner import Runner
from harness.types import HarnessError
from tests.helpers import crash_mid_run, write_suite

SUITE = """
suite: rl-test
models: {tiny: {name: tiny, params: {checkpoint: tiny-addition}}}
tasks: {add: {name: addition, params: {n_digits: 3, n_train: 500}, split: test, n_items: 6}}
studies:
  - id: rl
    kind: rl
    model: tiny
    task: add
    algorithm: {name: diffu_grpo}
    options: {steps: 3, prompts: 2, group_size: 2, mu: 2, eval_every: 2, eval_items: 4, checkpoint_every: 1}
    sweep: {algorithm.name: [diffu_grpo, spg], seed: [0]}
"""


def _strip(records):
    return sorted((r["cell_id"], r["item_id"], r["outcome"]["value"],
                   (r["estimate"] or {}).get("loss"), (r["estimate"] or {}).get("cum_nfe")) for r in records)


def test_rl_study_runs_and_resumes_to_the_same_records(tmp_path):
    path = write_suite(tmp_path, SUITE)
    cells = plan(load_suite(path))
    assert [c.id for c in cells] == ["rl[name=diffu_grpo,seed=0]", "rl[name=spg,seed=0]"]
    clean = read_records(Runner(path, results=tmp_path / "a", progress=False).run())
    steps = [r for r in clean if r["outcome"]["metric"] == "train_reward"]
    evals = [r for r in clean if r["outcome"]["metric"] == "accuracy"]
    assert len(steps) == 6 and len(evals) == 12
    assert {r["study"] for r in steps} == {"rl.steps"} and {r["study"] for r in evals} == {"rl"}
    log = steps[-1]["estimate"]
    assert log["rollout_nfe"] == 2 * 2 * 5  # prompts x G x one pass per canvas token
    assert log["likelihood_nfe"] == 4 * 2 * 2  # spg: 4 sequences x m = 2 passes x mu = 2, no old/ref
    assert "heldout_accuracy" in log and log["cum_nfe"] == 3 * (20 + 16)
    runner = Runner(path, results=tmp_path / "b", progress=False)
    crash_mid_run(runner, after=3)  # killed while training the first cell
    resumed = read_records(Runner(path, resume=runner.run_dir, progress=False).run())
    assert _strip(resumed) == _strip(clean)
    starts = [r for r in clean if r["outcome"]["metric"] == "start_accuracy"]
    assert len(starts) == 8 and {r["study"] for r in starts} == {"rl.start"}  # 4 eval items x 2 cells
    assert all(r["item_id"].startswith("start/") for r in starts)
    section = render_section(clean)
    assert "| diffu_grpo | 1 (0) |" in section and "| spg | 1 (0) |" in section  # one run each, its seed shown
    assert "n/a (< 3 runs)" in section and "not tested" in section  # no interval, no test from one run
    # the comparison's baseline is data (options.baseline, the manifest's cells), not a name in the report
    assert "**Against `diffu_grpo`**" in section
    other = render_section(clean, manifest={"cells": [{"kind": "rl", "options": {"baseline": "spg"}}]})
    assert "**Against `spg`**" in other and "| diffu_grpo | 1 vs 1 |" in other


def test_rl_baseline_defaults_to_the_study_algorithm_and_must_be_run(tmp_path):
    cells = plan(load_suite(write_suite(tmp_path, SUITE)))
    assert {c.options["baseline"] for c in cells} == {"diffu_grpo"}  # the study's algorithm.name
    chosen = SUITE.replace("checkpoint_every: 1}", "checkpoint_every: 1, baseline: spg}")
    assert {c.options["baseline"] for c in plan(load_suite(write_suite(tmp_path, chosen)))} == {"spg"}
    bad = SUITE.replace("checkpoint_every: 1}", "checkpoint_every: 1, baseline: wd1}")
    with pytest.raises(HarnessError, match=r"options.baseline: 'wd1' is not an algorithm this study runs "
                                           r"\(it runs diffu_grpo, spg\)"):
        plan(load_suite(write_suite(tmp_path, bad)))


def test_rl_options_are_checked_at_plan_time(tmp_path):
    bad = SUITE.replace("mu: 2", "mu: 0")
    with pytest.raises(HarnessError, match=r"options.mu: expected an integer in \[1, 1000000\], got 0"):
        plan(load_suite(write_suite(tmp_path, bad)))
    bad = SUITE.replace("mu: 2", "muu: 2")
    with pytest.raises(HarnessError, match="muu"):
        plan(load_suite(write_suite(tmp_path, bad)))


def test_rl_calibration_pair_must_be_run(tmp_path):
    ok = SUITE.replace("checkpoint_every: 1}", "checkpoint_every: 1, calibration: [spg, diffu_grpo]}")
    assert {tuple(c.options["calibration"]) for c in plan(load_suite(write_suite(tmp_path, ok)))} == {
        ("spg", "diffu_grpo")}
    bad = SUITE.replace("checkpoint_every: 1}", "checkpoint_every: 1, calibration: [grpo, diffu_grpo]}")
    with pytest.raises(HarnessError, match=r"options.calibration: 'grpo' is not an algorithm this study runs"):
        plan(load_suite(write_suite(tmp_path, bad)))
    bad = SUITE.replace("checkpoint_every: 1}", "checkpoint_every: 1, calibration: [spg]}")
    with pytest.raises(HarnessError, match="calibration must name two different algorithms"):
        plan(load_suite(write_suite(tmp_path, bad)))
