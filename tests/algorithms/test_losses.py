"""Hand-computed loss values (tiny tensors) and advantage rules."""
from __future__ import annotations

import math

import pytest
import torch

from harness.algorithms.advantages import advantages
from harness.algorithms.grpo import aggregate, kl_estimate, sequence_loss, token_loss
from harness.algorithms.igpo import entropy_keep, hint_canvas
from harness.algorithms.spg import spg_loss
from harness.algorithms.trace_rl import accuracy_filter
from harness.algorithms.wd1 import group_softmax, wd1_loss
from harness.registry import ALGORITHMS

D = torch.float64
LOGP = torch.tensor([[0.0, -1.0]], dtype=D)  # π_θ log-probs of 2 tokens
OLD = torch.tensor([[-0.5, -1.0]], dtype=D)  # ratios e^0.5 and 1
REF = torch.tensor([[-1.0, -1.0]], dtype=D)  # d = ref − logp = [−1, 0]
MASK = torch.ones(1, 2, dtype=torch.bool)
R = math.exp(0.5)


def tl(adv, eps, beta=0.0, kl="k3", ref=None, norm="sequence", old=OLD):
    return token_loss(LOGP, old, ref, torch.tensor([adv], dtype=D), MASK, eps_low=eps, eps_high=eps, beta=beta,
                      kl=kl, norm=norm, n_seq=1, n_tok=2, length=2)


def test_grpo_clipping_inactive_and_active():
    loss, m = tl(1.0, eps=1.0)  # clip range [0, 2] holds both ratios
    assert float(loss) == pytest.approx(-(R + 1.0) / 2, abs=1e-12)
    assert m["clip_frac"] == 0.0
    loss, m = tl(1.0, eps=0.2)  # e^0.5 > 1.2 with A > 0: the clipped branch, 1.2·A
    assert float(loss) == pytest.approx(-(1.2 + 1.0) / 2, abs=1e-12)
    assert m["clip_frac"] == 0.5
    loss, m = tl(-1.0, eps=0.2)  # A < 0: min(−e^0.5, −1.2) = −e^0.5, the unclipped branch
    assert float(loss) == pytest.approx((R + 1.0) / 2, abs=1e-12)
    assert m["clip_frac"] == 0.0
    low = torch.tensor([[-1.0 - math.log(2), 0.0]], dtype=D)  # ratios 2e and 1/e
    loss, m = tl(-1.0, eps=0.2, old=low)  # A<0: min(−2e, −1.2) = −2e; min(−1/e, −0.8) = −0.8 (clipped)
    assert float(loss) == pytest.approx((2 * math.e + 0.8) / 2, abs=1e-9)
    assert m["clip_frac"] == 0.5


@pytest.mark.parametrize("kind,values", [("k1", [1.0, 0.0]), ("k2", [0.5, 0.0]), ("k3", [math.exp(-1), 0.0])])
def test_kl_estimators_by_hand(kind, values):
    assert kl_estimate(LOGP, REF, kind).tolist()[0] == pytest.approx(values, abs=1e-12)
    loss, m = tl(1.0, eps=1.0, beta=0.1, kl=kind, ref=REF)
    assert float(loss) == pytest.approx(-((R - 0.1 * values[0]) + 1.0) / 2, abs=1e-12)
    assert m["kl"] == pytest.approx(sum(values) / 2, abs=1e-12)


def test_normalisations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert float(aggregate(x, mask, "sequence", 2, 4, 3)) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate(x, mask, "token", 2, 4, 3)) == pytest.approx(10.0 / 4)
    assert float(aggregate(x, mask, "constant", 2, 4, 3)) == pytest.approx(10.0 / 6)


def test_sequence_ratio_by_hand():
    seq, old, ref = (torch.tensor([v], dtype=D) for v in (-1.0, -2.0, -3.0))
    one = torch.ones(1, dtype=D)
    loss, m = sequence_loss(seq, old, ref, one, scale=one, weight=one, eps_low=0.2, eps_high=0.2, beta=0.0,
                            kl="k3", n_seq=1)
    assert float(loss) == pytest.approx(-1.2) and m["clip_frac"] == 1.0  # ρ = e > 1.2
    two = 2 * one  # ESPO: ρ = exp(ΔS/L) = e^0.5, k2 on Δ/L: ((−3 + 1)/2)² / 2 = 0.5
    loss, _ = sequence_loss(seq, old, ref, one, scale=two, weight=one, eps_low=1.0, eps_high=1.0, beta=0.1,
                            kl="k2", n_seq=1)
    assert float(loss) == pytest.approx(-(R - 0.1 * 0.5))


def test_wd1_by_hand():
    adv = torch.tensor([1.0, -1.0, 0.5, 0.5], dtype=D)
    group = torch.tensor([0, 0, 1, 1])
    assert group_softmax(adv, group).tolist() == pytest.approx(
        [math.e / (math.e + 1 / math.e), (1 / math.e) / (math.e + 1 / math.e), 0.5, 0.5])
    logp = torch.tensor([-1.0, -3.0, -2.0, -5.0], dtype=D)
    loss, _ = wd1_loss(logp, adv, group, n_groups=2)
    # group 0: weights ±tanh(1): −(tanh1·(−1) − tanh1·(−3)) = −2 tanh 1; group 1: equal advantages, weight 0
    assert float(loss) == pytest.approx(-2 * math.tanh(1) / 2)


def test_spg_by_hand():
    lower = torch.tensor([-2.0, -3.0], dtype=D)
    upper = torch.tensor([-1.0, -2.5], dtype=D)
    loss, m = spg_loss(lower, upper, torch.tensor([0.5, -1.0], dtype=D), n_seq=2)
    assert float(loss) == pytest.approx(-(0.5 * -2.0 + -1.0 * -2.5) / 2)  # ELBO for A>=0, upper for A<0
    assert m["bound_gap"] == pytest.approx(0.75)


def test_advantage_rules_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    assert advantages("mean", r, g).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    assert advantages("loo", r, g).tolist() == pytest.approx([1.0, -0.5, -0.5, 0, 0, 0])
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0)
    assert advantages("zscore", r, g).tolist() == pytest.approx(
        [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0, 0, 0])
    with pytest.raises(ValueError, match="unknown advantage rule"):
        advantages("median", r, g)


def test_trace_filter_and_igpo_helpers():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert accuracy_filter(rewards, 0.2, 0.8).tolist() == [False, True, False]
    ref = torch.tensor([[5, 6, 7, 0, 0]])  # 3 tokens + EOS (id 0), n = 4
    assert hint_canvas(ref, torch.tensor([0.5], dtype=D), eos_id=0).tolist() == [[5, 6, -1, -1, -1]]
    ent = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]])
    hint = torch.tensor([[True, True, True, True, False]])
    assert entropy_keep(ent, hint, 0.5).tolist() == [[False, True, False, True, False]]


def test_every_algorithm_is_registered_with_its_defaults():
    names = {"grpo", "diffu_grpo", "coupled_grpo", "uni_grpo", "wd1", "igpo", "spg", "gdpo", "espo", "trace_rl"}
    assert names <= set(ALGORITHMS.names())
    assert ALGORITHMS.build("coupled_grpo").advantage == "loo"
    assert ALGORITHMS.build("trace_rl").needs_ref is False and ALGORITHMS.build("trace_rl").needs_old
    assert not ALGORITHMS.build("wd1").needs_old and not ALGORITHMS.build("spg").needs_ref
    assert ALGORITHMS.build("diffu_grpo").estimator_params == {"p_prompt": 0.15}
