"""Suite files: every broken suite fails at plan time naming the file, the key path and what was
expected; sweeps expand into stable cells; quick mode caps the work; the suite hash pins the file."""
from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from harness.config import Cell, load_suite, parse_suite, plan
from harness.types import Budget, HarnessError

ROOT = Path(__file__).resolve().parents[1]

HEAD = """\
suite: t
models:
  tiny: {name: tiny, params: {}}
tasks:
  addition: {name: addition, params: {n_digits: 3, n_test: 50}, n_items: 10}
"""
GEN = "{id: gen, kind: generate, model: tiny, task: addition, sampler: {name: low_confidence}}"
LIK = "{id: lik, kind: likelihood, model: tiny, task: addition, estimator: {name: mc_elbo}}"


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def with_studies(*studies: str, head: str = HEAD) -> str:
    return head + "studies:\n" + "".join(f"  - {s}\n" for s in studies)


def planned(tmp_path: Path, text: str, quick: bool = False) -> list[Cell]:
    return plan(load_suite(write(tmp_path, text)), quick=quick)


def fails(tmp_path: Path, text: str, *fragments: str, quick: bool = False) -> str:
    """Assert that loading and planning `text` fails; the message names the file and every fragment."""
    path = write(tmp_path, text)
    with pytest.raises(HarnessError) as info:
        plan(load_suite(path), quick=quick)
    msg = str(info.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


# -- broken suites ----------------------------------------------------------------------------
def test_invalid_yaml_names_the_line(tmp_path):
    text = "suite: t\nstudies:\n  - {id: a, kind: generate\n  - {id: b}\n"
    fails(tmp_path, text, "not valid YAML", "at line 4")


def test_tab_indentation_names_the_line(tmp_path):
    fails(tmp_path, "suite: t\nstudies:\n\t- {id: a}\n", "not valid YAML at line 3")


def test_unreadable_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(HarnessError, match="cannot read suite file") as info:
        load_suite(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_top_level_must_be_a_mapping(tmp_path, text):
    fails(tmp_path, text, "expected a mapping with keys suite, description, models, tasks, studies, quick")


def test_unknown_top_level_key_suggests(tmp_path):
    text = with_studies(GEN).replace("tasks:", "taks:")
    fails(tmp_path, text, "suite.yaml.taks: unknown key; did you mean 'tasks'?", "expected keys: suite,")


def test_missing_suite_name(tmp_path):
    text = with_studies(GEN).replace("suite: t\n", "")
    fails(tmp_path, text, "suite.yaml: missing required key 'suite'")


def test_bad_suite_name(tmp_path):
    fails(tmp_path, with_studies(GEN).replace("suite: t", "suite: 'a b/c'"),
          "suite.yaml.suite: expected a name of letters, digits")
    fails(tmp_path, with_studies(GEN).replace("suite: t", "suite: 7"), "suite.yaml.suite: expected str, got 7")


def test_missing_studies(tmp_path):
    fails(tmp_path, HEAD, "suite.yaml.studies: expected at least one study")


def test_empty_studies(tmp_path):
    fails(tmp_path, HEAD + "studies: []\n", "suite.yaml.studies: expected at least one study")


def test_studies_not_a_list(tmp_path):
    fails(tmp_path, HEAD + "studies: {a: 1}\n", "suite.yaml.studies: expected a list, got {")


def test_unknown_study_kind(tmp_path):
    study = GEN.replace("kind: generate", "kind: train")
    fails(tmp_path, with_studies(GEN, study),
          "suite.yaml.studies[1].kind: expected one of 'generate', 'likelihood', 'estimator_variance', "
          "'exact_reference', 'gradient_variance', 't_mask_decomposition', 'exact_moments', 'rl', got 'train'")


def test_unknown_study_key_suggests(tmp_path):
    study = GEN.replace("sampler:", "samplr:")
    fails(tmp_path, with_studies(study), "studies[0].samplr: unknown key; did you mean 'sampler'?")


def test_study_missing_required_key(tmp_path):
    study = GEN.replace("model: tiny, ", "")
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0]: missing required key 'model'")


def test_undefined_model(tmp_path):
    study = GEN.replace("model: tiny", "model: llada")
    fails(tmp_path, with_studies(LIK, study),
          "suite.yaml.studies[1].model: 'llada' is not defined under models", "defined: tiny")


def test_undefined_task(tmp_path):
    study = LIK.replace("task: addition", "task: gsm8k")
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].task: 'gsm8k' is not defined under tasks", "defined: addition")


