"""d2_any_order conforms to kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py, class d2AnyOrderTrainer:
- `compute_loss` (lines 618-671): coef_1 = exp(logp − old) (649), coef_2 = clamp(coef_1, 1 − ε, 1 + ε) (650),
  per_token_loss = −min(coef_1 A, coef_2 A) (652-654) + β k3 (639-641, 658), loss = Σ(per_token_loss ·
  completion_mask) / (Σ completion_mask + 1e-6) (663), one micro-step per group (per_device_train_batch_size 8
  = num_generations 8), averaged by gradient accumulation;
- its log-probs: `_get_per_token_logps` over `get_logits` on the rollout of `generate` (checked end to end
  below, through the sampler's commit steps and the algorithm's own `terms`; the layout itself in
  tests/estimators/test_any_order.py, the decoder in tests/samplers/test_any_order.py).
"""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS, MODELS, SAMPLERS, TASKS
from harness.types import HarnessError
from tests.algorithms.conformance.fixture import SEEDS, G, assert_conforms, estimate, fixture
from tests.estimators.test_any_order import ref_per_token_logps
from tests.samplers.test_any_order import harness_noise, reference_generate


def ref_compute_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, completion_mask,
                     epsilon=0.5, beta=0.04):
    per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    per_token_loss = per_token_loss + beta * per_token_kl
    return (per_token_loss * completion_mask).sum() / (completion_mask.sum() + 1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_compute_loss_per_group(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("d2_any_order")
    assert (algo.eps_low, algo.eps_high, algo.beta, algo.kl, algo.micro_batch) == (0.5, 0.5, 0.04, "k3", 1.0)
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    total, ref = 0, 0
    for gi in range(2):  # gradient accumulation over the two group micro-steps
        r = slice(gi * G, (gi + 1) * G)
        b = {"mask": cm[r], "completion_mask": cm[r], "group": fx["group"][r] - gi, "n_seq": G,
             "n_tok": int(cm[r].sum()), "n_groups": 1, "length": cm.shape[1]}
        loss, _ = algo.loss(b, estimate(fx["logp"][r], cm[r]), estimate(fx["old"][r], cm[r]),
                            estimate(fx["ref"][r], cm[r]), adv[r])
        total = total + loss / 2
        ref = ref + ref_compute_loss(fx["logp"][r], fx["old"][r], fx["ref"][r], adv[r], cm[r].double()) / 2
    assert_conforms(total, ref, fx["logp"])


def test_rollout_terms_are_the_reference_logps_of_its_generate():
    """The reference's generate (transcribed) then _get_per_token_logps on its permuted output, against the
    harness's any_order rollout, its commit steps through `draws_for`, and the algorithm's `terms`."""
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    items = TASKS.build("addition", {"n_digits": 3, "canvas": 16}).items("test")[:4]
    algo = ALGORITHMS.build("d2_any_order")
    spec = algo.rollout_sampler({"name": "low_confidence", "params": {"temperature": 1.0}})
    assert spec == {"name": "any_order", "params": {"block_length": 32, "temperature": 1.0}}
    sampler = SAMPLERS.build(spec["name"], dict(spec["params"], block_length=8))
    L = 16
    for i, it in enumerate(items):
        prompt = torch.tensor([den.tokenizer.encode(it.prompt)])
        P = prompt.shape[1]
        with torch.no_grad():
            x, pos = reference_generate(den, prompt, L, 8, 1.0, "low_confidence", den.mask_id,
                                        harness_noise(i, P, L, 8, 1.0, "low_confidence", den.vocab_size))
            want = ref_per_token_logps(den, x, pos, L)[0]  # decoding order
        natural = torch.empty(L, dtype=torch.float64)
        natural[pos[0, P:] - P] = want.double()
        gen = sampler(den, prompt, generator=[torch.Generator().manual_seed(i)], gen_length=L)
        cmask = torch.arange(L)[None] < gen.gen_len[:, None]
        draws = algo.draws_for({"commit_step": gen.commit_step}, None, 0)
        with torch.no_grad():
            terms = algo.terms(den, prompt, None, gen.tokens, cmask, generator=None, draws=draws, iteration=0,
                               n_iterations=2)
        cut = int(gen.gen_len[0])
        torch.testing.assert_close(terms.per_token[0, :cut], natural[:cut], rtol=0, atol=1e-5)
        assert (terms.per_token[0, cut:] == 0).all()


def test_rollouts_keep_an_any_order_sampler_and_default_to_the_reference_temperature():
    algo = ALGORITHMS.build("d2_any_order")
    mine = {"name": "any_order", "params": {"block_length": 4, "temperature": 0.3}}
    assert algo.rollout_sampler(mine) is mine
    assert algo.rollout_sampler({"name": "low_confidence"})["params"] == {"block_length": 32, "temperature": 0.9}
    with pytest.raises(HarnessError, match="estimator must be any_order"):
        ALGORITHMS.build("d2_any_order", {"estimator": "one_step"})


def test_plan_refuses_d2_any_order_on_a_policy_not_trained_for_it(tmp_path):
    from harness.config import load_suite, plan
    from tests.helpers import write_suite

    suite = """
suite: ao
models: {m: {name: tiny, params: {checkpoint: tiny-addition-c16}}}
tasks: {t: {name: addition, params: {n_digits: 3, canvas: 16}, split: test, n_items: 8}}
studies:
  - {id: r, kind: rl, model: m, task: t, algorithm: {name: d2_any_order}}
"""
    with pytest.raises(HarnessError, match="algorithm 'd2_any_order' needs the model's any_order_causal"):
        plan(load_suite(write_suite(tmp_path, suite)))


def test_the_loop_rolls_out_and_evaluates_with_the_decoders_it_is_given():
    """A d2_any_order step on a toy loop: rollouts by the any_order sampler (the algorithm's rollout_sampler),
    the held-out evaluation by `options.eval_sampler`, one group per micro-step, finite loss."""
    import math

    from tests.algorithms.toy import make_loop

    loop = make_loop(ALGORITHMS.build("d2_any_order"), steps=1, prompts=2, group_size=2, mu=2,
                     eval_sampler={"name": "any_order", "params": {"block_length": 4}})
    assert type(loop.sampler).__name__ == "AnyOrder" and loop.sampler.temperature == 1.0
    assert type(loop.eval_sampler).__name__ == "AnyOrder" and loop.eval_sampler.temperature == 0.0
    log, cost = loop.train_step(0)
    assert math.isfinite(log["loss"]) and cost["nfe"] > 0
    default = make_loop(ALGORITHMS.build("d2_any_order"), steps=1, prompts=2, group_size=2)
    assert type(default.eval_sampler).__name__ == "LowConfidence"


def test_the_any_order_suite_plans_on_its_checkpoint():
    from pathlib import Path

    from harness.config import load_suite, plan

    path = Path(__file__).resolve().parents[3] / "suites" / "any_order.yaml"
    cells = plan(load_suite(path), quick=True)
    rl = [c for c in cells if c.kind == "rl"]
    assert len(rl) == 3 and {c.component.name for c in rl} == {"d2_any_order"}
    assert all(c.options["eval_sampler"]["name"] == "any_order" for c in rl)
