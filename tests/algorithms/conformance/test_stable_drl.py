"""stable_drl conforms to JianyuanZhong/StableDRL networks/llada_svpo.py `compute_loss_spg` with
use_snis (configs/*_spg_snis.yaml: ais_clip_iw 5, spg_omega 0.5, num_mc_samples 2):
  log_iw = (per_seq_elbo − ref_elbo).detach(); clamp(max=log(ais_clip_iw)); softmax over dim 0
  (the micro-batch's rows); loss = −Σ_i w_i · A_i · per_seq_logps_i, where per_seq_logps is
  `_get_per_seq_logps_spg`'s sandwiched bound (ELBO for reward_mask = A > 0, else mix), both the
  bound and per_seq_elbo per-token means over the completion; A = r − group mean;
  training_loop_spg_snis.py: one prompt's group per compute_loss_spg call, loss / grad_accumulation.
The reference below restates those lines with per-row Python loops."""
from __future__ import annotations

import math

import pytest
import torch

from harness.algorithms.spg import Bounds
from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import SEEDS, B, G, assert_conforms, fixture, micro_harness_loss
from tests.algorithms.conformance.refs import group_mean_advantages


def ref_snis_loss(elbo, upper, ref_elbo, adv, ais_clip_iw=5.0):
    """compute_loss_spg's SNIS branch on one micro-batch: elbo/upper/ref_elbo [rows] per-token means."""
    rows = len(adv)
    per_seq_logps = torch.stack([elbo[i] if adv[i] > 0 else upper[i] for i in range(rows)])
    log_iw = (elbo - ref_elbo).detach()
    clipped_log_iw = torch.clamp(log_iw, max=math.log(ais_clip_iw))
    normalized_weights = torch.softmax(clipped_log_iw, dim=0).detach()
    return -torch.sum(normalized_weights * adv * per_seq_logps)


def _bounds(fx, scale_old=1.0):
    """Harness Bounds (sequence-scale ELBO = |o|·mean, upper likewise) of θ and θ_old on the fixture."""
    cm = fx["completion_mask"]
    n = cm.sum(1).double()
    lower = torch.where(cm, fx["logp"], 0 * fx["logp"])  # [B, T] θ's per-token ELBO terms
    upper = 0.5 * lower.sum(1) + 0.5 * (torch.exp(fx["logp"]) * cm).sum(1)  # any differentiable upper bound
    old_lower = torch.where(cm, fx["old"] * scale_old, torch.zeros_like(fx["old"]))
    pol = Bounds(per_token=lower, sequence=lower.sum(1), upper=upper, draws={}, n=2)
    old = Bounds(per_token=old_lower, sequence=old_lower.sum(1), upper=upper.detach(), draws={}, n=2)
    return pol, old, n


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale_old", [1.0, 3.0])  # 3.0: θ_old far below θ, so weights hit the cap
def test_loss_and_gradient_match_compute_loss_spg_snis(seed, scale_old):
    fx = fixture(seed)
    algo = ALGORITHMS.build("stable_drl")
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, group_mean_advantages(fx["rewards"], G), rtol=0, atol=1e-12)
    pol, old, n = _bounds(fx, scale_old)
    loss, parts = micro_harness_loss(algo, fx, adv, (pol, old, None), fx["completion_mask"])
    assert [p.tolist() for p in parts] == [list(range(g * G, (g + 1) * G)) for g in range(B // G)]
    e, u, r = pol.sequence / n, pol.upper / n, old.sequence / n
    ref = sum(ref_snis_loss(e[p], u[p], r[p], adv[p]) for p in parts) / len(parts)
    assert_conforms(loss, ref, fx["logp"])
    if scale_old > 1:  # the cap is active on some row: the unclipped weights give another loss
        assert float(((e - r) > math.log(5.0)).sum()) > 0
        unclipped = sum(ref_snis_loss(e[p], u[p], r[p], adv[p], ais_clip_iw=1e9) for p in parts) / len(parts)
        assert abs(float((unclipped - ref).detach())) > 1e-6


def test_the_weights_are_clipped_whatever_the_advantage_sign():
    """A negative-advantage row whose ratio exceeds the cap is capped too (PPO's clip would not
    bound ρ·A from below for A < 0 on that side)."""
    algo = ALGORITHMS.build("stable_drl")
    log_ratio = torch.tensor([3.0, 0.0, -1.0, 0.5], dtype=torch.float64)  # e^3 > 5
    adv = torch.tensor([-1.0, 1.0, -0.5, 0.5], dtype=torch.float64)
    bound = torch.tensor([-2.0, -1.0, -3.0, -0.5], dtype=torch.float64, requires_grad=True)
    from harness.algorithms.stable_drl import stable_drl_loss

    loss, metrics = stable_drl_loss(bound, log_ratio, adv, algo.clip)
    w = torch.softmax(torch.tensor([math.log(5.0), 0.0, -1.0, 0.5], dtype=torch.float64), 0)
    torch.testing.assert_close(loss, -(w * adv * bound).sum(), rtol=0, atol=1e-12)
    assert metrics["clip_frac"] == 0.25


def test_first_iteration_weights_are_uniform():
    """At θ = θ_old on shared masks (the loop's iteration 0) every weight is 1/B: the loss is SPG's
    bound-weighted mean −(1/B) Σ A·b of the micro-batch."""
    fx = fixture(2)
    algo = ALGORITHMS.build("stable_drl")
    pol, _, n = _bounds(fx)
    old = Bounds(per_token=pol.per_token.detach(), sequence=pol.sequence.detach(), upper=pol.upper.detach(),
                 draws={}, n=2)
    adv = algo.advantages(fx["rewards"], fx["group"])
    cm = fx["completion_mask"]
    b = {"mask": cm, "completion_mask": cm, "group": fx["group"], "n_seq": B, "n_tok": int(cm.sum()),
         "n_groups": B // G, "length": cm.shape[1]}
    loss, _ = algo.loss(b, pol, old, None, adv)
    bound = torch.where(adv > 0, pol.sequence / n, pol.upper / n)
    assert_conforms(loss, -(adv * bound).sum() / B, fx["logp"])