def test_unknown_model_name(tmp_path):
    text = with_studies(GEN).replace("name: tiny", "name: tinny")
    fails(tmp_path, text, "suite.yaml.models.tiny: unknown model 'tinny'; did you mean 'tiny'?",
          "hf_masked")


def test_model_param_value_checked_at_plan_time(tmp_path):
    # Building a model spec is cheap (nothing loads), so __post_init__ checks run before compute.
    text = with_studies(GEN).replace("params: {}", "params: {dtype: float8}")
    fails(tmp_path, text, "suite.yaml.models.tiny: dtype must be one of", "float32")


def test_model_param_type(tmp_path):
    text = with_studies(GEN).replace("params: {}", "params: {checkpoint: 3}")
    fails(tmp_path, text, "suite.yaml.models.tiny.params.checkpoint: expected str, got 3")


def test_unknown_sampler(tmp_path):
    study = GEN.replace("low_confidence", "low_confidense")
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].sampler: unknown sampler 'low_confidense'; did you mean 'low_confidence'?")


def test_unknown_estimator_parameter(tmp_path):
    study = LIK.replace("{name: mc_elbo}", "{name: mc_elbo, params: {n_mcc: 4}}")
    fails(tmp_path, with_studies(GEN, study),
          "suite.yaml.studies[1].estimator.params.n_mcc: unknown parameter of estimator 'mc_elbo'",
          "did you mean 'n_mc'?")


def test_wrong_parameter_type(tmp_path):
    study = LIK.replace("{name: mc_elbo}", "{name: mc_elbo, params: {n_mc: eight}}")
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].estimator.params.n_mc: expected int, got 'eight' (str)")


def test_wrong_literal_parameter(tmp_path):
    study = LIK.replace("{name: mc_elbo}", "{name: mc_elbo, params: {t_law: uniform}}")
    fails(tmp_path, with_studies(study),
          "studies[0].estimator.params.t_law: expected one of 'iid', 'stratified', 'antithetic', 'count'")


def test_component_value_error(tmp_path):
    study = LIK.replace("{name: mc_elbo}", "{name: mc_elbo, params: {n_mc: 0}}")
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].estimator.params.n_mc: expected an integer in [1, 1000000], got 0")


def test_component_not_a_mapping(tmp_path):
    study = GEN.replace("{name: low_confidence}", "low_confidence")
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].sampler: expected a mapping with keys name, params")


def test_sweep_over_non_list(tmp_path):
    study = LIK[:-1] + ", sweep: {estimator.params.n_mc: 8}}"
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].sweep.estimator.params.n_mc: expected a non-empty list of values, got 8")


def test_sweep_over_empty_list(tmp_path):
    study = LIK[:-1] + ", sweep: {seed: []}}"
    fails(tmp_path, with_studies(study), "studies[0].sweep.seed: expected a non-empty list of values")


def test_sweep_over_disallowed_root(tmp_path):
    study = LIK[:-1] + ", sweep: {budget.nfe: [10, 20]}}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].sweep.budget.nfe: can only sweep sampler, estimator")


def test_sweep_key_must_be_a_path(tmp_path):
    study = LIK[:-1] + ", sweep: {1: [10, 20]}}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].sweep: expected dotted key paths")


def test_sweep_not_a_mapping(tmp_path):
    study = LIK[:-1] + ", sweep: [seed, 1]}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].sweep: expected a mapping")


def test_sweep_into_a_scalar(tmp_path):
    study = LIK[:-1] + ", sweep: {seed.x: [1, 2]}}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].sweep", "'seed.x' does not lead to a mapping")


def test_sweep_value_of_wrong_type(tmp_path):
    study = LIK[:-1] + ", sweep: {estimator.params.n_mc: [4, many]}}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].estimator.params.n_mc: expected int, got 'many'")


def test_sweep_over_undefined_model(tmp_path):
    study = LIK[:-1] + ", sweep: {model: [tiny, [x]]}}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].model: ['x'] is not defined under models")


def test_sweep_duplicate_values_give_duplicate_cells(tmp_path):
    study = LIK[:-1] + ", sweep: {seed: [1, 1]}}"
    fails(tmp_path, with_studies(study), "two cells share the id 'lik[seed=1]'")


def test_duplicate_study_ids(tmp_path):
    fails(tmp_path, with_studies(GEN, LIK.replace("id: lik", "id: gen")),
          "suite.yaml.studies[1].id: expected a unique name, got 'gen' (already the id of studies[0])")


