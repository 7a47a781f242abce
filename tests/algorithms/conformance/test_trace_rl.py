"""trace_rl conforms to TraceRL (Gen-Verse/dLLM-RL train/rl_llada.py, method "TraceRL":
`prepare_inputs_and_labels_for_text` builds one row per (sequence, distinct merged step) with
`collapse_k_unique(step_map, shrink)`, masking positions whose step >= that step and scoring those
equal to it; `forward_process` in `main` computes the loss). Read in the fork pixeli99/dLLM-RL;
the Gen-Verse repository itself is not in the search index. Loss per row r:
−(1/|K_r|) Σ_{k∈K_r} min(ρA, clip(ρ, 1±ε)A) + β Σ_{k∈K_r} k3(π_old ‖ π_θ)_k, averaged over rows;
ε = 0.2, β = 0.01, shrink 8. Advantages: reward/rl_reward.py `z_score_normalize` over each prompt's
responses (population std, no eps, 0 when the std is 0)."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import SEEDS, G, assert_conforms, fixture, target_logp, toy_rollout
from tests.algorithms.conformance.refs import collapse_k_unique, trace_rl_loss, z_score_normalize

N, L = 8, 7


def _rollout(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed, n=N, L=L)
    g = torch.Generator().manual_seed(seed)
    commit = torch.stack([torch.randperm(L, generator=g) for _ in range(N)])  # one token per step
    return den, prompt, pmask, completion, cmask, commit


def _reference_rows(commit, cmask, shrink):
    """[(b, step, target mask [L], hide mask [L])] like prepare_inputs_and_labels_for_text."""
    rows = []
    for b in range(commit.shape[0]):
        order = torch.tensor(collapse_k_unique(commit[b].tolist(), shrink))
        for step in torch.unique(order, sorted=True).tolist():
            target = (order == step) & cmask[b]  # tail padding is never scored
            if target.any():
                rows.append((b, step, target, order >= step))
    return rows


@pytest.mark.parametrize("shrink", [8, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_rl_llada(seed, shrink):
    den, prompt, pmask, completion, cmask, commit = _rollout(seed)
    algo = ALGORITHMS.build("trace_rl", {"estimator_params": {"stride": shrink, "merge": "ranks",
                                                              "mask_padding": True}})
    with torch.no_grad():
        e = algo.terms(den, prompt, pmask, completion, cmask, generator=None, draws={"commit_step": commit},
                       iteration=0, n_iterations=1)
    fx = fixture(seed)  # log-probs of θ, θ_old on the same [8, 7] canvas; rewards with group spread
    logp, old = fx["logp"], fx["old"]
    scored = cmask
    pol = type(e)(per_token=torch.where(scored, logp, 0 * logp), sequence=logp.sum(1), draws=e.draws, n=1)
    olds = type(e)(per_token=torch.where(scored, old, 0 * old), sequence=old.sum(1), draws=e.draws, n=1)
    adv = algo.advantages(fx["rewards"], fx["group"])
    want = torch.tensor([a for grp in fx["rewards"].view(-1, G).tolist() for a in z_score_normalize(grp)],
                        dtype=torch.float64)
    torch.testing.assert_close(adv, want, rtol=0, atol=1e-12)
    b = {"mask": scored, "completion_mask": scored, "group": fx["group"], "n_seq": N, "n_tok": int(scored.sum()),
         "n_groups": N // G, "length": L}
    loss, metrics = algo.loss(b, pol, olds, None, adv)
    rows = _reference_rows(commit, cmask, shrink)
    assert metrics["trace_rows"] == len(rows)
    ref = trace_rl_loss([(logp[i], old[i], t) for i, _, t, _ in rows],
                        torch.stack([adv[i] for i, _, _, _ in rows]), eps=0.2, beta=0.01)
    assert_conforms(loss, ref, logp)


@pytest.mark.parametrize("seed", [0, 1])
def test_trace_terms_match_rl_llada_rows(seed):
    den, prompt, pmask, completion, cmask, commit = _rollout(seed)
    est = ESTIMATORS.build("trace", ALGORITHMS.build("trace_rl", {"estimator_params": {
        "stride": 2, "merge": "ranks", "mask_padding": True}}).estimator_params)
    with torch.no_grad():
        e = est(den, prompt, completion, cmask, draws={"commit_step": commit}, prompt_mask=pmask)
    ref = torch.zeros(N, L, dtype=torch.float64)
    for b, _, target, hide in _reference_rows(commit, cmask, 2):
        noisy = torch.where(hide, den.mask_id, completion[b])
        lp = target_logp(den, prompt[b:b + 1], noisy[None], completion[b:b + 1])[0]
        ref[b] = torch.where(target, lp, ref[b])
    torch.testing.assert_close(e.per_token, ref, rtol=0, atol=1e-10)


def test_default_is_shrink_8_with_rows_and_token_mean_is_an_option():
    algo = ALGORITHMS.build("trace_rl")
    assert algo.estimator_params == {"stride": 8, "merge": "ranks", "mask_padding": True}
    assert algo.norm == "trace_rows" and algo.advantage == "zscore_pop" and algo.kl_to == "old"
    assert ALGORITHMS.build("trace_rl", {"norm": "token", "advantage": "zscore"}).norm == "token"


def test_advantages_are_z_score_normalize_also_without_spread():
    """Groups with and without spread (one all-wrong, one all-right): exactly the reference's values."""
    algo = ALGORITHMS.build("trace_rl")
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    group = torch.arange(4).repeat_interleave(4)
    want = [a for grp in rewards.view(4, 4).tolist() for a in z_score_normalize(grp)]
    assert algo.advantages(rewards, group).tolist() == want  # bit for bit: no eps anywhere
