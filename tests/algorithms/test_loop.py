"""The shared RL loop: ratio 1 and the policy gradient at θ = θ_old, shared draws, micro-batch
invariance, rewards rising on a trivially learnable task, and resume = uninterrupted."""
from __future__ import annotations

import copy

import pytest
import torch

from harness.registry import ALGORITHMS
from tests.algorithms.toy import make_loop

ALL = ["grpo", "diffu_grpo", "coupled_grpo", "uni_grpo", "wd1", "igpo", "spg", "gdpo", "espo", "trace_rl"]
PARAMS = {"trace_rl": {"acc_low": 0.0}}  # the toy task starts near reward 0: keep those groups
LR = {"wd1": 3e-3}


def _buffer(loop, step=0):
    return loop.rollout(step)


def _grad(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])


def test_ratio_is_one_and_gradient_is_the_policy_gradient():
    algo = ALGORITHMS.build("diffu_grpo", {"beta": 0.0})
    loop = make_loop(algo)
    buf = _buffer(loop)
    adv = algo.advantages(buf["rewards"], buf["group"])
    gens = loop.generators(0, buf["row"], "lik-0")
    args = (buf["prompt"], buf["prompt_mask"], buf["tokens"], buf["completion_mask"])
    pol = algo.terms(loop.policy, *args, generator=gens, draws=None, iteration=0, n_iterations=1)
    old = type(pol)(per_token=pol.per_token.detach(), sequence=pol.sequence.detach(), draws=pol.draws, n=pol.n)
    mask = buf["completion_mask"]
    batch = {"mask": mask, "group": buf["group"], "n_seq": len(adv), "n_tok": int(mask.sum()), "n_groups": 4,
             "length": mask.shape[1]}
    loss, metrics = algo.loss(batch, pol, old, None, adv)
    assert torch.equal(torch.exp(pol.per_token - old.per_token), torch.ones_like(pol.per_token))
    assert metrics["ratio"] == 1.0 and metrics["clip_frac"] == 0.0
    loss.backward()
    g_loss = _grad(loop.policy.module).clone()
    loop.policy.module.zero_grad()
    again = algo.terms(loop.policy, *args, generator=None, draws=pol.draws, iteration=0, n_iterations=1)
    pg = -(adv[:, None] * again.per_token * mask).sum() / mask.sum()  # −Σ_ik A_i ℓ_ik / Σ|o_i| (d1's Σ/Σmask)
    pg.backward()
    torch.testing.assert_close(g_loss, _grad(loop.policy.module), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_shared_draws_give_exactly_zero_difference_at_theta_old(name):
    algo = ALGORITHMS.build(name, PARAMS.get(name, {}))
    loop = make_loop(algo)
    buf = _buffer(loop)
    old_model = copy.deepcopy(loop.policy)
    args = (buf["prompt"], buf["prompt_mask"], buf["tokens"], buf["completion_mask"])
    for i in range(2):
        draws = algo.draws_for(buf, None, 0)
        pol = algo.terms(loop.policy, *args, generator=loop.generators(0, buf["row"], f"lik-{i}"), draws=draws,
                         iteration=i, n_iterations=2)
        with torch.no_grad():
            old = algo.terms(old_model, *args, generator=None, draws=pol.draws, iteration=i, n_iterations=2)
        assert torch.equal(pol.sequence.detach() - old.sequence, torch.zeros_like(old.sequence))
        assert torch.equal(pol.per_token.detach(), old.per_token)


# The reference defaults of wd1 (softmax over the micro-batch), uni_grpo (Σ/Σ over each micro-batch's
# masked tokens) and trace_rl (mean over each micro-batch's rows) depend on the micro-batching, as in
# their reference trainers; their buffer-wide options are the micro-batch invariant ones.
INVARIANT = {"wd1": {"softmax_over": "group"}, "uni_grpo": {"norm": "token", "ratio_terms": "scaled"},
             "trace_rl": {"acc_low": 0.0, "norm": "token"}}
# ... and with a micro-batch structure declared (micro_batch > 0) the normalisers are per micro-batch:
# memory chunks (micro_groups) with buffer-wide normalisers are what changes nothing
BUFFER = {"micro_batch": 0}


@pytest.mark.parametrize("name,mu", [("diffu_grpo", 2), ("wd1", 1), ("spg", 2), ("uni_grpo", 2), ("trace_rl", 2),
                                     ("igpo", 2), ("coupled_grpo", 1)])
def test_micro_batches_give_the_same_update(name, mu):
    algo = ALGORITHMS.build(name, {**INVARIANT.get(name, PARAMS.get(name, {})), **BUFFER})
    whole, split = make_loop(algo, mu=mu, double=True), make_loop(algo, mu=mu, micro_groups=1, double=True)
    log_w, _ = whole.train_step(0)
    log_s, _ = split.train_step(0)
    assert log_w["likelihood_nfe"] == log_s["likelihood_nfe"]
    for a, b in zip(whole.policy.module.parameters(), split.policy.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert any(not torch.equal(a, b) for a, b in zip(
        whole.policy.module.parameters(), make_loop(algo, double=True).policy.module.parameters()))  # it did move


@pytest.mark.parametrize("name", ALL)
def test_every_algorithm_raises_the_reward(name):
    # wd1's softmax over one group's rows (its reference micro-batch) weights each row ~G/B times more
    # than one over the whole buffer: at 1e-2 the toy policy collapses, as any policy does at too large a step
    loop = make_loop(ALGORITHMS.build(name, PARAMS.get(name, {})), mu=2, lr=LR.get(name, 1e-2))
    rewards = [loop.train_step(k)[0]["reward_mean"] for k in range(8)]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards


def test_resume_equals_uninterrupted(tmp_path):
    algo = ALGORITHMS.build("diffu_grpo", {})
    straight = make_loop(algo, mu=2)
    logs = [straight.train_step(k)[0] for k in range(4)]
    first = make_loop(algo, mu=2)
    for k in range(2):
        first.train_step(k)
    first.save(tmp_path, 2)
    first.train_step(2)  # progress after the checkpoint is lost with the "killed" process
    again = make_loop(algo, mu=2)
    start = again.resume(tmp_path)
    assert start == 2
    resumed = [again.train_step(k)[0] for k in range(start, 4)]
    for a, b in zip(straight.policy.module.parameters(), again.policy.module.parameters()):
        assert torch.equal(a, b)
    for key in ("reward_mean", "loss", "cum_nfe", "cum_flops"):
        assert [lg[key] for lg in logs[2:]] == [lg[key] for lg in resumed]


def test_one_optimizer_step_per_micro_batch_makes_the_kl_to_old_nonzero_at_mu_1():
    """TraceRL's reference takes several minibatch steps per rollout: π_old ≠ π_θ after the first."""
    algo = ALGORITHMS.build("trace_rl", {"acc_low": 0.0, "acc_high": 1.0})
    per_pass = make_loop(algo, mu=1, micro_groups=1)
    log, _ = per_pass.train_step(0)
    assert log["old_nfe"] == 0 and log["kl"] == 0.0  # one step per buffer pass: π_old = π_θ throughout
    per_micro = make_loop(algo, mu=1, micro_groups=1, optimizer_step="micro_batch")
    log, _ = per_micro.train_step(0)
    assert log["old_nfe"] > 0 and log["kl"] > 0.0


def test_metrics_without_a_reference_model_stay_none_in_the_step_log():
    """beta = 0: no π_ref, so the KL metric is None (not applicable), not a crash and not 0."""
    loop = make_loop(ALGORITHMS.build("diffu_grpo", {"beta": 0.0}))
    log, _ = loop.train_step(0)
    assert log["kl"] is None and log["ref_nfe"] == 0


def test_a_micro_batch_that_is_not_a_whole_number_of_rows_is_refused_up_front():
    from harness.types import HarnessError

    with pytest.raises(HarnessError, match=r"micro_batch=0.3 groups of group_size 4 is 1.2 rows; expected a whole"):
        make_loop(ALGORITHMS.build("coupled_grpo", {"micro_batch": 0.3}))
    assert make_loop(ALGORITHMS.build("coupled_grpo")).micro_batches(2)[0][0].tolist() == [0, 1]  # half of G = 4
