"""`step_merge` (d2-StepMerge): its `elbo_target` declaration checked exactly over every reveal order,
and its prompt masks replayed from the draws."""
from __future__ import annotations

import itertools

import pytest
import torch

from harness.estimators.exact import exact_terms
from harness.registry import ESTIMATORS
from tests.estimators.test_exact_moments import ITEMS, BagDenoiser


@pytest.fixture(scope="module")
def bag():
    return BagDenoiser(seed=7)


def _mean_over_orders(den, est, item):
    """Exact mean of the estimator over uniformly random reveal orders (every permutation, one token
    per step) and its prompt masks (every subset Q of the real prompt tokens, weight p^|Q| (1−p)^(P−|Q|))."""
    p, pm, c, cm = item
    idx = torch.nonzero(cm)[:, 0].tolist()
    real = torch.nonzero(pm)[:, 0].tolist()
    orders = list(itertools.permutations(range(len(idx))))
    total = 0.0
    for bits in itertools.product([False, True], repeat=len(real)):
        q = torch.zeros_like(p, dtype=torch.bool)
        q[real] = torch.tensor(bits, dtype=torch.bool)
        w = est.p_prompt ** sum(bits) * (1 - est.p_prompt) ** (len(bits) - sum(bits))
        if w == 0:
            continue
        for perm in orders:
            commit = torch.full_like(c, -1)
            for step, j in enumerate(perm):
                commit[idx[j]] = step
            out = est(den, p[None], c[None], cm[None], prompt_mask=pm[None],
                      draws={"commit_step": commit[None], "prompt_masks": q[None]})
            total += w * float(out.sequence[0]) / len(orders)
    return total


@pytest.mark.parametrize("params", [{"steps": 5, "n_segments": 5, "p_prompt": 0.0},
                                    {"steps": 5, "n_segments": 2, "p_prompt": 0.0},
                                    {"n_segments": 8}])
def test_declared_elbo_target_agrees_with_the_exact_mean_over_orders(bag, params):
    est = ESTIMATORS.build("step_merge", {**params, "mask_padding": False})
    gaps = []
    for item in ITEMS:  # 5 and 3 scored tokens: 120 and 6 orders
        p, pm, c, cm = item
        elbo = float(exact_terms(bag, p[None], c[None], cm[None], prompt_mask=pm[None])["elbo"][0])
        gaps.append(abs(_mean_over_orders(bag, est, item) - elbo))
    if est.elbo_target:
        assert max(gaps) < 1e-9, gaps
    else:
        assert max(gaps) > 1e-3, gaps


def test_prompt_masks_are_drawn_once_per_row_and_replayed(bag):
    est = ESTIMATORS.build("step_merge", {"n_segments": 2, "p_prompt": 0.5})
    p, pm, c, cm = ITEMS[0]
    commit = torch.arange(len(c))[None]
    first = est(bag, p[None], c[None], cm[None], prompt_mask=pm[None], generator=torch.Generator().manual_seed(3),
                draws={"commit_step": commit})
    again = est(bag, p[None], c[None], cm[None], prompt_mask=pm[None], draws=first.draws)
    assert torch.equal(first.per_token, again.per_token)
    assert first.draws["prompt_masks"].shape == (1, len(p))
