"""The interface contract of every registered component, iterated over the registries: a component
registered tomorrow is tested the moment it exists (or this file fails, naming it, until the table
below says how to build it).

- models: build from the parameters below, load, and answer `logits` with [B, T, V] finite values;
- estimators: defaults construct; on a small batch they return an Estimate of the right shapes with
  finite values, and the meter's NFE equals what the estimator declares before running;
- samplers: defaults construct; they return a Generation of the right shapes, and the meter's NFE is
  within what the sampler declares (the most it can take, for adaptive samplers);
- algorithms: defaults construct; one RL step on a toy task gives a finite loss and metered cost;
- tasks: defaults construct; items carry ids and prompts, and each item's own answer scores 1.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.budget import Meter
from harness.registry import ALGORITHMS, ESTIMATORS, MODELS, SAMPLERS, TASKS
from harness.types import Estimate, Generation
from tests.helpers import make_tiny

# How a contract test builds each model; a new model must add a line (a random preset: no download).
MODEL_PARAMS = {
    "tiny": {},
    "llada": {"preset": "tiny"},
    "dream": {"preset": "tiny"},
    "diffusion_gemma": {"preset": "tiny"},
    "bd3lm": {"preset": "tiny"},
    "sdar": {"preset": "tiny"},
    "hf_causal": None,  # needs a saved transformers model: tests/models/test_hf.py covers it with one
    "hf_masked": None,
}
# Models and components of the uniform-noise family run on diffusion_gemma; the rest on tiny.
REAL_DATA_TASKS = {"gsm8k": "gsm8k", "math500": "math500", "humaneval": "humaneval", "mbpp": "mbpp"}
# A completion each task must score as correct. The default is the item's reference; tasks whose
# reference is not itself an answer (code tests, a bare LaTeX answer) say how an answer is written.
GOLD = {
    "math500": lambda it: f"The answer is $\\boxed{{{it.reference}}}$.",
    "humaneval": lambda it: it.meta["canonical_solution"],
    "mbpp": lambda it: f"[BEGIN]\n{it.meta['code']}\n[DONE]",
}


def test_every_model_has_a_contract_entry():
    assert set(MODELS.names()) <= set(MODEL_PARAMS), (
        f"add {sorted(set(MODELS.names()) - set(MODEL_PARAMS))} to MODEL_PARAMS in tests/test_contract.py")


@pytest.fixture(scope="module")
def masked():
    return make_tiny(seed=0, max_len=24, d_model=32)


@pytest.fixture(scope="module")
def uniform():
    return MODELS.build("diffusion_gemma", {"preset": "tiny"}).load()


def _batch(den, L: int = 6):
    g = torch.Generator().manual_seed(0)
    prompt = torch.stack([torch.tensor(den.tokenizer.encode("12+34="))] * 2)
    vocab = [i for i in range(min(den.vocab_size, 60)) if i not in (den.mask_id, den.eos_id)]
    completion = torch.tensor(vocab)[torch.randint(len(vocab), (2, L), generator=g)]
    completion[1, -2:] = den.eos_id  # a shorter second row: EOS then padding
    cmask = torch.ones(2, L, dtype=torch.bool)
    cmask[1, -1] = False
    return prompt, completion, cmask


@pytest.mark.parametrize("name", sorted(MODEL_PARAMS))
def test_model_contract(name):
    params = MODEL_PARAMS[name]
    if params is None:
        pytest.skip(f"{name} needs a saved transformers model (tests/models/test_hf.py)")
    den = MODELS.build(name, params).load()
    x = torch.tensor([den.tokenizer.encode("1+2=") + den.tokenizer.encode("579") * 2] * 2)  # context + canvas
    out = den.logits(x)
    assert out.shape[:2] == x.shape and out.shape[2] >= den.vocab_size - 1
    assert torch.isfinite(out).all()
    assert isinstance(den.eos_id, int) and isinstance(den.shift_logits, bool)


# Specs whose capabilities differ from their family's default (the impl or checkpoint decides): each is checked too.
CAPABILITY_SPECS = [(name, params) for name, params in sorted(MODEL_PARAMS.items())] + [
    ("llada", {"preset": "tiny", "impl": "remote"}), ("dream", {"preset": "tiny", "impl": "remote"}),
    ("tiny", {"checkpoint": "tiny-addition-c16-anyorder"})]  # declares any_order_causal (its training record)


@pytest.mark.parametrize("name, params", CAPABILITY_SPECS, ids=[f"{n}-{(p or {}).get('impl', 'default')}"
                                                               for n, p in CAPABILITY_SPECS])
def test_a_model_provides_exactly_the_capabilities_its_denoiser_has(name, params):
    """`provides` (or a spec's `capabilities()`) is a claim the plan-time check trusts: each declared
    capability is a method of the loaded denoiser (remote and native alike), and each capability the
    denoiser has is declared. The family's class-level claim is the default spec's."""
    if params is None:
        pytest.skip(f"{name} needs a saved transformers model")
    from harness.config import CAPABILITIES, declared_capabilities
    from harness.models.block_attention import block_size_of

    spec = MODELS.build(name, params)
    den = spec.load()
    declared = declared_capabilities(spec)
    assert declared <= set(CAPABILITIES), f"{name} declares an unknown capability"
    has = {"logits_pattern"} if callable(getattr(den, "logits_pattern", None)) else set()
    if block_size_of(den) is None and getattr(MODELS.get(name), "noise", "masked") != "causal":
        has.add("full_attention")
        if callable(getattr(den, "logits_layerwise", None)):  # the approximate caches' view: full attention only
            has.add("logits_layerwise")
            if den.logits_layerwise(lambda layers: callable(getattr(layers, "attention_weights", None))):
                has.add("attention_weights")  # d2Cache's rollout reads them from the view
    if getattr(den, "shift_logits", False):  # Dream's layout (dKV-Cache's Prefill/PD need it)
        has.add("shifted_logits")
    card = getattr(den, "card", None) or {}
    if card.get("train", {}).get("objective") == "any_order":  # the loaded checkpoint's own training record
        has.add("any_order_causal")  # (that it holds: tests/estimators/test_any_order_checkpoint.py)
    assert declared == has, f"{name} {params}: declares {sorted(declared)}, its denoiser has {sorted(has)}"
    if params == MODEL_PARAMS[name]:
        assert declared_capabilities(MODELS.get(name)) == has, f"{name}: the family's claim is not its default's"


def test_a_component_that_needs_a_capability_is_refused_at_plan_time_by_a_model_without_it(tmp_path):
    from harness.config import load_suite, plan
    from harness.types import HarnessError
    from tests.helpers import write_suite

    required = [n for n in SAMPLERS.names() if getattr(SAMPLERS.get(n), "requires", ())]
    assert "wino" in required
    suite = """
suite: caps
models: {m: {name: llada, params: {preset: tiny}}}
tasks: {t: {name: addition, params: {n_digits: 2}, split: test, n_items: 2}}
studies:
  - {id: g, kind: generate, model: m, task: t, sampler: {name: wino}}
"""
    plan(load_suite(write_suite(tmp_path, suite)))  # the native LLaDA takes the shadow block's pattern
    remote = suite.replace("{preset: tiny}", "{preset: tiny, impl: remote}")
    with pytest.raises(HarnessError, match="needs the model's logits_pattern, which this configuration "
                       "of model .llada. does not provide.*models that do, as configured by default: .*llada"):
        plan(load_suite(write_suite(tmp_path, remote, "remote.yaml")))
    block = suite.replace("{name: llada, params: {preset: tiny}}",
                          "{name: tiny, params: {checkpoint: tiny-addition-c16-block4}}")
    with pytest.raises(HarnessError, match="needs the model's full_attention"):  # a block checkpoint of tiny
        plan(load_suite(write_suite(tmp_path, block, "block.yaml")))


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_estimator_contract(name, masked, uniform):
    est = ESTIMATORS.build(name, {})
    # what the statistics read instead of its name (harness/stats/estimators.py; the exact check of
    # these declarations is tests/estimators/test_exact_moments.py)
    assert isinstance(est.token_scale, bool) and isinstance(est.elbo_target, bool), name
    assert est.masks in ("independent", "complementary", "order", "none"), f"{name}: masks {est.masks!r}"
    noise = getattr(type(est), "noise", "masked")
    if name == "autoregressive":
        pytest.skip("needs a causal LM (tests/estimators and tests/models/test_hf.py)")
    den = uniform if noise == "uniform" else masked
    prompt, completion, cmask = _batch(den)
    meter = Meter(den)
    draws = None
    if name in ("trace", "step_merge", "any_order"):  # score along a sampler's recorded order: give them one
        draws = {"commit_step": torch.arange(completion.shape[1]).repeat(2, 1)}
    kwargs = {"draws": draws} if draws is not None else {}
    out = est(meter, prompt, completion, cmask, generator=torch.Generator().manual_seed(1), **kwargs)
    assert isinstance(out, Estimate)
    assert out.per_token.shape == completion.shape and out.sequence.shape == (2,)
    assert torch.isfinite(out.sequence).all() and torch.isfinite(out.per_token).all()
    declared = est.nfe_for_batch(2) if hasattr(est, "nfe_for_batch") else None
    spent = meter.cost.nfe
    assert spent > 0
    if declared is not None and name not in ("trace", "exact"):
        assert spent == declared, f"{name}: metered {spent} NFE, declared {declared}"


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_contract(name, masked, uniform):
    sampler = SAMPLERS.build(name, {})
    # what the report reads instead of its name (harness/report/samplers.py)
    assert set(sampler.budget_knobs) <= set(SAMPLERS.fields(name)), f"{name}: budget_knobs {sampler.budget_knobs}"
    assert isinstance(sampler.speed_reference(), bool)
    den = uniform if getattr(type(sampler), "noise", "masked") == "uniform" else masked
    prompt, _, _ = _batch(den)
    meter = Meter(den)
    gen = sampler(meter, prompt, generator=[torch.Generator().manual_seed(i) for i in range(2)], gen_length=8)
    assert isinstance(gen, Generation)
    B = prompt.shape[0]
    assert gen.tokens.shape[0] == B and gen.commit_step.shape == gen.tokens.shape and len(gen.text) == B
    assert all(isinstance(t, str) for t in gen.text)
    spent = meter.cost.nfe
    assert spent > 0
    declared = sampler.max_nfe_per_sequence(gen.tokens.shape[1])
    if declared is None:  # a knob left to the checkpoint: the bound once the model's values are read
        assert callable(getattr(sampler, "knobs", None)), f"{name}: no plan-time NFE bound and no knobs(model)"
        resolved = dataclasses.replace(sampler, **sampler.knobs(den))
        declared = resolved.max_nfe_per_sequence(gen.tokens.shape[1])
    assert spent <= declared * B, f"{name}: metered {spent} NFE for {B} sequences, declared at most {declared} each"


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_algorithm_contract(name):
    from tests.algorithms.toy import make_loop

    algorithm = ALGORITHMS.build(name, {})
    loop = make_loop(algorithm, steps=1, prompts=2, group_size=2, mu=1)
    log, cost = loop.train_step(0)
    assert math.isfinite(log["loss"]), f"{name}: loss {log['loss']}"  # every algorithm logs its loss
    bad = {k: v for k, v in log.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, f"{name}: non-finite step log values {bad}"
    assert cost["nfe"] > 0


@pytest.mark.parametrize("name", TASKS.names())
def test_task_contract(name, monkeypatch):
    from harness.tasks.data import data_dir

    if name in REAL_DATA_TASKS:
        if not (data_dir() / REAL_DATA_TASKS[name]).is_dir():
            pytest.skip(f"{name}: the offline copy ({data_dir() / REAL_DATA_TASKS[name]}) is absent")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = TASKS.build(name, {})
    items = list(task.items("test"))[:5]
    assert items and all(it.id and isinstance(it.prompt, str) for it in items)
    for it in items:
        gold = GOLD.get(name, lambda item: item.reference)(it)
        assert task.score(it, gold) == 1.0, f"{name}: item {it.id}'s own answer does not score 1"
