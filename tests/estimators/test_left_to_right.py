"""`left_to_right` (JustGRPO's exact likelihood): a probability distribution over completions, its
exact moments (the value itself, variance 0) equal to what it returns, and not an ELBO estimator."""
from __future__ import annotations

import itertools

import pytest
import torch

from harness.estimators.exact import exact_terms
from harness.estimators.moments import clear_cache, exact_moments, item_table
from harness.registry import ESTIMATORS
from tests.estimators.test_exact_moments import ITEMS, BagDenoiser, sharp_tiny


@pytest.fixture(scope="module")
def bag():
    clear_cache()
    return BagDenoiser(seed=5)


def test_left_to_right_probabilities_sum_to_one_over_every_completion(bag):
    """Σ_o P_L2R(o | c) = 1 over all V^L completions of a 3-token canvas: the chain rule is exact."""
    V, L = bag.vocab_size, 3
    completions = torch.tensor(list(itertools.product(range(V), repeat=L)))  # [V^L, L]
    n = len(completions)
    prompt = torch.tensor([5, 6, 7])[None].expand(n, -1)
    est = ESTIMATORS.build("left_to_right")
    out = est(bag, prompt, completions, torch.ones(n, L, dtype=torch.bool))
    assert float(torch.logsumexp(out.sequence, 0)) == pytest.approx(0.0, abs=1e-10)
    assert torch.equal(out.sequence, out.per_token.sum(1)) and out.n == 1 and out.draws == {}


@pytest.mark.parametrize("model", ["bag", "tiny"])
def test_exact_moments_are_the_value_with_zero_variance(bag, model):
    den = bag if model == "bag" else sharp_tiny(seed=3, d_model=16, max_len=16, std=0.5, weight_seed=11)
    est = ESTIMATORS.build("left_to_right")
    for p, pm, c, cm in ITEMS:  # the second item has post-EOS padding (kept clean) and a left-padded prompt
        with torch.no_grad():
            value = float(est(den, p[None], c[None], cm[None], prompt_mask=pm[None]).sequence[0])
            elbo = float(exact_terms(den, p[None], c[None], cm[None], prompt_mask=pm[None])["elbo"][0])
        m = exact_moments(est, item_table(den, p, pm, c, cm), {})
        assert m.mean == pytest.approx(value, abs=1e-9) and m.var == 0.0
        assert abs(m.mean - elbo) > 1e-3  # one decoding order's log P, not the ELBO (elbo_target False)


def test_unscored_positions_stay_clean_and_unscored(bag):
    """Positions outside completion_mask are never scored (their per-token terms are 0); every scored one is."""
    est = ESTIMATORS.build("left_to_right")
    p, pm, c, cm = ITEMS[1]
    out = est(bag, p[None], c[None], cm[None], prompt_mask=pm[None])
    assert torch.all(out.per_token[0, ~cm] == 0) and torch.all(out.per_token[0, cm] != 0)
