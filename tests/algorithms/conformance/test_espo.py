"""espo conforms to ESPO (ML-GSAI/ESPO, espo/espo_trainer.py, ESPOTrainer.compute_loss and
_generate_and_score_completions): the sequence ELBO of the whole completion canvas (T positions,
post-EOS padding included), ratio ρ_i = exp((ELBO_θ,i − ELBO_old,i)/T), loss =
−Σ_i min(ρ_i A_i, clip(ρ_i, 1±0.2) A_i)/N + β·Σ_i k2(ELBO_θ,i − ELBO_ref,i)/(N·T) (compute_approx_kl
"k2"), leave-one-out advantages (`leave_one_out = True`). Options checked: `kl_scale="inside"`
((Δ/T)²/2) and `score_over="completion"` with `sequence_scale="length"` (|o| instead of T).
Likelihood: the harness's complementary_elbo (stratified count l ~ U{1..L} per row, a uniform
l-subset and its complement, weights ½·L/l and ½·L/(L−l), full weight when l = L); the reference's
`forward_process` spreads the count over the batch on {0..T} with weights (T+1)/x and
1/(T/(T+1) − x/(T+1)): a documented difference, tested here against the harness's own equation."""
from __future__ import annotations

import pytest
import torch

from harness.registry import ALGORITHMS, ESTIMATORS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    B,
    G,
    T,
    assert_conforms,
    fixture,
    harness_loss,
    target_logp,
    toy_rollout,
)
from tests.algorithms.conformance.refs import loo_advantages


@pytest.mark.parametrize("kl_scale", ["outside", "inside"])
@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_espo_trainer(seed, kl_scale):
    fx = fixture(seed)
    algo = ALGORITHMS.build("espo", {"kl_scale": kl_scale})
    cm = fx["completion_mask"]
    canvas = algo.loss_tokens({"loss_mask": cm, "completion_mask": cm})
    assert bool(canvas.all())  # the ELBO of the whole canvas
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, loo_advantages(fx["rewards"], G), rtol=0, atol=1e-12)
    loss = harness_loss(algo, fx, adv, canvas)
    s, s_old, s_ref = (x.sum(1) for x in (fx["logp"], fx["old"], fx["ref"]))
    coef_1 = torch.exp((s - s_old) / T)
    coef_2 = torch.clamp(coef_1, 0.8, 1.2)
    ref = -torch.min(coef_1 * adv, coef_2 * adv).sum() / B
    kl = (s - s_ref) ** 2 / 2.0
    ref = ref + 0.01 * (kl.sum() / (B * T) if kl_scale == "outside" else (kl / T**2).sum() / B)
    assert_conforms(loss, ref, fx["logp"])


def test_completion_length_normalisation_is_the_named_option():
    fx = fixture(1)
    algo = ALGORITHMS.build("espo", {"score_over": "completion", "sequence_scale": "length"})
    cm = fx["completion_mask"]
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss = harness_loss(algo, fx, adv)
    s, s_old, s_ref = ((x * cm).sum(1) for x in (fx["logp"], fx["old"], fx["ref"]))
    n = cm.sum(1).double()
    rho = torch.exp((s - s_old) / n)
    sur = torch.min(rho * adv, torch.clamp(rho, 0.8, 1.2) * adv)
    assert_conforms(loss, (-(sur - 0.01 * (s_ref - s) ** 2 / (2 * n))).mean(), fx["logp"])


@pytest.mark.parametrize("seed", [0, 1])
def test_complementary_terms(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed)
    est = ESTIMATORS.build("complementary_elbo", ALGORITHMS.build("espo").estimator_params)
    with torch.no_grad():
        e = est(den, prompt, completion, cmask, generator=torch.Generator().manual_seed(seed), prompt_mask=pmask)
    first = e.draws["masks"][:, 0]
    second = cmask & ~first
    n = cmask.sum(1).double()
    l = first.sum(1).double()
    lp1 = target_logp(den, prompt, torch.where(first, den.mask_id, completion), completion)
    lp2 = target_logp(den, prompt, torch.where(second, den.mask_id, completion), completion)
    full = l == n
    ref = torch.where(full, (lp1 * first).sum(1), 0.5 * n / l * (lp1 * first).sum(1)
                      + 0.5 * n / (n - l).clamp_min(1) * (lp2 * second).sum(1))
    torch.testing.assert_close(e.sequence, ref, rtol=0, atol=1e-10)
