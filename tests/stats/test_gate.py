"""The regression gate passes an unchanged tree and fails a degraded component."""
from __future__ import annotations

import subprocess
import sys

from harness.runner import Runner
from tests.helpers import ROOT, write_suite

SUITE = """
suite: gate
models:
  tiny: {{name: tiny}}
tasks:
  add: {{name: addition, params: {{n_digits: 3}}, split: test, n_items: 120}}
metrics: {{accuracy: higher}}
studies:
  - id: greedy
    kind: generate
    model: tiny
    task: add
    sampler: {sampler}
    batch_size: 120
"""


GREEDY = "{name: low_confidence}"


def run(tmp_path, sampler, name):
    path = write_suite(tmp_path, SUITE.format(sampler=sampler), f"{name}.yaml")
    return Runner(path, results=tmp_path / name, progress=False).run()


def compare(base, new, *extra):
    return subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(base), str(new), *extra],
                          cwd=ROOT, capture_output=True, text=True)


def test_gate_passes_unchanged_and_fails_degraded(tmp_path):
    base = run(tmp_path, GREEDY, "base")
    same = run(tmp_path, GREEDY, "same")
    # Degraded: random unmasking order with tokens sampled at temperature 1 (on this model the
    # order alone barely matters: random order with argmax tokens scores within a point).
    worse = run(tmp_path, "{name: random, params: {temperature: 1.0}}", "worse")
    ok = compare(base, same)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no significant change" in ok.stdout and "worse" not in ok.stdout.replace("no significant", "")
    bad = compare(base, worse)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "greedy" in bad.stdout and "accuracy" in bad.stdout and "**worse**" in bad.stdout
    # The reverse direction is an improvement, which never fails the gate.
    better = compare(worse, base)
    assert better.returncode == 0 and "**better**" in better.stdout


def test_gate_refuses_runs_of_different_suites(tmp_path, tiny_ckpt):
    base = run(tmp_path, GREEDY, "base")
    other = write_suite(tmp_path, SUITE.replace("suite: gate", "suite: other").format(sampler=GREEDY),
                        "other.yaml")
    other_run = Runner(other, results=tmp_path / "o", progress=False).run()
    out = compare(base, other_run)
    assert out.returncode == 2 and "same suite" in out.stderr and "Traceback" not in out.stderr
