"""d2_step_merge conforms to kuleshov-group/d2 diffu-grpo/diffu_grpo_trainer.py, class d2StepMergeTrainer:
- `generate`: segments = [int(n·steps/N) for n in 1..N−1]; trajectory[0] = the fully masked start,
  and after the step that brings total_steps to segments[len(trajectory) − 1] the state is appended;
  the tokens transferred at a step are marked in trajectory_mask[len(trajectory) − 1];
- `_get_per_token_logps`: segment n's input = [prompt with d1's prompt mask (forward_process,
  p_mask_prompt), completion part of trajectory[n]]; log-probs read at the true tokens;
- `compute_loss`: d1's per-token clipped loss with β·k3, Σ(loss · (trajectory_mask[n] & completion_mask))
  · N / Σ completion_mask, one segment per micro-step, averaged by gradient accumulation.
The references below replay a decoding trajectory step by step as `generate` records it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import SEEDS, G, assert_conforms, estimate, fixture, toy_rollout
from tests.algorithms.conformance.refs import k3


def ref_trajectory(commit_step, steps, N, mask_id, completion):
    """Replay `generate`'s bookkeeping for one row: -> (trajectory states [N, L], trajectory_mask [N, L])."""
    L = len(completion)
    segments = [int(index * (steps / N)) for index in range(1, N)]
    x = torch.full((L,), mask_id)
    trajectory, trajectory_mask = [x.clone()], [torch.zeros(L, dtype=torch.bool) for _ in range(N)]
    total_steps = 0
    for step in range(steps):
        transfer = commit_step == step
        x[transfer] = completion[transfer]
        trajectory_mask[len(trajectory) - 1][transfer] = True
        total_steps += 1
        if len(trajectory) < N and total_steps == segments[len(trajectory) - 1]:
            trajectory.append(x.clone())
    while len(trajectory) < N:  # boundaries past the last step (only when steps < N)
        trajectory.append(x.clone())
    return torch.stack(trajectory), torch.stack(trajectory_mask)


@pytest.mark.parametrize("steps,N", [(6, 2), (6, 3), (5, 2), (6, 6)])
def test_per_token_logps_are_the_reference_segment_scores(steps, N):
    den, prompt, pmask, completion, cmask = toy_rollout(seed=4)
    n, L = completion.shape
    g = torch.Generator().manual_seed(steps * 10 + N)
    # a decoding order committing every canvas position (padding too) within `steps` steps
    commit = torch.stack([torch.randperm(L, generator=g) % steps for _ in range(n)])
    prompt_masks = torch.rand(prompt.shape, generator=g) < 0.3
    est = ESTIMATORS.build("step_merge", {"n_segments": N, "steps": steps})
    out = est(den, prompt, completion, cmask, prompt_mask=pmask,
              draws={"commit_step": commit, "prompt_masks": prompt_masks})
    ref = torch.zeros(n, L, dtype=torch.float64)
    with torch.no_grad():
        for b in range(n):
            traj, traj_mask = ref_trajectory(commit[b], steps, N, den.mask_id, completion[b])
            p = torch.where(prompt_masks[b], den.mask_id, prompt[b])
            for s in range(N):
                logits = den.logits(torch.cat([p, traj[s]])[None])[0, prompt.shape[1]:]
                lp = -F.cross_entropy(logits.double(), completion[b], reduction="none")
                keep = traj_mask[s] & cmask[b]
                ref[b, keep] = lp[keep]
    torch.testing.assert_close(out.per_token, ref, rtol=0, atol=1e-10)
    assert float(ref.abs().sum()) > 0


def ref_compute_loss(logp, old, ref, adv, cmask, seg, N, eps=0.5, beta=0.04):
    """compute_loss averaged over the N segment micro-steps of one group (gradient accumulation)."""
    total = 0
    for n in range(N):
        coef_1 = torch.exp(logp - old)
        coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
        per_token_loss = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None]) + beta * k3(logp, ref)
        mask = (seg == n) & cmask
        total = total + (per_token_loss * mask).sum() * N / cmask.sum()
    return total / N


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_compute_loss_over_segments(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("d2_step_merge")
    cm = fx["completion_mask"]
    N = algo.estimator_params["n_segments"]
    seg = torch.randint(0, N, cm.shape, generator=torch.Generator().manual_seed(seed))
    adv = algo.advantages(fx["rewards"], fx["group"])
    total = 0
    for gi in range(2):
        r = slice(gi * G, (gi + 1) * G)
        b = {"mask": cm[r], "completion_mask": cm[r], "group": fx["group"][r] - gi, "n_seq": G,
             "n_tok": int(cm[r].sum()), "n_groups": 1, "length": cm.shape[1]}
        loss, _ = algo.loss(b, estimate(fx["logp"][r], cm[r]), estimate(fx["old"][r], cm[r]),
                            estimate(fx["ref"][r], cm[r]), adv[r])
        total = total + loss / 2
    ref = sum(ref_compute_loss(fx["logp"][r], fx["old"][r], fx["ref"][r], adv[r], cm[r], seg[r], N)
              for r in (slice(0, G), slice(G, 2 * G))) / 2
    assert_conforms(total, ref, fx["logp"])


def test_step_merge_needs_the_rollout_order_and_matching_steps():
    from harness.types import HarnessError

    den, prompt, pmask, completion, cmask = toy_rollout(seed=1)
    est = ESTIMATORS.build("step_merge", {"steps": 3})
    with pytest.raises(HarnessError, match="commit steps"):
        est(den, prompt, completion, cmask, prompt_mask=pmask)
    commit = torch.arange(completion.shape[1]).repeat(len(completion), 1)
    with pytest.raises(HarnessError, match="steps=3"):
        est(den, prompt, completion, cmask, prompt_mask=pmask, draws={"commit_step": commit})
