"""mdpo conforms to autonomousvision/mdpo src/open_r1/mdpo/mdpo_trainer.py (config
recipes/LLaDA-Instruct/mdpo/config_demo.yaml: per_device_train_batch_size 1, sample_train_steps 16,
epsilon 0.2, beta 0, μ = 1):
  `_generate_and_score_completions`: all_step_rewards [rows, T]; adv-v3 (the reward difference) + 1,
      plus adv-v4 (the mean reward of the later steps; the last step its own reward); gathered over
      the devices, viewed [-1, num_generations, T]; (a − mean) / (std + 1e-4) per step over the group;
  `split_into_micro_batches`: topk(|advantages|.sum(0), sample_train_steps) over the device's rows
      (one row), one micro-batch per selected step: input = that step's canvas, target = its prediction,
      conf = that step's confidences;
  `_get_per_token_logps`: logits / (temperature + eps), selective_log_softmax at the targets;
  `compute_loss`: mask = input == mask id, lambda_t = L / (|mask| + 1e-4), −min(ρA, clip(ρ)A)·lambda_t
      + β·(ref − logp)²/2, Σ(· mask conf) / (|mask| + 1e-4); the HF Trainer divides each micro-batch
      loss by the gradient-accumulation steps (the device's rows per optimizer step).
The reference functions below restate those lines with per-row Python loops and share no code with
harness/. The rollout trajectory (src/mdlm_generation_utils.py `diffusion_generate`: the canvas
before each step, `x0 = where(mask, x0, x)` and the proposals' probabilities) is checked against the
sampler's commit record."""
from __future__ import annotations

import pytest
import torch

from harness.algorithms.mdpo import mdpo_logprobs, select_steps, step_advantages
from harness.registry import ALGORITHMS, SAMPLERS
from harness.types import Estimate, HarnessError
from tests.algorithms.conformance.fixture import SEEDS, assert_conforms, toy_rollout

G, N_GROUPS, T, K, L = 4, 2, 6, 3, 7
N = G * N_GROUPS
D = torch.float64


# -- the reference, restated ----------------------------------------------------------------------
def ref_advantages(all_step_rewards, num_generations, diffusion_steps):
    """`_generate_and_score_completions` lines after `all_step_rewards = torch.cat(all_rewards, dim=-1)`."""
    r = all_step_rewards
    adv = torch.cat([r[:, 0:1], r[:, 1:] - r[:, :-1]], dim=-1) + 1
    adv = adv + torch.cat([(r[:, 1:].flip(dims=(-1,)).cumsum(dim=-1)
                            / torch.arange(1, diffusion_steps).unsqueeze(0)).flip(dims=(-1,)), r[:, -1:]], dim=-1)
    grouped = adv.view(-1, num_generations, diffusion_steps)
    mean = grouped.mean(dim=1)  # [groups, T]
    std = grouped.std(dim=1)
    out = torch.empty_like(adv)
    for i in range(adv.shape[0]):  # each device holds one row; its group's statistics
        out[i] = (adv[i] - mean[i // num_generations]) / (std[i // num_generations] + 1e-4)
    return out


def ref_selected_steps(advantages_of_device, sample_train_steps):
    """`split_into_micro_batches`: topk over the device's rows' summed |A| (one row per device)."""
    return torch.topk(torch.abs(advantages_of_device).sum(dim=0), k=sample_train_steps, dim=-1).indices


def ref_per_token_logps(logits, target_ids, temperature, max_completion_length):
    """`_get_per_token_logps` after the model call."""
    target_ids = target_ids[:, -max_completion_length:]
    logits = logits[:, -max_completion_length:]
    logits = logits / (temperature + torch.finfo(logits.dtype).eps)
    return torch.gather(logits.log_softmax(-1), -1, target_ids[..., None]).squeeze(-1)


def ref_compute_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, input_answer_ids, mask_id,
                     advantages, confidence, epsilon, beta, max_completion_length):
    """`compute_loss` on one micro-batch (LLaDA branch): [1, L] tensors, advantages [1, L] (the step's A)."""
    if beta != 0.0:
        logr = ref_per_token_logps - per_token_logps
        per_token_kl = logr ** 2 / 2
    completion_mask = input_answer_ids == mask_id
    completion_mask = completion_mask[:, -max_completion_length:]
    lambda_t = max_completion_length / (completion_mask.sum(dim=-1, keepdim=True) + 1e-4)
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    per_token_loss1 = coef_1 * advantages
    per_token_loss2 = coef_2 * advantages
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2) * lambda_t
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    return (per_token_loss * completion_mask * confidence).sum() / (completion_mask.sum() + 1e-4)