def test_bad_study_id(tmp_path):
    fails(tmp_path, with_studies(GEN.replace("id: gen", "id: 'a b'")),
          "suite.yaml.studies[0].id: expected a unique name of letters, digits", "got 'a b'")


def test_generate_study_given_an_estimator(tmp_path):
    study = GEN[:-1] + ", estimator: {name: mc_elbo}}"
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].estimator: a 'generate' study takes a 'sampler', not a 'estimator'")


def test_likelihood_study_without_estimator(tmp_path):
    study = LIK.replace(", estimator: {name: mc_elbo}", "")
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0]: a 'likelihood' study needs a 'estimator' component")


@pytest.mark.parametrize("value", [0, -2])
def test_replicates_must_be_positive(tmp_path, value):
    study = LIK[:-1] + f", replicates: {value}}}"
    fails(tmp_path, with_studies(GEN, study),
          f"suite.yaml.studies[1].replicates: expected an integer in [1, 1000000], got {value}")


def test_replicates_must_be_an_int(tmp_path):
    study = LIK[:-1] + ", replicates: true}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].replicates: expected int, got True")


def test_batch_size_must_be_positive(tmp_path):
    study = LIK[:-1] + ", batch_size: 0}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].batch_size: expected an integer in [1, 1000000], got 0")


def test_budget_with_wrong_key(tmp_path):
    study = GEN[:-1] + ", budget: {nfes: 100}}"
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].budget.nfes: unknown key; did you mean 'nfe'?",
          "expected keys: nfe, tokens, flops, wall_s")


def test_budget_with_wrong_type(tmp_path):
    study = GEN[:-1] + ", budget: {nfe: lots}}"
    fails(tmp_path, with_studies(study), "suite.yaml.studies[0].budget.nfe: expected int or null, got 'lots'")


def test_budget_exceeded_at_plan_time(tmp_path):
    # addition n_digits=3 -> gen_length 5; steps 5 -> 5 NFE per item; 10 items x 2 replicates = 100.
    study = "{id: g, kind: generate, model: tiny, task: addition, replicates: 2, " \
            "sampler: {name: low_confidence, params: {steps: 5}}, budget: {nfe: 99}}"
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].budget.nfe: cell 'g' needs 100 NFE",
          "5 per item x 10 items x 2 replicates", "budget is 99")
    ok = planned(tmp_path, with_studies(study.replace("nfe: 99", "nfe: 100")))
    assert ok[0].budget == Budget(nfe=100)


def test_budget_exceeded_for_likelihood(tmp_path):
    study = LIK.replace("{name: mc_elbo}", "{name: mc_elbo, params: {n_mc: 4}}")[:-1] + ", budget: {nfe: 39}}"
    fails(tmp_path, with_studies(study), "studies[0].budget.nfe: cell 'lik' needs 40 NFE")


def test_budget_exceeded_names_the_sweep_cell(tmp_path):
    study = "{id: g, kind: generate, model: tiny, task: addition, sampler: {name: low_confidence}, " \
            "budget: {nfe: 60}, sweep: {sampler.params.cfg_scale: [0.0, 1.0]}}"
    # cfg_scale > 0 doubles the passes: 2 x 5 x 10 = 100 > 60; cfg_scale 0 needs 50.
    fails(tmp_path, with_studies(study), "cell 'g[cfg_scale=1.0]' needs 100 NFE")


def test_sampler_incompatible_with_task_length(tmp_path):
    # gen_length 5 is not a multiple of block_length 2: caught at plan time, not mid-run.
    study = GEN.replace("{name: low_confidence}", "{name: low_confidence, params: {block_length: 2}}")
    fails(tmp_path, with_studies(study),
          "suite.yaml.studies[0].sampler: gen_length 5 is not a multiple of block_length 2")


def test_task_param_invalid(tmp_path):
    text = with_studies(GEN).replace("n_digits: 3", "n_digits: 0")
    fails(tmp_path, text, "suite.yaml.tasks.addition: need 1 <= min_digits <= n_digits <= 9, got 1, 0")


def test_task_param_unknown(tmp_path):
    text = with_studies(GEN).replace("n_digits: 3", "n_digit: 3")
    fails(tmp_path, text, "suite.yaml.tasks.addition.params.n_digit: unknown parameter of task 'addition'",
          "did you mean 'n_digits'?")


def test_task_split_invalid(tmp_path):
    text = with_studies(GEN).replace("n_items: 10", "n_items: 10, split: dev")
    fails(tmp_path, text, "suite.yaml.tasks.addition.split: expected one of 'train', 'test', got 'dev'")


