"""The estimator study kinds: records, plan-time validation, determinism, resume, report."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import load_suite, plan
from harness.records import read_records
from harness.registry import ESTIMATORS
from harness.report.markdown import write_report
from harness.runner import Runner
from harness.stats.estimators import GradientMoments
from harness.studies import flat_grad, random_orders, trainable
from harness.types import HarnessError
from tests.helpers import crash_mid_run, write_suite

N_ITEMS, R, R_G, T, K = 3, 4, 3, 4, 2

SUITE = """
suite: est
models:
  tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}
tasks:
  add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: {n_items}}}
studies:
  - {{id: exact, kind: exact_reference, model: tiny, task: add, estimator: {{name: exact}}, batch_size: {batch}}}
  - id: ev
    kind: estimator_variance
    model: tiny
    task: add
    estimator: {{name: mc_elbo}}
    replicates: {R}
    batch_size: {batch}
    sweep: {{estimator.params.n_mc: [1, 2]}}
  - id: coupled
    kind: estimator_variance
    model: tiny
    task: add
    estimator: {{name: coupled, params: {{n_mc: 1, include_full: false, scale: elbo}}}}
    replicates: {R}
    batch_size: {batch}
  - id: one_step
    kind: estimator_variance
    model: tiny
    task: add
    estimator: {{name: one_step, params: {{n_mc: 1}}}}
    replicates: {R}
    batch_size: {batch}
  - id: trace
    kind: estimator_variance
    model: tiny
    task: add
    estimator: {{name: trace}}
    options: {{commit_order: random}}
    replicates: {R}
    batch_size: {batch}
  - id: grad
    kind: gradient_variance
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{n_mc: 1}}}}
    replicates: {R_G}
    batch_size: {batch}
  - id: tm
    kind: t_mask_decomposition
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{n_mc: 1, t_law: count}}}}
    options: {{masks_per_t: {K}}}
    replicates: {T}
    batch_size: {batch}
