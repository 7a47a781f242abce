"""just_grpo conforms to LeapLabTHU/JustGRPO:
- grpo.py `logprob_loss`: for t in range(gen_length): x = [prompt, o_<t, mask × (gen_length − t)],
  ℓ_t = log_softmax(logits[:, prompt_len + t])[o_t]; ρ = exp(ℓ − ℓ_old) (the reference: ℓ.detach(),
  μ = 1); loss_t = −min(ρA, clip(ρ, 1 ± 0.2)A); backward of Σ_rows loss_t · 1/(gen_length·(valid + 1e-5)),
  valid = #rows with A ≠ 0 (train.py `valid_samples`);
- grpo.py `compute_group_advantages`: (r − mean) / (std + 1e-4), torch's unbiased std;
- train.py: one prompt's group per micro-batch (batch_size_per_device 1), accumulated.
The references below restate those lines with per-row / per-position Python loops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    B,
    G,
    T,
    assert_conforms,
    estimate,
    fixture,
    micro_harness_loss,
    toy_rollout,
)


def ref_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """compute_group_advantages for one prompt's group (group_size rows)."""
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


def ref_logprob_loss(logp, old, adv, eps=0.2):
    """logprob_loss's summed backward objective for one group: logp/old [rows, gen_length], adv [rows]."""
    rows, gen_length = logp.shape
    valid = float((adv != 0).sum())
    scale = 1.0 / gen_length / (valid + 1e-5)
    total = 0
    for t in range(gen_length):
        ratio = torch.exp(logp[:, t] - old[:, t])
        clipped = ratio.clamp(1 - eps, 1 + eps)
        loss = -torch.min(ratio * adv, clipped * adv)
        total = total + (loss * scale).sum()
    return total


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_logprob_loss_per_group(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("just_grpo")
    canvas = torch.ones_like(fx["completion_mask"])  # every position of the canvas is scored and counted
    adv = algo.advantages(fx["rewards"], fx["group"])
    for g in range(B // G):
        r = slice(g * G, (g + 1) * G)
        torch.testing.assert_close(adv[r], ref_advantages(fx["rewards"][r]), rtol=0, atol=1e-12)
    terms = (estimate(fx["logp"], canvas), estimate(fx["old"], canvas), None)
    loss, parts = micro_harness_loss(algo, fx, adv, terms, canvas)
    assert [p.tolist() for p in parts] == [list(range(g * G, (g + 1) * G)) for g in range(B // G)]
    # train.py accumulates one group per micro-batch; the harness averages them (module docstring)
    ref = sum(ref_logprob_loss(fx["logp"][p], fx["old"][p], adv[p]) for p in parts) / len(parts)
    assert_conforms(loss, ref, fx["logp"])


def test_rows_without_advantage_leave_the_normaliser():
    """valid counts the rows with A ≠ 0: a group where half the rewards tie at the mean keeps a
    normaliser of the other half (not of the group size)."""
    fx = fixture(0)
    algo = ALGORITHMS.build("just_grpo")
    canvas = torch.ones(G, T, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    logp, old = fx["logp"][:G], fx["old"][:G]
    b = {"mask": canvas, "completion_mask": canvas, "group": torch.zeros(G, dtype=torch.long), "n_seq": G,
         "n_tok": int(canvas.sum()), "n_groups": 1, "length": T}
    loss, metrics = algo.loss(b, estimate(logp, canvas), estimate(old, canvas), None, adv)
    assert metrics["valid_rows"] == 2
    assert_conforms(loss, ref_logprob_loss(logp, old, adv), fx["logp"])


def test_the_likelihood_is_the_reference_left_to_right_loop():
    """left_to_right on the whole canvas = logprob_loss's token_log_prob at each t (its forward loop)."""
    den, prompt, pmask, completion, _ = toy_rollout(seed=3)
    n, L = completion.shape
    P = prompt.shape[1]
    canvas = torch.ones(n, L, dtype=torch.bool)
    got = ESTIMATORS.build("left_to_right").__call__(den, prompt, completion, canvas, prompt_mask=pmask).per_token
    ref = torch.zeros(n, L, dtype=torch.float64)
    with torch.no_grad():
        for t in range(L):
            x = torch.cat([prompt, completion[:, :t], torch.full((n, L - t), den.mask_id)], 1)
            log_prob = F.log_softmax(den.logits(x)[:, P + t, :].double(), -1)
            ref[:, t] = log_prob.gather(-1, completion[:, t:t + 1]).squeeze(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert float(ref.abs().sum()) > 0


def test_rollouts_decode_left_to_right_as_the_reference_samples():
    """grpo.py `sample`: generate(..., block_length=1): the loop rolls just_grpo out with the study's
    sampler at one-token blocks, so token t is committed at step t and the likelihood is exact for it."""
    from tests.algorithms.toy import make_loop

    loop = make_loop(ALGORITHMS.build("just_grpo"), steps=1, prompts=2, group_size=2, mu=1)
    buf = loop.rollout(0)
    L = buf["tokens"].shape[1]
    assert torch.equal(buf["commit_step"], torch.arange(L).expand_as(buf["commit_step"]))
    study = make_loop(ALGORITHMS.build("just_grpo", {"rollout": "study"}), steps=1, prompts=2, group_size=2, mu=1)
    assert study.sampler.block_length is None and loop.sampler.block_length == 1
