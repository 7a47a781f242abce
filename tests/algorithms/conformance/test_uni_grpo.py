"""uni_grpo conforms to the authors' implementation, which the MMaDA repository points to:
Gen-Verse/dLLM-RL train/rl_mmada.py `forward_process` with training.method "random_masking"
(configs/rl_mmada_v.yaml: eps 0.2, beta 0.01, use_kl_estimator_k3). Loss per row: the PPO-clipped
surrogate of each masked token's raw log-prob ratio exp(ℓ_θ,k − ℓ_old,k), averaged over the row's
masked tokens, plus β·Σ k3(π_old ‖ π_θ) over them; rows averaged. Checked at the parameters
suites/rl.yaml runs. Likelihood terms: completion tokens masked i.i.d. at the iteration's ratio t
(t_1, then spaced to 1 over the μ iterations). Differences kept: the harness masks only the
completion up to its EOS and keeps MMaDA's structured t schedule (the reference draws
t ~ U(0.1, 0.9) per masked copy). The IGPO repository's MMaDA-style trainer (facebookresearch/igpo
trainer_igpo.py, Σ/Σ over the micro-batch's masked tokens, k3 to π_ref) is the named option
`norm="batch_token"`, `kl_to="ref"`."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    B,
    T,
    assert_conforms,
    batch,
    estimate,
    fixture,
    suite_params,
    target_logp,
    toy_rollout,
)
from tests.algorithms.conformance.refs import d1_loss, trace_rl_loss


def _masks(fx, seed):
    g = torch.Generator().manual_seed(50 + seed)
    m = fx["completion_mask"] & (torch.rand(B, T, generator=g) < 0.5)
    m[:, 0] = True  # at least one masked token per row (the estimator's rule)
    return m


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_the_reference(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("uni_grpo", suite_params()["uni_grpo"])  # what suites/rl.yaml runs
    assert (algo.eps_low, algo.eps_high, algo.beta, algo.kl, algo.kl_to) == (0.2, 0.2, 0.01, "k3", "old")
    cm, m = fx["completion_mask"], _masks(fx, seed)
    count = m.sum(1, keepdim=True).double()
    draws = {"masks": m[:, None, :]}
    terms = [estimate(x / count, m, draws) for x in (fx["logp"], fx["old"], fx["ref"])]  # the estimator's ℓ/|M|
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss, _ = algo.loss(batch(fx, cm), *terms, adv)
    rows = [(fx["logp"][i], fx["old"][i], m[i]) for i in range(B)]  # one row per (sequence, mask)
    assert_conforms(loss, trace_rl_loss(rows, adv, eps=0.2, beta=0.01), fx["logp"])


def test_igpo_trainer_reading_is_the_named_option():
    fx = fixture(2)
    algo = ALGORITHMS.build("uni_grpo", {"norm": "batch_token", "kl_to": "ref"})
    cm, m = fx["completion_mask"], _masks(fx, 2)
    count = m.sum(1, keepdim=True).double()
    terms = [estimate(x / count, m, {"masks": m[:, None, :]}) for x in (fx["logp"], fx["old"], fx["ref"])]
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss, _ = algo.loss(batch(fx, cm), *terms, adv)
    ref = d1_loss(fx["logp"], fx["old"], fx["ref"], adv, m, eps=0.2, beta=0.01)  # token_mask = masked tokens
    assert_conforms(loss, ref, fx["logp"])


def test_scaled_terms_are_the_named_option():
    fx = fixture(3)
    algo = ALGORITHMS.build("uni_grpo", {"ratio_terms": "scaled", "norm": "sequence", "beta": 0.0,
                                         "eps_low": 0.5, "eps_high": 0.5})
    cm, m = fx["completion_mask"], _masks(fx, 3)
    count = m.sum(1, keepdim=True).double()
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss, _ = algo.loss(batch(fx, cm), estimate(fx["logp"] / count, m), estimate(fx["old"] / count, m), None, adv)
    ratio = torch.exp((fx["logp"] - fx["old"]) / count)  # exp(Δℓ/|M|) on masked tokens, 1 elsewhere
    ratio = torch.where(m, ratio, torch.ones_like(ratio))
    sur = torch.min(ratio * adv[:, None], ratio.clamp(0.5, 1.5) * adv[:, None])
    assert_conforms(loss, -((sur * cm).sum(1) / cm.sum(1)).mean(), fx["logp"])


@pytest.mark.parametrize("iteration", [0, 1, 2])
def test_terms_are_raw_log_probs_of_the_masked_tokens(iteration):
    den, prompt, pmask, completion, cmask = toy_rollout(iteration)
    algo = ALGORITHMS.build("uni_grpo")
    with torch.no_grad():
        first = algo.terms(den, prompt, pmask, completion, cmask, generator=torch.Generator().manual_seed(9),
                           draws=None, iteration=0, n_iterations=3)
        e = first if iteration == 0 else algo.terms(
            den, prompt, pmask, completion, cmask, generator=torch.Generator().manual_seed(iteration),
            draws=algo.draws_for(None, first.draws, iteration), iteration=iteration, n_iterations=3)
    t1 = first.draws["t1"]
    torch.testing.assert_close(e.draws["t"], t1 + (1 - t1) * iteration / 2)  # spaced from t_1 to 1
    m = e.draws["masks"][:, 0]
    raw = target_logp(den, prompt, torch.where(m, den.mask_id, completion), completion)
    torch.testing.assert_close(e.per_token * m.sum(1, keepdim=True), raw * m, rtol=0, atol=1e-10)