"""


def suite_file(tmp_path, ckpt, batch=4, name="est.yaml", n_items=N_ITEMS):
    text = SUITE.format(ckpt=ckpt, n_items=n_items, batch=batch, R=R, R_G=R_G, T=T, K=K)
    return write_suite(tmp_path, text, name)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("est")
    return Runner(suite_file(tmp, tiny_ckpt), results=tmp / "r", progress=False).run()


def by_kind(records, kind):
    return [r for r in records if r["kind"] == kind]


def test_records_have_the_expected_fields_and_counts(run):
    recs = read_records(run)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs if r["error"]][:1]
    exact = by_kind(recs, "exact_reference")
    assert len(exact) == N_ITEMS and {r["replicate"] for r in exact} == {0}
    for r in exact:
        e = r["estimate"]
        assert r["outcome"] == {"metric": "exact_elbo", "value": e["elbo"]}
        assert e["log_p"] >= e["elbo"] - 1e-9 and 2 <= e["length"] <= 4
    ev = by_kind(recs, "estimator_variance")
    assert len(ev) == (2 + 1 + 1 + 1) * N_ITEMS * R
    for r in ev:
        assert set(r["estimate"]) <= {"value", "n", "length", "replay_abs_diff", "token_scale", "elbo_target", "masks"}
        est = ESTIMATORS.build(r["component"]["name"], r["component"]["params"])  # what it declares, recorded
        assert (r["estimate"]["token_scale"], r["estimate"]["elbo_target"], r["estimate"]["masks"]) == \
            (est.token_scale, est.elbo_target, est.masks)
        assert r["outcome"]["value"] == r["estimate"]["value"]
        assert ("replay_abs_diff" in r["estimate"]) == (r["replicate"] == 0)
    assert max(r["estimate"]["replay_abs_diff"] for r in ev if r["replicate"] == 0) == 0.0
    nfe = {r["cell_id"]: r["cost"]["nfe"] for r in ev}
    assert nfe["ev[n_mc=1]"] == 1 and nfe["ev[n_mc=2]"] == 2 and nfe["coupled"] == 2
    # trace along a random order of the L scored tokens: one pass per token
    assert all(r["cost"]["nfe"] >= 2 for r in ev if r["cell_id"] == "trace")
    # replicates differ (independent draws)
    vals = [r["estimate"]["value"] for r in ev if r["cell_id"] == "ev[n_mc=1]" and r["item_id"] == ev[0]["item_id"]]
    assert len(set(vals)) == R

    grad = by_kind(recs, "gradient_variance")
    assert len(grad) == N_ITEMS and {r["replicate"] for r in grad} == {0}
    for r in grad:
        e = r["estimate"]
        assert e["R"] == R_G and e["trace_cov"] >= 0 and e["bias_sq"] >= 0 and e["g_star_norm"] > 0
        assert -1 <= e["cos_mean"] <= 1 and -1 <= e["mean_cos"] <= 1
        assert e["n_params"] > 1000 and r["outcome"]["value"] == e["cos_mean"]
        # the unit paid for the exact passes (2^L - 1) and R_g estimator calls of 1 pass each
        assert e["exact_elbo"] <= e["exact_log_p"] + 1e-9

    tm = by_kind(recs, "t_mask_decomposition")
    assert len(tm) == N_ITEMS
    for r in tm:
        e = r["estimate"]
        assert (e["T"], e["K"], len(e["group_mean"]), len(e["t"])) == (T, K, T, T)
        assert e["total"] == pytest.approx(e["within"] + e["between"])
        assert r["cost"]["nfe"] == T * K


def test_estimator_variance_runs_item_major(run):
    ev = [r for r in read_records(run) if r["cell_id"] == "ev[n_mc=1]"]
    items = [r["item_id"] for r in ev]
    assert items == sorted(items, key=items.index)  # each item's replicates are contiguous
    assert [r["replicate"] for r in ev[:R]] == list(range(R))


def test_values_do_not_depend_on_batching(run, tmp_path, tiny_ckpt):
    other = Runner(suite_file(tmp_path, tiny_ckpt, batch=1), results=tmp_path / "r", progress=False).run()
    key = lambda r: (r["cell_id"], r["item_id"], r["replicate"])  # noqa: E731
    strip = lambda r: {k: v for k, v in r["estimate"].items() if k != "replay_abs_diff"}  # noqa: E731
    a = {key(r): strip(r) for r in read_records(run)}
    b = {key(r): strip(r) for r in read_records(other)}
    assert a.keys() == b.keys()
    for k in a:
        for field, va in a[k].items():
            if isinstance(va, float):  # gradients: float32 sums in another order
                assert b[k][field] == pytest.approx(va, rel=1e-4, abs=1e-6), (k, field)
            else:
                assert b[k][field] == va, (k, field)


def test_resume_after_crash(tmp_path, tiny_ckpt):
    path = suite_file(tmp_path, tiny_ckpt, batch=2, n_items=2)
    clean = read_records(Runner(path, results=tmp_path / "clean", progress=False).run())
    runner = Runner(path, results=tmp_path / "killed", progress=False)
    crash_mid_run(runner, after=9)
    resumed = Runner(path, resume=runner.run_dir, progress=False).run()
    got = read_records(resumed, latest=False)
    key = lambda r: (r["cell_id"], r["item_id"], r["replicate"])  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, clean))  # nothing lost, nothing duplicated
    clean_by = {key(r): r for r in clean}
    for r in got:
        assert r["status"] == "ok" and r["seed"] == clean_by[key(r)]["seed"]
        assert (r["outcome"], r["estimate"]) == (clean_by[key(r)]["outcome"], clean_by[key(r)]["estimate"])


# -- pieces -----------------------------------------------------------------------------------------
def test_trainable_restores_flags_even_on_error():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    flags = [False, True, False, True]
    for p, f in zip(module.parameters(), flags):
        p.requires_grad_(f)
    with pytest.raises(RuntimeError):
        with trainable(module) as params:
            assert all(p.requires_grad for p in params) and torch.is_grad_enabled()
            raise RuntimeError("boom")
    assert [p.requires_grad for p in module.parameters()] == flags


def test_flat_grad_matches_autograd():
    module = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    params = list(module.parameters())
    g = flat_grad(module(x).pow(2).sum(), params)
    module(x).pow(2).sum().backward()
    assert torch.allclose(g, torch.cat([p.grad.reshape(-1) for p in params]).double())


def test_gradient_moments_match_numpy():
    rng = np.random.default_rng(0)
    g_star = rng.normal(size=50)
    gs = g_star + rng.normal(scale=0.5, size=(40, 50))
    acc = GradientMoments(g_star, g_star * 2)
    for g in gs:
        acc.add(g, float(g.sum()))
    res = acc.result()
    mean = gs.mean(0)
    assert res["trace_cov"] == pytest.approx(np.trace(np.cov(gs.T, ddof=1)))
    assert res["bias_sq"] == pytest.approx(((mean - g_star) ** 2).sum())
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert res["cos_mean"] == pytest.approx(cos(mean, g_star))
    assert res["mean_cos"] == pytest.approx(np.mean([cos(g, g_star) for g in gs]))
    assert res["cos_mean_log_p"] == pytest.approx(cos(mean, g_star))  # parallel reference
    u = g_star / np.linalg.norm(g_star)
    assert res["proj_var"] == pytest.approx(np.var(gs @ u, ddof=1))
    assert res["value_var"] == pytest.approx(np.var(gs.sum(1), ddof=1))


def test_random_orders_are_permutations_of_the_scored_positions():
    cmask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    order = random_orders(cmask, gens)
    assert sorted(order[0, :3].tolist()) == [0, 1, 2] and order[0, 3] == -1
    assert sorted(order[1, :2].tolist()) == [0, 1] and order[1, 2:].tolist() == [-1, -1]


# -- plan-time validation ---------------------------------------------------------------------------
HEAD = """\
suite: t
models: {tiny: {name: tiny, params: {}}}
tasks: {add: {name: addition, params: {n_digits: 2}, n_items: 3}}
studies:
"""


def plan_fails(tmp_path, study: str, *fragments):
    path = write_suite(tmp_path, HEAD + "  - " + study + "\n")
    with pytest.raises(HarnessError) as info:
        plan(load_suite(path))
    msg = str(info.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg


BASE = "{id: s, kind: KIND, model: tiny, task: add, estimator: {name: EST}EXTRA}"


def study(kind, est="mc_elbo", extra=""):
    return BASE.replace("KIND", kind).replace("EST", est).replace("EXTRA", extra)


@pytest.mark.parametrize("text, fragments", [
    (study("exact_reference"), ["studies[0].estimator: an 'exact_reference' study", "must be 'exact'"]),
    (study("exact_reference", "exact", ", replicates: 2"), ["studies[0].replicates: an 'exact_reference'",
                                                           "expected 1 replicate, got 2"]),
    (study("t_mask_decomposition", "mc_elbo, params: {n_mc: 1}", ", replicates: 4"),
     ["studies[0].options.masks_per_t: a 't_mask_decomposition' study needs K >= 2", "got None"]),
    (study("t_mask_decomposition", "one_step", ", replicates: 4, options: {masks_per_t: 4}"),
     ["studies[0].estimator: a 't_mask_decomposition' study needs mc_elbo with n_mc: 1"]),
    (study("t_mask_decomposition", "mc_elbo, params: {n_mc: 1}", ", replicates: 4, options: {masks_per_t: many}"),
     ["studies[0].options.masks_per_t: expected int or null, got 'many'"]),
    (study("estimator_variance", "mc_elbo", ", options: {masks_per_t: 4}"),
     ["studies[0].options.masks_per_t: not an option of a 'estimator_variance' study",
      "its options: commit_order"]),
    (study("likelihood", "mc_elbo", ", options: {commit_order: random}"),
     ["studies[0].options.commit_order: not an option of a 'likelihood' study (its options: none)"]),
    (study("estimator_variance", "mc_elbo", ", options: {commit_order: sometimes}"),
     ["studies[0].options.commit_order: expected one of 'none', 'random', got 'sometimes'"]),
    (study("estimator_variance", "trace"), ["studies[0].options.commit_order: the trace estimator"]),
    (study("estimator_variance", "exact"), ["'exact' is deterministic"]),
    (study("gradient_variance"), ["studies[0].replicates: a 'gradient_variance' study needs R_g >= 2"]),
    (study("gradient_variance", "exact", ", replicates: 4"), ["'exact' has no sampling variance"]),
    (study("estimator_variance", "mc_elbo", ", options: [1]"), ["studies[0].options: expected a mapping"]),
])
def test_new_kinds_are_validated_at_plan_time(tmp_path, text, fragments):
    plan_fails(tmp_path, text, *fragments)


def test_quick_cap_below_two_inner_replicates_is_refused(tmp_path):
    path = write_suite(tmp_path, HEAD + "  - " + study("gradient_variance", "mc_elbo", ", replicates: 8") +
                       "\nquick: {n_items: 2, replicates: 1}\n")
    assert plan(load_suite(path))[0].replicates == 8
    with pytest.raises(HarnessError, match="after the quick variant's replicates cap"):
        plan(load_suite(path), quick=True)


def test_the_estimator_suite_plans(tmp_path):
    from tests.helpers import ROOT

    suite = load_suite(ROOT / "suites" / "estimators.yaml")
    cells = plan(suite)
    kinds = {c.kind for c in cells}
    assert kinds == {"exact_reference", "estimator_variance", "gradient_variance", "t_mask_decomposition",
                     "exact_moments"}
    ev = [c for c in cells if c.kind == "estimator_variance"]
    # every sampled estimator gets 200 replicates; the deterministic left-to-right likelihood needs 2
    assert all(c.replicates == (2 if c.id.startswith("left_to_right") else 200) for c in ev)
    assert all(c.task.n_items == 12 for c in cells)
    quick = plan(suite, quick=True)
    assert {c.task.n_items for c in quick} == {4} and max(c.replicates for c in quick) == 40


# -- report -----------------------------------------------------------------------------------------
def test_report_renders_the_estimator_section(run, tmp_path):
    path = write_report(run, tmp_path / "reports")
    text = path.read_text()
    assert "## Estimator study" in text
    for fragment in ("Bias against exact log p of the estimators not built for the ELBO",
                     "Does variance fall as 1/NFE?",
                     "How much do shared draws cut the ratio variance?", "exactly in",
                     "does variance from sampling t dominate", "Coupled vs independent masks",
                     "dlm-harness run", "### Gradients", "| ev[n_mc=1] |"):
        assert fragment in text, fragment
    for name in ("estimators_variance_vs_nfe", "estimators_mse_vs_nfe", "estimators_bias",
                 "estimators_ratio_spread"):
        for ext in ("png", "svg"):
            f = path.parent / f"{name}.{ext}"
            assert f.stat().st_size > 1000, f
        assert f"({name}.png)" in text
