"""Runs are deterministic, resumable after a kill, and honour budgets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.records import read_manifest, read_records
from harness.runner import Runner
from tests.helpers import ROOT, crash_mid_run, write_suite

SUITE = """
suite: rt
models:
  tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}
tasks:
  add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: {n_items}}}
studies:
  - id: gen
    kind: generate
    model: tiny
    task: add
    sampler: {{name: low_confidence, params: {{temperature: 1.0}}}}
    batch_size: {batch}
    replicates: 2
  - id: ll
    kind: likelihood
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{n_mc: 3}}}}
    batch_size: {batch}
    sweep: {{estimator.params.t_law: [iid, antithetic]}}
{extra}
"""

VOLATILE = ("run_id",)


def stable(records):
    """Records without the fields that legitimately differ between runs (ids, timings)."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in VOLATILE}
        r["cost"] = {k: v for k, v in r["cost"].items() if k not in ("wall_s", "peak_mem")}
        out.append(json.dumps(r, sort_keys=True))
    return sorted(out)


def suite_file(tmp_path, ckpt, n_items=6, batch=4, extra="", name="s.yaml"):
    return write_suite(tmp_path, SUITE.format(ckpt=ckpt, n_items=n_items, batch=batch, extra=extra), name)


def test_rerun_is_bit_identical_and_batching_does_not_matter(tmp_path, tiny_ckpt):
    a = Runner(suite_file(tmp_path, tiny_ckpt, batch=4), results=tmp_path / "r", progress=False).run()
    b = Runner(suite_file(tmp_path, tiny_ckpt, batch=4), results=tmp_path / "r", progress=False).run()
    recs_a, recs_b = read_records(a), read_records(b)
    assert len(recs_a) == 6 * 2 + 6 * 2 and all(r["status"] == "ok" for r in recs_a)
    assert stable(recs_a) == stable(recs_b)
    # Per-unit generators: a different batch size gives the same outcomes and estimates.
    c = Runner(suite_file(tmp_path, tiny_ckpt, batch=5, name="t.yaml"), results=tmp_path / "r2", progress=False).run()
    key = lambda r: (r["cell_id"], r["item_id"], r["replicate"])  # noqa: E731
    va = {key(r): (r["outcome"], r["estimate"], r["generation"]) for r in recs_a}
    vc = {key(r): (r["outcome"], r["estimate"], r["generation"]) for r in read_records(c)}
    assert va == vc
    # Sampling at temperature 1 with two replicates actually draws different noise per replicate.
    gens = [r["generation"]["text"] for r in recs_a if r["study"] == "gen"]
    assert len(set(gens)) > 1


def test_manifest_carries_provenance(tmp_path, tiny_ckpt):
    path = suite_file(tmp_path, tiny_ckpt)
    run = Runner(path, results=tmp_path / "r", progress=False).run()
    m = read_manifest(run)
    import hashlib
    assert m["suite_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m["status"] == "complete" and len(m["cells"]) == 3
    assert {"git", "versions", "device", "seeds", "models", "tasks"} <= set(m)
    assert m["versions"]["torch"] and len(next(iter(m["models"].values()))["sha256"]) == 64


def test_resume_after_crash_with_torn_line(tmp_path, tiny_ckpt):
    path = suite_file(tmp_path, tiny_ckpt, batch=2)
    clean = read_records(Runner(path, results=tmp_path / "clean", progress=False).run())

    runner = Runner(path, results=tmp_path / "killed", progress=False)
    crash_mid_run(runner, after=7, torn=True)  # die half-way through writing the 7th record
    assert len(read_records(runner.run_dir)) == 6
    resumed = Runner(path, resume=runner.run_dir, progress=False).run()
    raw = read_records(resumed, latest=False)
    assert stable(raw) == stable(clean)  # none lost, none duplicated
    assert (resumed / "records.torn").read_text().startswith('{"')  # the fragment was kept aside


@pytest.mark.slow
def test_resume_after_real_sigkill(tmp_path, tiny_ckpt):
    path = suite_file(tmp_path, tiny_ckpt, n_items=150, batch=1)
    clean = read_records(Runner(path, results=tmp_path / "clean", progress=False).run())
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--results",
                             str(tmp_path / "k"), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    records = None
    while time.time() < deadline:
        found = list((tmp_path / "k").glob("rt/*/records.jsonl"))
        if found and found[0].stat().st_size > 0 and found[0].read_text().count("\n") >= 20:
            records = found[0]
            break
        time.sleep(0.01)
    assert records is not None, "the run never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(read_records(records.parent))
    assert 20 <= n_before < len(clean), "the kill landed mid-run"
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--resume", str(records.parent),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(records.parent)
    assert stable(read_records(records.parent, latest=False)) == stable(clean)


def test_runtime_budget_stop_is_recorded(tmp_path, tiny_ckpt):
    extra = ""
    text = SUITE.format(ckpt=tiny_ckpt, n_items=6, batch=2, extra=extra).replace(
        "    sweep: {estimator.params.t_law: [iid, antithetic]}", "    budget: {tokens: 100}")
    path = write_suite(tmp_path, text)
    run = Runner(path, results=tmp_path / "r", progress=False).run()
    recs = [r for r in read_records(run) if r["cell_id"] == "ll"]
    assert [r["status"] for r in recs][-1] == "budget_exceeded"
    assert sum(r["cost"]["tokens"] for r in recs if r["status"] == "ok") <= 100
    status = {c["cell"]: c["status"] for c in read_manifest(run)["cell_status"]}
    assert status == {"gen": "complete", "ll": "budget_exceeded"}


def test_resume_refuses_a_changed_suite(tmp_path, tiny_ckpt):
    from harness.types import HarnessError

    path = suite_file(tmp_path, tiny_ckpt)
    run = Runner(path, results=tmp_path / "r", progress=False).run()
    path.write_text(path.read_text().replace("n_mc: 3", "n_mc: 4"))
    with pytest.raises(HarnessError, match="different version"):
        Runner(path, resume=run, progress=False)
