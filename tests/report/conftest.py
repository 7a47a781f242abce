"""A small suite with two generate cells of different samplers, run twice (for combined reports)."""
from __future__ import annotations

import pytest

from harness.runner import Runner
from tests.helpers import write_suite

SUITE = """
suite: rep
models:
  tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}
tasks:
  add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: 8}}
studies:
  - id: lowconf
    kind: generate
    model: tiny
    task: add
    sampler: {{name: low_confidence, params: {{temperature: 0.0}}}}
    batch_size: 8
  - id: rand
    kind: generate
    model: tiny
    task: add
    sampler: {{name: random, params: {{}}}}
    batch_size: 8
    replicates: 2
"""


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory, tiny_ckpt):
    """Two run directories of the same small suite (the same records, different run ids)."""
    tmp = tmp_path_factory.mktemp("report_runs")
    path = write_suite(tmp, SUITE.format(ckpt=tiny_ckpt))
    return [Runner(path, results=tmp / "results", progress=False).run() for _ in range(2)]
