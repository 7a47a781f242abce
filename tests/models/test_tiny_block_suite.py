"""Block vs full attention at matched NFE in the report (harness/report/samplers.py `model_pairs`), from
a real small run of the built-in tiny models, and the shipped suites that compare them."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_suite, plan
from harness.records import read_records
from harness.report.samplers import model_pairs, model_pairs_headline, render_samplers_section
from harness.runner import Runner
from harness.stats.paired import holm, mcnemar_exact
from tests.helpers import write_suite

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
suite: block-mini
models:
  full: {name: tiny, params: {checkpoint: tiny-addition-c16}}
  block: {name: tiny, params: {checkpoint: tiny-addition-c16-block4}}
tasks:
  addition16: {name: addition, params: {n_digits: 3, canvas: 16}, split: test, n_items: 40}
studies:
  - {id: full-lc, kind: generate, model: full, task: addition16, sampler: {name: low_confidence,
     params: {block_length: 4}}, batch_size: 40, sweep: {sampler.params.steps: [4, 16]}}
  - {id: block-lc, kind: generate, model: block, task: addition16, sampler: {name: low_confidence,
     params: {block_length: 4}}, batch_size: 40, sweep: {sampler.params.steps: [4, 16]}}
  - {id: block-th, kind: generate, model: block, task: addition16, sampler: {name: threshold,
     params: {block_length: 4, tau: 0.9}}, batch_size: 40}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("block")
    return Runner(write_suite(tmp, SUITE), results=tmp / "results", progress=False).run()


def test_cells_of_equal_nfe_on_two_models_are_paired_by_item(run_dir):
    records = read_records(run_dir)
    pairs = model_pairs(records)
    # steps 4 and 16 on both models; the threshold cell has no counterpart on the other model
    assert [(p["base"], p["new"]) for p in pairs] == [("full-lc[steps=4]", "block-lc[steps=4]"),
                                                     ("full-lc[steps=16]", "block-lc[steps=16]")]
    raw = []
    for p in pairs:
        assert p["base_model"] == "tiny(checkpoint=tiny-addition-c16)"
        assert p["new_model"] == "tiny(checkpoint=tiny-addition-c16-block4)"
        assert p["nfe"] in (4.0, 16.0) and p["binary"]
        out = {c: {r["item_id"]: r["outcome"]["value"] for r in records if r["cell_id"] == c}
               for c in (p["base"], p["new"])}
        items = sorted(out[p["base"]])
        ref = mcnemar_exact([out[p["base"]][i] for i in items], [out[p["new"]][i] for i in items])
        c = p["comparison"]
        assert c.test == f"McNemar exact (b01={ref['b01']}, b10={ref['b10']})" and c.p == pytest.approx(ref["p"])
        assert c.n == 40 and c.mean_diff == pytest.approx((ref["b01"] - ref["b10"]) / 40)
        raw.append(ref["p"])
    adj, _ = holm(raw)
    assert [p["comparison"].p_adjusted for p in pairs] == pytest.approx(list(adj))


def test_summary_line_and_table_name_the_test(run_dir, tmp_path):
    pairs = model_pairs(read_records(run_dir))
    line = model_pairs_headline(pairs)
    assert line.startswith("Models at matched NFE: tiny(checkpoint=tiny-addition-c16-block4) vs "
                           "tiny(checkpoint=tiny-addition-c16) (exact McNemar paired by item, "
                           "Holm-adjusted over 2 pairs)")
    assert "at 4.00 NFE" in line and "at 16.00 NFE" in line
    md = render_samplers_section(run_dir, None)
    assert "### Models at matched NFE" in md and "`block-lc[steps=16]`" in md and "McNemar exact" in md
    assert model_pairs_headline([]) is None


def test_the_block_model_is_not_worse_than_full_attention_by_much(run_dir):
    """The trained block checkpoint decodes addition about as well as its full-attention parent at 16 NFE
    (a sanity floor on the shipped checkpoint, not a benchmark claim)."""
    pair = [p for p in model_pairs(read_records(run_dir)) if p["nfe"] == 16.0][0]
    assert pair["new_acc"] >= 0.8 and pair["new_acc"] >= pair["base_acc"] - 0.1


@pytest.mark.parametrize("name", ["block.yaml", "default.yaml"])
def test_shipped_suites_compare_block_and_full_attention_at_matched_nfe(name):
    """Both suites run one sampler configuration on both models at the same step counts, so every
    block cell has a full-attention cell of equal NFE (what model_pairs pairs)."""
    cells = plan(load_suite(ROOT / "suites" / name))
    by_model = {}
    for c in cells:
        if c.kind == "generate":
            key = (c.component.name, repr(sorted(c.component.params.items())), c.task.name,
                   repr(sorted(c.task.params.items())))
            by_model.setdefault(c.model.params.get("checkpoint"), set()).add(key)
    shared = by_model["tiny-addition-c16-block4"] & by_model["tiny-addition-c16"]
    assert len(shared) >= 2
    assert all("block_length" in key[1] for key in shared)


PLAN = """
suite: block-budget
models:
  full: {{name: tiny, params: {{checkpoint: tiny-addition-c16}}}}
  block: {{name: tiny, params: {{checkpoint: tiny-addition-c16-block4}}}}
  sdar: {{name: sdar, params: {{preset: tiny}}}}
tasks:
  addition16: {{name: addition, params: {{n_digits: 3, canvas: 16}}, split: test, n_items: 2}}
studies:
  - {{id: lc, kind: generate, model: {model}, task: addition16, batch_size: 2, budget: {{nfe: {nfe}}},
     sampler: {{name: low_confidence, params: {{block_length: 4, steps: 4, cache: prefix}}}}}}
"""


@pytest.mark.parametrize("model", ["block", "sdar"])
def test_plan_time_budget_counts_a_block_models_passes(model, tmp_path):
    """Planning knows the model's block size (the tiny checkpoint's config.json, the sdar preset): a
    budget the full-attention count fits (4 passes per item) but the block model's decoding does not
    (up to 5 blocks of 16 + 3 tokens, one pass each, a prefill and 5 store passes: 11) is refused."""
    from harness.types import HarnessError

    ok = load_suite(write_suite(tmp_path, PLAN.format(model="full", nfe=8), "full.yaml"))
    assert len(plan(ok)) == 1
    with pytest.raises(HarnessError, match=r"needs 22 NFE \(11 per item"):
        plan(load_suite(write_suite(tmp_path, PLAN.format(model=model, nfe=21), f"{model}.yaml")))
    assert len(plan(load_suite(write_suite(tmp_path, PLAN.format(model=model, nfe=22), f"{model}2.yaml")))) == 1


def test_a_samplers_blocks_that_are_not_the_block_models_are_refused_at_plan_time(tmp_path):
    from harness.types import HarnessError

    text = PLAN.format(model="block", nfe=100).replace("block_length: 4", "block_length: 8")
    with pytest.raises(HarnessError, match=r"studies\[0\].*sampler block_length 8: the model is a block-diffusion"):
        plan(load_suite(write_suite(tmp_path, text)))