@pytest.mark.parametrize("value", [0, -3])
def test_task_n_items_must_be_positive(tmp_path, value):
    text = with_studies(GEN).replace("n_items: 10", f"n_items: {value}")
    fails(tmp_path, text, "suite.yaml.tasks.addition.n_items: expected an integer in [1, 10000000]", f"got {value}")


def test_quick_values_must_be_positive(tmp_path):
    fails(tmp_path, with_studies(GEN) + "quick: {replicates: 0}\n",
          "suite.yaml.quick.replicates: expected an integer in [1, 1000000], got 0")
    fails(tmp_path, with_studies(GEN) + "quick: {n_item: 5}\n",
          "suite.yaml.quick.n_item: unknown key; did you mean 'n_items'?")


# -- what planning produces -------------------------------------------------------------------
def test_sweep_is_the_cartesian_product_with_stable_ids(tmp_path):
    study = ("{id: elbo, kind: likelihood, model: tiny, task: addition, estimator: {name: mc_elbo}, "
             "sweep: {estimator.params.n_mc: [1, 4, 8], estimator.params.t_law: [iid, count]}}")
    text = with_studies(GEN, study)
    cells = planned(tmp_path, text)
    assert [c.id for c in cells] == [
        "gen",
        "elbo[n_mc=1,t_law=iid]", "elbo[n_mc=1,t_law=count]",
        "elbo[n_mc=4,t_law=iid]", "elbo[n_mc=4,t_law=count]",
        "elbo[n_mc=8,t_law=iid]", "elbo[n_mc=8,t_law=count]",
    ]
    assert len({c.id for c in cells}) == len(cells)
    sweep = [c for c in cells if c.study == "elbo"]
    assert {(c.component.params["n_mc"], c.component.params["t_law"]) for c in sweep} == {
        (n, t) for n in (1, 4, 8) for t in ("iid", "count")}
    assert sweep[0].point == {"estimator.params.n_mc": 1, "estimator.params.t_law": "iid"}
    assert all(c.component.name == "mc_elbo" and c.component_kind == "estimators" for c in sweep)
    assert cells[0].component_kind == "samplers" and cells[0].point == {}
    # Planning the same file again gives the same cells, in the same order.
    again = plan(load_suite(tmp_path / "suite.yaml"))
    assert [c.id for c in again] == [c.id for c in cells]
    assert again == cells


def test_sweep_over_seed_and_model(tmp_path):
    head = HEAD.replace("  tiny: {name: tiny, params: {}}",
                        "  tiny: {name: tiny, params: {}}\n  tiny64: {name: tiny, params: {dtype: float64}}")
    study = LIK[:-1] + ", sweep: {model: [tiny, tiny64], seed: [0, 7]}}"
    cells = planned(tmp_path, with_studies(study, head=head))
    assert [c.id for c in cells] == ["lik[model=tiny,seed=0]", "lik[model=tiny,seed=7]",
                                     "lik[model=tiny64,seed=0]", "lik[model=tiny64,seed=7]"]
    assert [c.seed for c in cells] == [0, 7, 0, 7]
    assert [c.model.params for c in cells] == [{}, {}, {"dtype": "float64"}, {"dtype": "float64"}]


def test_sweep_does_not_leak_between_cells(tmp_path):
    study = ("{id: g, kind: generate, model: tiny, task: addition, "
             "sampler: {name: low_confidence, params: {temperature: 0.5}}, sweep: {sampler.params.steps: [5, 1]}}")
    cells = planned(tmp_path, with_studies(study))
    assert [c.component.params for c in cells] == [{"temperature": 0.5, "steps": 5},
                                                   {"temperature": 0.5, "steps": 1}]


def test_quick_mode_caps_items_and_replicates(tmp_path):
    head = HEAD.replace("n_items: 10", "n_items: 100").replace("n_test: 50", "n_test: 100") + \
        "  all: {name: addition, params: {n_test: 50}}\n  few: {name: addition, params: {n_test: 50}, n_items: 3}\n"
    few = LIK.replace("id: lik", "id: few").replace("task: addition", "task: few")[:-1] + ", replicates: 2}"
    text = with_studies(LIK[:-1] + ", replicates: 5}",
                        LIK.replace("id: lik", "id: all").replace("task: addition", "task: all"),
                        few, head=head) + "quick: {n_items: 7, replicates: 3}\n"
    full = planned(tmp_path, text)
    assert [(c.task.n_items, c.replicates) for c in full] == [(100, 5), (None, 1), (3, 2)]
    quick = planned(tmp_path, text, quick=True)
    assert [(c.task.n_items, c.replicates) for c in quick] == [(7, 3), (7, 1), (3, 2)]


