"""The reference of an exact-moment record is the exact ELBO the report names: the one the
`exact_reference` study computes (post-EOS padding clean), also for an estimator that masks the
padding itself (one_step, d1's canvas rule). The report's one_step bias is recomputed here from
the exact values alone: mean over items of (exact one_step mean − exact_reference ELBO)."""
from __future__ import annotations

import numpy as np
import pytest

from harness.records import read_records, to_frame
from harness.report.markdown import write_report
from harness.runner import Runner
from harness.stats import exact_moments as X
from tests.helpers import write_suite

SUITE = """
suite: exact-reference
models:
  tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}
tasks:
  short: {{name: addition, params: {{n_digits: 3}}, split: test, n_items: 6}}
studies:
  - {{id: exact, kind: exact_reference, model: tiny, task: short, estimator: {{name: exact}}}}
  - id: exact-one_step
    kind: exact_moments
    model: tiny
    task: short
    estimator: {{name: one_step, params: {{p_prompt: 0.15}}}}
    sweep: {{estimator.params.n_mc: [1, 4]}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("xref")
    return Runner(write_suite(tmp, SUITE.format(ckpt=tiny_ckpt)), results=tmp / "r", progress=False).run()


def test_one_step_records_carry_the_exact_reference_elbo(run):
    recs = read_records(run)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs if r["error"]][:1]
    ref = {r["item_hash"]: r["estimate"] for r in recs if r["kind"] == "exact_reference"}
    ex = [r for r in recs if r["kind"] == "exact_moments"]
    assert len(ex) == 2 * 6
    for r in ex:
        assert r["estimate"]["exact_elbo"] == pytest.approx(ref[r["item_hash"]]["elbo"], abs=1e-9)

def test_report_one_step_bias_is_recomputed_from_exact_values(run, tmp_path):
    recs = read_records(run)
    ref = {r["item_hash"]: r["estimate"] for r in recs if r["kind"] == "exact_reference"}
    by_cell: dict = {}
    for r in recs:
        if r["kind"] == "exact_moments":
            by_cell.setdefault(r["cell_id"], []).append(r["estimate"]["mean"] - ref[r["item_hash"]]["elbo"])
    expected = {c: float(np.mean(v)) for c, v in by_cell.items()}
    # exact: more draws do not move the mean, so both cells have the same bias
    assert expected["exact-one_step[n_mc=1]"] == pytest.approx(expected["exact-one_step[n_mc=4]"], abs=1e-9)
    summary = X.exact_summary(X.exact_items(to_frame(recs))).set_index("cell_id")
    for cell, b in expected.items():
        assert summary.loc[cell, "bias_elbo"] == pytest.approx(b, abs=1e-9)
    # bias vs log p and vs ELBO differ by the mean exact (ELBO − log p): both are against the same items
    gap = float(np.mean([ref[h]["elbo"] - ref[h]["log_p"] for h in ref]))
    text = write_report(run, tmp_path / "rep").read_text()
    b = expected["exact-one_step[n_mc=4]"]
    assert f"vs ELBO {b:.3f}, vs log p {b + gap:.3f}" in text
    assert f"biased by {b:.3f} nats per sequence" in text
