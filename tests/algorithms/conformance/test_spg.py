"""spg conforms to SPG, sandwiched policy gradient (facebookresearch/SPG, spg/spg_trainer.py,
SPGTrainer.compute_loss: per_seq_loss = −A·per_seq_logps, loss = Σ(per_seq_loss·|o|)/Σ|o|, where
per_seq_logps is the bound's per-token mean, so the loss is −Σ_i A_i·B_i / Σ_i |o_i| with B_i the
sequence bound; the ELBO for A >= 0 and the mixture ω·EUBO + (1−ω)·ELBO for A < 0 (ω = 0.5,
β = 1.5, m = 2 block-wise masks; `_get_per_seq_logps`, forward_type "block_random"). The bounds'
equations are checked below against the paper's definitions on replayed block masks; the block
draws themselves differ (documented in harness/estimators/block_elbo.py)."""
from __future__ import annotations

import math

import pytest
import torch

from harness.algorithms.spg import Bounds
from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import SEEDS, assert_conforms, batch, fixture, target_logp, toy_rollout


def _bounds(fx):
    cm = fx["completion_mask"]
    lower = torch.where(cm, fx["logp"], 0 * fx["logp"])  # per-token ELBO terms
    upper = 0.5 * lower.sum(1) + 0.5 * (torch.exp(fx["logp"]) * cm).sum(1)  # any θ-dependent upper bound
    return Bounds(per_token=lower, sequence=lower.sum(1), upper=upper, draws={}, n=2), lower.sum(1), upper


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_the_paper_objective(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("spg")
    cm = fx["completion_mask"]
    terms, elbo, upper = _bounds(fx)
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss, _ = algo.loss(batch(fx, cm), terms, None, None, adv)
    bound = torch.stack([elbo[i] if adv[i] >= 0 else upper[i] for i in range(len(adv))])
    ref = -(adv * bound).sum() / cm.sum()
    assert_conforms(loss, ref, fx["logp"])
    per_seq = ALGORITHMS.build("spg", {"norm": "sequence"}).loss(batch(fx, cm), terms, None, None, adv)[0]
    assert_conforms(per_seq, -(adv * bound).sum() / len(adv), fx["logp"])  # the named option: 1/N


@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_match_the_paper_equations(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed)
    algo = ALGORITHMS.build("spg", {"estimator_params": {"m": 3, "block_length": 2}})
    with torch.no_grad():
        e = algo.terms(den, prompt, pmask, completion, cmask, generator=torch.Generator().manual_seed(seed),
                       draws=None, iteration=0, n_iterations=1)
    d = e.draws
    n = cmask.sum(1).double()
    beta, omega, m = 1.5, 0.5, 3
    for b in range(len(prompt)):
        lps = []
        for i in range(m):
            noisy_prompt = torch.where(d["prompt_masks"][b, i], den.mask_id, prompt[b])
            noisy = torch.where(d["masks"][b, i], den.mask_id, completion[b])
            lps.append(target_logp(den, noisy_prompt[None], noisy[None], completion[b:b + 1])[0])
        masks = d["masks"][b] & cmask[b]  # [m, L]
        t_hat = masks.sum(1).double() / n[b]
        elbo = sum((lps[i] * masks[i]).sum() / t_hat[i] for i in range(m)) / m
        covered = masks.any(0)
        u = [math.log(sum(float(torch.exp(beta * lps[i][k])) / float(t_hat[i]) for i in range(m) if masks[i, k])
                      / m) / beta for k in range(len(covered)) if covered[k]]
        eubo = n[b] / len(u) * sum(u)
        torch.testing.assert_close(e.sequence[b], elbo, rtol=0, atol=1e-9)
        torch.testing.assert_close(e.upper[b], omega * eubo + (1 - omega) * elbo, rtol=0, atol=1e-9)