# -- the fixture ----------------------------------------------------------------------------------
MASK = 99


def trajectory_fixture(seed: int, binary: bool = False) -> dict:
    """N rows of a T-step rollout over L positions: nested masks (a random commit order, every step
    commits at least one), per-step rewards, confidences; θ, θ_old, θ_ref log-probs of K states."""
    g = torch.Generator().manual_seed(seed)
    commit = torch.stack([torch.randperm(L, generator=g) % T for _ in range(N)])  # [N, L] step of each position
    states = torch.where(commit[:, None, :] >= torch.arange(T)[None, :, None], MASK,
                         torch.randint(0, 20, (N, 1, L), generator=g))  # [N, T, L] masked until committed
    preds = torch.randint(0, 20, (N, T, L), generator=g)
    preds = torch.where(states == MASK, preds, states)
    confs = torch.rand(N, T, L, generator=g, dtype=torch.float32)
    rewards = torch.randint(0, 2, (N, T), generator=g).double() if binary else torch.rand(N, T, generator=g, dtype=D)
    logp = (-torch.rand(N, K, L, generator=g, dtype=D) * 3).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(N, K, L, generator=g, dtype=D)
    ref = logp.detach() + 0.5 * torch.randn(N, K, L, generator=g, dtype=D)
    return {"states": states, "preds": preds, "confs": confs, "rewards": rewards, "logp": logp, "old": old,
            "ref": ref, "group": torch.arange(N_GROUPS).repeat_interleave(G)}


def harness_loss(algo, fx, pick, adv_sel, old_is_policy: bool):
    """The algorithm's loss on the buffer's selected states, as the loop feeds it (one micro-batch)."""
    at = pick[..., None].expand(-1, -1, L)
    states = fx["states"].gather(1, at)
    masked = states == MASK
    draws = {"states": states, "targets": fx["preds"].gather(1, at), "masked": masked,
             "confs": fx["confs"].gather(1, at), "adv": adv_sel, "temperature": 1.0}

    def est(lp):
        per = torch.where(masked, lp, torch.zeros_like(lp)).reshape(N, K * L)
        return Estimate(per_token=per, sequence=per.sum(1), draws=draws, n=1)

    mask = masked.reshape(N, K * L)
    batch = {"mask": mask, "completion_mask": torch.ones(N, L, dtype=torch.bool), "group": fx["group"], "n_seq": N,
             "n_tok": int(mask.sum()), "n_groups": N_GROUPS, "length": L}
    old = est(fx["logp"].detach() if old_is_policy else fx["old"])
    ref = est(fx["ref"]) if algo.needs_ref else None
    loss, metrics = algo.loss(batch, est(fx["logp"]), old, ref, torch.zeros(N, dtype=D))
    return loss, metrics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.0, 0.04])  # config_demo.yaml's 0; MDPOConfig's default 0.04
@pytest.mark.parametrize("old_is_policy", [True, False])  # μ = 1 (ratio 1, the reference's setting); θ_old apart
def test_advantages_selection_loss_and_gradient_match_mdpo_trainer(seed, beta, old_is_policy):
    fx = trajectory_fixture(seed)
    algo = ALGORITHMS.build("mdpo", {"sample_train_steps": K, "beta": beta})
    adv = step_advantages(fx["rewards"], fx["group"], algo.advantages)
    adv_ref = ref_advantages(fx["rewards"], G, T)
    torch.testing.assert_close(adv, adv_ref, rtol=0, atol=1e-12)
    pick = select_steps(adv, K)
    for i in range(N):
        assert set(pick[i].tolist()) == set(ref_selected_steps(adv_ref[i:i + 1], K).tolist())
    loss, metrics = harness_loss(algo, fx, pick, adv.gather(1, pick), old_is_policy)
    old = fx["logp"].detach() if old_is_policy else fx["old"]
    # one micro-batch per (row, selected step); each divided by the accumulation steps (the N rows)
    ref = 0
    for i in range(N):
        for j, step in enumerate(ref_selected_steps(adv_ref[i:i + 1], K).tolist()):
            k = pick[i].tolist().index(step)
            ref = ref + ref_compute_loss(
                fx["logp"][i:i + 1, k], old[i:i + 1, k], fx["ref"][i:i + 1, k], fx["states"][i:i + 1, step], MASK,
                adv_ref[i:i + 1, step:step + 1].expand(1, L), fx["confs"][i:i + 1, step].double(),
                0.2, beta, L) / N
    assert_conforms(loss, ref, fx["logp"])
    if old_is_policy:
        assert metrics["ratio"] == 1.0 and metrics["clip_frac"] == 0.0
    else:
        assert metrics["clip_frac"] > 0  # the clip is exercised
    assert (metrics["kl"] is not None) == (beta > 0)