def test_quick_mode_defaults(tmp_path):
    text = with_studies(LIK[:-1] + ", replicates: 4}").replace("n_items: 10", "n_items: 500")
    text = text.replace("n_test: 50", "n_test: 500")
    cells = planned(tmp_path, text, quick=True)
    assert (cells[0].task.n_items, cells[0].replicates) == (20, 1)


def test_quick_mode_affects_budget_check(tmp_path):
    study = ("{id: g, kind: generate, model: tiny, task: addition, sampler: {name: low_confidence}, "
             "replicates: 3, budget: {nfe: 100}}")
    text = with_studies(study) + "quick: {n_items: 4, replicates: 1}\n"
    fails(tmp_path, text, "needs 150 NFE")  # 5 x 10 x 3
    assert planned(tmp_path, text, quick=True)[0].replicates == 1  # 5 x 4 x 1 = 20


def test_suite_sha256_is_the_file_bytes(tmp_path):
    text = with_studies(GEN, LIK) + "# a comment changes the hash\n"
    path = write(tmp_path, text)
    suite = load_suite(path)
    assert suite.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert suite.path == str(path)
    assert suite.suite == "t" and [s.id for s in suite.studies] == ["gen", "lik"]
    other = load_suite(write(tmp_path, text + "\n", "other.yaml"))
    assert other.sha256 != suite.sha256


def test_parse_suite_from_data_uses_where():
    with pytest.raises(HarnessError, match=r"^inline\.studies\[0\]\.kind: expected one of"):
        parse_suite({"suite": "x", "studies": [{"id": "a", "kind": "x", "model": "m", "task": "t"}]}, "inline")


def test_smoke_suite_plans():
    suite = load_suite(ROOT / "tests" / "fixtures" / "smoke.yaml")
    cells = plan(suite)
    assert [c.id for c in cells] == ["greedy", "elbo[t_law=iid]", "elbo[t_law=count]"]
    assert suite.sha256 == hashlib.sha256((ROOT / "tests" / "fixtures" / "smoke.yaml").read_bytes()).hexdigest()


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "suites").glob("*.yaml")
                                        if not p.name.startswith("lm-eval")), ids=lambda p: p.name)
def test_every_shipped_suite_plans(path):
    """Each suite in suites/ (lm-eval*.yaml have their own schema, tested with the bridge) plans in full
    and quick mode, and every model, task and component in it builds with its parameters."""
    from harness.registry import MODELS, REGISTRIES, TASKS

    suite = load_suite(path)
    cells = plan(suite)
    assert cells and len(plan(suite, quick=True)) >= 1
    for cell in cells:
        MODELS.build(cell.model.name, cell.model.params)
        task = TASKS.build(cell.task.name, cell.task.params)
        REGISTRIES[cell.component_kind].build(cell.component.name, cell.component.params)
        assert task.gen_length >= 1


@pytest.mark.parametrize("model, kind, component, ok", [
    ("{name: diffusion_gemma, params: {preset: tiny}}", "likelihood", "mc_elbo", False),
    ("{name: diffusion_gemma, params: {preset: tiny}}", "generate", "low_confidence", False),
    ("{name: diffusion_gemma, params: {preset: tiny}}", "likelihood", "uniform_x0", True),
    ("{name: diffusion_gemma, params: {preset: tiny}}", "generate", "uniform_entropy_bound", True),
    ("{name: tiny, params: {}}", "likelihood", "uniform_x0", False),
    ("{name: tiny, params: {}}", "generate", "uniform_entropy_bound", False),
    ("{name: llada, params: {preset: tiny}}", "likelihood", "mc_elbo", True),
])
def test_noise_mismatch_between_model_and_component_fails_at_plan_time(tmp_path, model, kind, component, ok):
    key = "estimator" if kind == "likelihood" else "sampler"
    text = (f"suite: t\nmodels:\n  m: {model}\ntasks:\n  add: {{name: addition, params: {{}}}}\n"
            f"studies:\n  - id: s\n    kind: {kind}\n    model: m\n    task: add\n    {key}: {{name: {component}}}\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    if ok:
        assert plan(load_suite(path))
    else:
        with pytest.raises(HarnessError, match=rf"{key} '{component}' is for .*-noise models, but model"):
            plan(load_suite(path))
