"""The `exact_moments` study kind (issue 14): records, plan-time refusals, report integration."""
from __future__ import annotations

import pytest

from harness.config import load_suite, plan
from harness.records import read_records, to_frame
from harness.report.markdown import write_report
from harness.runner import Runner
from harness.stats import exact_moments as X
from harness.types import HarnessError
from tests.helpers import write_suite

SUITE = """
suite: exact-moments
models:
  tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}
tasks:
  add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: 3}}
studies:
  - {{id: exact, kind: exact_reference, model: tiny, task: add, estimator: {{name: exact}}}}
  - id: iid
    kind: estimator_variance
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{t_law: iid}}}}
    replicates: 30
    sweep: {{estimator.params.n_mc: [1, 2, 4]}}
  - id: exact-iid
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{t_law: iid}}}}
    sweep: {{estimator.params.n_mc: [1, 2, 4]}}
  - id: exact-count
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{t_law: count, n_mc: 1}}}}
  - id: exact-antithetic
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{t_law: antithetic, n_mc: 2}}}}
  - id: exact-coupled
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: coupled, params: {{include_full: false, scale: elbo}}}}
  - id: exact-trace
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: trace}}
    options: {{commit_order: random}}
  - id: grad
    kind: gradient_variance
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{t_law: count, n_mc: 1}}}}
    replicates: 3
  - id: exact-grad
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{t_law: count, n_mc: 1}}}}
    options: {{gradients: true}}
  - id: exact-one_step
    kind: exact_moments
    model: tiny
    task: add
    estimator: {{name: one_step, params: {{p_prompt: 0.15}}}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("xm")
    return Runner(write_suite(tmp, SUITE.format(ckpt=tiny_ckpt)), results=tmp / "r", progress=False).run()


def test_exact_records(run):
    recs = read_records(run)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs if r["error"]][:1]
    ex = [r for r in recs if r["kind"] == "exact_moments"]
    assert len(ex) == (3 + 6) * 3 and {r["replicate"] for r in ex} == {0}
    ref = {r["item_hash"]: r["estimate"]["elbo"] for r in recs if r["kind"] == "exact_reference"}
    by = {(r["cell_id"], r["item_hash"]): r["estimate"] for r in ex}
    for (cell, item), e in by.items():
        assert e["exact_elbo"] == pytest.approx(ref[item], abs=1e-9)
        if cell.startswith("exact-iid"):
            assert e["mean"] == pytest.approx(ref[item], abs=1e-4) and e["divergent"] and e["truncation"]
            one = by[("exact-iid[n_mc=1]", item)]
            assert e["var"] == pytest.approx(one["var"] / e["draws"], rel=1e-12)
            assert e["var"] == pytest.approx(e["var_within"] + e["var_between"], rel=1e-9)
        if cell == "exact-trace":  # a per-token mean, reported x L: mean ELBO, variance x L²
            assert e["token_scale"] and e["mean"] == pytest.approx(ref[item], abs=1e-9)
    # the table's passes are paid once per item: later cells on the same item hit the cache
    first = [r for r in ex if r["cell_id"] == "exact-iid[n_mc=1]"]
    later = [r for r in ex if r["cell_id"] == "exact-count"]
    assert all(r["cost"]["nfe"] > 0 for r in first) and all(r["cost"]["nfe"] == 0 for r in later)


def test_stats_put_exact_beside_sampled(run):
    df = to_frame(read_records(run))
    items = X.exact_items(df)
    summary = X.exact_summary(items)
    b = X.beside(df, items)
    assert set(b["cell_id"]) == {"iid[n_mc=1]", "iid[n_mc=2]", "iid[n_mc=4]"}
    assert (b["n_items"] == 3).all() and (b["R"] == 30).all()
    sl = X.exact_slopes(summary)
    row = sl[sl["study"] == "exact-iid"].iloc[0]
    assert row["slope"] == pytest.approx(-1.0, abs=1e-9) and row["verdict"].startswith("exactly 1/NFE")
    d = X.exact_decomposition(summary)
    assert set(d["cell_id"]) >= {"exact-iid[n_mc=1]", "exact-count", "exact-coupled"}
    c = X.exact_coupled(summary)
    assert sorted(c["t_law"]) == ["antithetic", "iid"] and (c["nfe"] == 2).all()
    var = summary.set_index("cell_id")["var"]
    iid = c[c["t_law"] == "iid"].iloc[0]
    assert iid["ratio"] == pytest.approx(var["exact-coupled"] / var["exact-iid[n_mc=2]"], rel=1e-12)


def test_report_shows_exact_values_and_derives_findings_from_them(run, tmp_path):
    index = write_report(run, tmp_path / "rep")
    text = index.read_text()
    assert "Exact moments beside sampled ones" in text
    assert "Does variance fall as 1/NFE? (exact)" in text and "exactly 1/NFE" in text
    assert "(exact)** One draw" in text and "Coupled vs independent masks at equal NFE (exact)" in text
    assert "finite only through" in text and "Exact gradient moments" in text
    for fig in ("estimators_exact_variance_vs_nfe", "estimators_exact_decomposition"):
        assert (index.parent / f"{fig}.png").is_file()


@pytest.mark.parametrize("estimator,options,match", [
    ("{name: trace}", "", "commit_order"),
    ("{name: autoregressive}", "", "is for causal-noise models"),
])
def test_plan_refuses_what_exact_moments_do_not_cover(tmp_path, tiny_ckpt, estimator, options, match):
    text = f"""
suite: bad
models: {{tiny: {{name: tiny, params: {{checkpoint: {tiny_ckpt}}}}}}}
tasks: {{add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: 1}}}}
studies:
  - {{id: x, kind: exact_moments, model: tiny, task: add, estimator: {estimator}{options}}}
"""
    with pytest.raises(HarnessError, match=match):
        plan(load_suite(write_suite(tmp_path, text)))


def test_exact_gradients_beside_sampled(run):
    g = X.gradients_beside(to_frame(read_records(run)))
    assert list(g["cell_id"]) == ["exact-grad"] and g.iloc[0]["sampled_cell"] == "grad"
    r = g.iloc[0]
    assert r["exact_trace"] > 0 and r["exact_bias_sq"] < 1e-9 * r["elbo_grad_norm"] ** 2  # unbiased for ∇ELBO
    assert 0 < r["sampled_trace"] and r["R_g"] == 3