def test_binary_rewards_keep_the_reference_advantages_and_tie_break_toward_earlier_steps():
    """Binary verifier rewards (the reference's accuracy reward) give many equal |A|: the advantages
    still match, and among equal |A| the earlier step is kept (torch.topk leaves that order open)."""
    fx = trajectory_fixture(7, binary=True)
    algo = ALGORITHMS.build("mdpo", {"sample_train_steps": K})
    adv = step_advantages(fx["rewards"], fx["group"], algo.advantages)
    torch.testing.assert_close(adv, ref_advantages(fx["rewards"], G, T), rtol=0, atol=1e-12)
    pick = select_steps(adv, K)
    for i in range(N):
        a = adv[i].abs()
        chosen = a[pick[i]]
        assert float(chosen.min()) >= float(a.max() if K >= T else a.sort(descending=True).values[K - 1]) - 1e-12
        for t in range(T):  # an unchosen step with the same |A| as a chosen one comes after it
            if t not in pick[i].tolist():
                assert all(float(a[t]) < float(a[c]) - 1e-12 or t > c for c in pick[i].tolist())
    assert select_steps(adv, 100).shape == (N, T)  # K > T: every step (the reference's topk would fail)


@pytest.mark.parametrize("temperature", [1.0, 0.1])  # the suite's rollouts; config_demo.yaml's
def test_likelihood_terms_match_get_per_token_logps(temperature):
    den, prompt, pmask, completion, _ = toy_rollout(3, n=2, P=3, L=5)
    g = torch.Generator().manual_seed(0)
    Lc = completion.shape[1]
    states = torch.where(torch.rand(2, 2, Lc, generator=g) < 0.6, den.mask_id, completion[:, None].expand(2, 2, Lc))
    targets = torch.where(states == den.mask_id, torch.randint(0, den.vocab_size - 1, (2, 2, Lc), generator=g), states)
    got = mdpo_logprobs(den, prompt, pmask, states, targets, temperature, 1 << 16)
    for b in range(2):
        for k in range(2):
            x = torch.cat([prompt[b:b + 1], states[b:b + 1, k]], 1)
            with torch.no_grad():
                logits = den.logits(x)
            want = ref_per_token_logps(logits, torch.cat([prompt[b:b + 1], targets[b:b + 1, k]], 1), temperature, Lc)
            torch.testing.assert_close(got[b, k], want[0].to(got.dtype), rtol=0, atol=1e-9)


# -- the trajectory the loss trains on ------------------------------------------------------------
def test_the_recorded_trajectory_is_the_rollouts_own():
    """record_steps changes nothing in the rollout; each step's canvas is the final tokens committed
    before it (masks elsewhere), its prediction holds the tokens it commits, its probabilities the
    commit confidences, and the last prediction is the final canvas (so its reward is the rollout's)."""
    den, prompt, pmask, _, _ = toy_rollout(1, n=3, P=3, L=5)
    sampler = SAMPLERS.build("low_confidence", {"temperature": 1.0})
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    plain = sampler(den, prompt, generator=gens(), prompt_mask=pmask, gen_length=5)
    rec = sampler(den, prompt, generator=gens(), prompt_mask=pmask, gen_length=5, record_steps=True)
    assert plain.trajectory is None
    assert torch.equal(plain.tokens, rec.tokens) and torch.equal(plain.commit_step, rec.commit_step)
    torch.testing.assert_close(plain.commit_conf, rec.commit_conf, equal_nan=True)
    tr = rec.trajectory
    B, Ts, Lc = tr["states"].shape
    assert Ts == rec.steps == 5 and tr["preds"].shape == tr["confs"].shape == (B, Ts, Lc)
    for t in range(Ts):
        before = rec.commit_step < t
        keep = torch.arange(Lc)[None] < rec.gen_len[:, None]  # the canvas, before the stop-token cut
        assert torch.equal(tr["states"][:, t][before & keep], rec.tokens[before & keep])
        assert bool((tr["states"][:, t][~before] == den.mask_id).all())
        now = (rec.commit_step == t) & keep
        assert torch.equal(tr["preds"][:, t][now], rec.tokens[now])
        torch.testing.assert_close(tr["confs"][:, t][rec.commit_step == t], rec.commit_conf[rec.commit_step == t])
        assert bool((tr["preds"][:, t] != den.mask_id).all())  # one block: every masked position is predicted
    from harness.algorithms.mdpo import step_texts

    assert [row[-1] for row in step_texts(den, tr["preds"])] == rec.text


