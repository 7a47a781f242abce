"""igpo conforms to IGPO's reference run (facebookresearch/igpo: run_igpo.sh sets use_gspo=true,
d1_masking=true, epsilon 0.2, beta 0.01; trainer_igpo.py IGPOTrainer.compute_loss,
_get_per_token_logps_grpo, grpo_forward_process and the entropy filter in
_generate_and_score_completions). Loss: sequence ratio exp(Σ_{k<T} Δℓ_k / T) over the whole
completion canvas of T positions, broadcast to every token; per-token k3 KL; Σ over the counted
tokens / their number, the counted tokens being every canvas position (post-EOS padding included)
except hint tokens outside the top-20% entropy. Likelihood terms: the whole canvas masked
(d1_masking: mask ratio 1), prompt clean, log p at every canvas position."""
from __future__ import annotations

import math

import pytest
import torch

from harness.algorithms.igpo import entropy_keep
from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    B,
    G,
    T,
    assert_conforms,
    batch,
    estimate,
    fixture,
    harness_loss,
    target_logp,
    toy_rollout,
)
from tests.algorithms.conformance.refs import group_mean_advantages, igpo_gspo_loss


def _dropped_hints(fx, seed):
    g = torch.Generator().manual_seed(100 + seed)
    return fx["completion_mask"] & (torch.rand(B, T, generator=g) < 0.3)  # hint tokens filtered out


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_and_gradient_match_igpo_gspo(seed):
    fx = fixture(seed)
    algo = ALGORITHMS.build("igpo")
    cm = fx["completion_mask"]
    dropped = _dropped_hints(fx, seed)
    counted = algo.loss_tokens({"completion_mask": cm, "loss_mask": cm & ~dropped})
    assert torch.equal(counted, ~dropped)  # the canvas, padding included, minus the dropped hints
    adv = algo.advantages(fx["rewards"], fx["group"])
    torch.testing.assert_close(adv, group_mean_advantages(fx["rewards"], G), rtol=0, atol=1e-12)
    canvas = torch.ones_like(cm)  # igpo scores every canvas position
    loss, _ = algo.loss(batch(fx, counted), estimate(fx["logp"], canvas), estimate(fx["old"], canvas),
                        estimate(fx["ref"], canvas), adv)
    ref = igpo_gspo_loss(fx["logp"], fx["old"], fx["ref"], adv, ~dropped, 0.2, 0.2, 0.01)
    assert_conforms(loss, ref, fx["logp"])


def test_unnormalised_sequence_ratio_is_the_named_option():
    """ratio="sequence", sequence_scale="none", loss_tokens_over="completion": exp(ΣΔℓ), k3 on ΣΔℓ."""
    fx = fixture(2)
    cm = fx["completion_mask"]
    algo = ALGORITHMS.build("igpo", {"ratio": "sequence", "sequence_scale": "none",
                                     "loss_tokens_over": "completion"})
    adv = algo.advantages(fx["rewards"], fx["group"])
    loss = harness_loss(algo, fx, adv)
    s, s_old, s_ref = ((x * cm).sum(1) for x in (fx["logp"], fx["old"], fx["ref"]))
    rho = torch.exp(s - s_old)
    sur = torch.min(rho * adv, rho.clamp(0.8, 1.2) * adv)
    ref = (-(sur - 0.01 * (torch.exp(s_ref - s) - (s_ref - s) - 1))).mean()
    assert_conforms(loss, ref, fx["logp"])


@pytest.mark.parametrize("seed", [0, 1])
def test_terms_mask_and_score_the_whole_canvas(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed)
    algo = ALGORITHMS.build("igpo")
    with torch.no_grad():
        e = algo.terms(den, prompt, pmask, completion, cmask, generator=None, draws=None, iteration=0,
                       n_iterations=1)
    ref = target_logp(den, prompt, torch.full_like(completion, den.mask_id), completion)  # every position
    torch.testing.assert_close(e.per_token, ref, rtol=0, atol=1e-10)


def test_entropy_filter_keeps_max_1_floor_of_the_top_fraction():
    """The reference: top_k = max(1, int(num_candidates * 0.2)) hint tokens by entropy (torch.topk)."""
    g = torch.Generator().manual_seed(0)
    ent = torch.rand(5, 12, generator=g, dtype=torch.float64)
    hint = torch.rand(5, 12, generator=g) < 0.7
    hint[0] = False  # a row without hints keeps nothing
    got = entropy_keep(ent, hint, 0.2)
    for b in range(5):
        n = int(hint[b].sum())
        want = torch.zeros(12, dtype=torch.bool)
        if n:
            k = max(1, int(n * 0.2))
            cand = hint[b].nonzero().squeeze(1)
            want[cand[torch.topk(ent[b][cand], k).indices]] = True
        assert torch.equal(got[b], want), b
    ceil = entropy_keep(ent, hint, 0.2, "ceil")  # the named alternative
    assert [int(r.sum()) for r in ceil[1:]] == [math.ceil(0.2 * int(h.sum())) for h in hint[1:]]


@pytest.mark.parametrize("hint_rows", ["correct", "all"])
def test_all_wrong_groups_get_hinted_rows_like_the_reference(hint_rows):
    """_generate_and_score_completions: all G rows re-generated with hints, up to max_replacements of
    the correct ones replace the group's first rows (hint_rows="correct"); "all": the first n_hinted
    rows replaced whatever their reward."""
    from tests.algorithms.toy import make_loop

    algo = ALGORITHMS.build("igpo", {"hint_rows": hint_rows, "hint_min": 0.9, "hint_max": 1.0, "n_hinted": 2})
    loop = make_loop(algo)
    buf = loop.rollout(0)
    buf["rewards"] = buf["rewards"].clone()
    buf["rewards"][:4] = 0.0  # group 0 all wrong (G = 4)
    buf["rewards"][4:] = torch.tensor([1.0, 0.0] * 6, dtype=torch.float64)[: len(buf["rewards"]) - 4]
    out = algo.after_rollout(loop, buf, 0)
    changed = [i for i in range(len(buf["rewards"])) if not torch.equal(out["tokens"][i], buf["tokens"][i])]
    assert all(i < 4 for i in changed)  # only the all-wrong group
    if hint_rows == "correct":
        assert changed == list(range(len(changed))) and len(changed) <= 2  # its first rows, at most max_replacements
        assert all(float(out["rewards"][i]) >= 1.0 for i in changed)  # only correct hinted rows are kept
        assert len(changed) >= 1  # hints covering 90-100% of "777" decode correctly here
    else:
        assert set(changed) <= {0, 1}
        assert torch.equal(out["rewards"][2:4], buf["rewards"][2:4])