def test_refusals_name_what_is_missing():
    den, prompt, pmask, _, _ = toy_rollout(1, n=2, P=3, L=4)
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(HarnessError, match="one block"):
        SAMPLERS.build("low_confidence", {"block_length": 2})(den, prompt, generator=g, prompt_mask=pmask,
                                                               gen_length=4, record_steps=True)
    with pytest.raises(HarnessError, match="fixed schedule"):
        SAMPLERS.build("threshold", {})(den, prompt, generator=g, prompt_mask=pmask, gen_length=4, record_steps=True)
    with pytest.raises(HarnessError, match="does not record"):
        ALGORITHMS.build("mdpo").rollout_sampler({"name": "rcr", "params": {}}, den)
    with pytest.raises(HarnessError, match="sample_train_steps"):
        ALGORITHMS.build("mdpo", {"sample_train_steps": 0})


class _Spy:
    """Forwards to the loop's sampler and keeps the keyword arguments of every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kw):
        self.calls.append(set(kw))
        return self.inner(*args, **kw)


@pytest.mark.parametrize("name", ["grpo", "trace_rl", "mdpo"])
def test_only_a_trajectory_algorithm_asks_for_the_trajectory(name):
    """Other algorithms' rollouts are called as before (no record_steps) and their buffers carry no
    trajectory; MDPO's buffer turns it into each row's K trained states, whose last step's reward is
    the rollout's own reward."""
    from tests.algorithms.toy import make_loop

    algo = ALGORITHMS.build(name, {})
    loop = make_loop(algo, steps=1, prompts=2, group_size=2)
    loop.sampler = _Spy(loop.sampler)
    buf = loop.rollout(0)
    asked = any("record_steps" in c for c in loop.sampler.calls)
    has = any(k.startswith("trajectory_") for k in buf)
    assert asked == has == (name == "mdpo")
    if name == "mdpo":
        buf = algo.after_rollout(loop, buf, 0)
        assert not any(k.startswith("trajectory_") for k in buf)
        torch.testing.assert_close(buf["step_rewards"][:, -1], buf["rewards"])
        T_steps = buf["step_rewards"].shape[1]
        assert buf["mdpo_states"].shape == (4, min(16, T_steps), buf["tokens"].shape[1])
        assert algo.loss_tokens(buf).shape == (4, buf["mdpo_states"][0].numel())
        assert buf["mdpo_temperature"] == 1.0  # the rollout sampler's temperature


@pytest.mark.slow
def test_data_parallel_mdpo_matches_one_process(tmp_path):
    """Two gloo ranks roll out their halves with their trajectories, all-gathered: the records (step logs
    with the per-step rewards' advantages, costs, evaluations) are those of one process."""
    from harness.records import read_records
    from harness.runner import Runner
    from tests.helpers import write_suite
    from tests.test_distributed import RL_SUITE, _rl_views, torchrun

    path = write_suite(tmp_path, RL_SUITE.format(prompts=2).replace("name: diffu_grpo", "name: mdpo"), "rl.yaml")
    one = _rl_views(read_records(Runner(path, results=tmp_path / "one", progress=False).run(), latest=False))
    out = torchrun(["run", str(path), "--results", str(tmp_path / "two"), "--no-progress"])
    assert out.returncode == 0, out.stderr[-6000:]
    from pathlib import Path

    two = _rl_views(read_records(Path(out.stdout.strip().splitlines()[-1]), latest=False))
    assert two == one and any(v[1].startswith("step-") and v[3].get("trained_states") for v in one)
