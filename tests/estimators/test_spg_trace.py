"""SPG bounds (block_elbo, eubo, mix) and TraceRL's trajectory scoring (trace)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.estimators.block_elbo import block_masks, prompt_masks
from harness.registry import ESTIMATORS, SAMPLERS
from harness.text import completion_mask
from harness.types import ArchInfo, HarnessError
from tests.helpers import Recorder, make_tiny

SPG = ("block_elbo", "eubo", "mix")


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


class Factorised:
    """A toy denoiser whose logits ignore the input: p(o_k | anything) = softmax(table[k])."""

    mask_id, eos_id, pad_id, shift_logits, tokenizer = 1, 2, 0, False, None
    device = torch.device("cpu")
    arch = ArchInfo(n_params=100, n_layers=1, d_model=4)

    def __init__(self, T: int = 24, V: int = 26, seed: int = 0):
        self.vocab_size = V
        self.table = torch.randn(T, V, generator=torch.Generator().manual_seed(seed))

    def logits(self, x, attention_mask=None):
        return self.table[: x.shape[1]].expand(x.shape[0], -1, -1).clone()


def batch(B=3, P=4, L=10, lengths=(10, 7, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 20, (B, P), generator=g)
    completion = torch.randint(3, 20, (B, L), generator=g)
    cmask = torch.arange(L)[None, :] < torch.tensor(lengths[:B])[:, None]
    completion = torch.where(cmask, completion, torch.full_like(completion, 2))  # EOS padding
    return prompt, completion, cmask


def gens(B, seed=0):
    return [torch.Generator().manual_seed(seed + 1000 * i) for i in range(B)]


def direct_logp(den, prompt_row, noised_row, completion_row):
    """log p(o_k | prompt, noised) at every completion position, by one direct forward pass."""
    x = torch.cat([prompt_row, noised_row])[None]
    logits = den.logits(x)[0, len(prompt_row):]
    return F.log_softmax(logits.to(torch.promote_types(
        logits.dtype, torch.float32)), -1).gather(-1, completion_row[:, None]).squeeze(-1).double()


# -- registry -------------------------------------------------------------------------------------

def test_registry_lists_the_spg_and_trace_estimators():
    assert {"block_elbo", "eubo", "mix", "trace"} <= set(ESTIMATORS.names())
    assert ESTIMATORS.build("eubo", {"beta": 2}).beta == 2.0
    with pytest.raises(HarnessError):
        ESTIMATORS.build("eubo", {"beta": 3.0})
    with pytest.raises(HarnessError):
        ESTIMATORS.build("mix", {"omega": 1.5})
    assert not hasattr(ESTIMATORS.build("trace"), "nfe_for_batch")  # the planner skips its check


# -- block-wise masks -----------------------------------------------------------------------------

def test_block_masks_follow_spg_structure():
    L, bl, m = 11, 3, 40
    cmask = torch.arange(L)[None, :] < torch.tensor([11, 7, 3, 1, 0])[:, None]
    d = block_masks(cmask, m, bl, torch.Generator().manual_seed(1))
    masks, k, c = d["masks"], d["block"], d["count"]
    for b in range(cmask.shape[0]):
        n = int(cmask[b].sum())
        for i in range(m):
            row = masks[b, i]
            assert not row[~cmask[b]].any()  # only scored positions are masked
            if n == 0:
                assert not row.any() and d["t_hat"][b, i] == 0
                continue
            kb = int(k[b, i])
            assert 0 <= kb < math.ceil(n / bl)
            lo, hi = kb * bl, min(n, (kb + 1) * bl)
            assert not row[:lo].any()  # earlier blocks clean
            assert row[hi:n].all()  # later blocks fully masked
            assert 1 <= int(row[lo:hi].sum()) == int(c[b, i]) <= hi - lo
            assert d["t_hat"][b, i] == pytest.approx(float(row.sum()) / n)
    # Every block and every in-block count shows up for the long row.
    assert set(k[0].tolist()) == {0, 1, 2, 3}


def test_prompt_masks_ignore_padding_and_hit_about_p():
    real = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    a = prompt_masks(real, 2, 0.5, gens(2))
    assert not a[0, :, :2].any()
    alone = prompt_masks(real[:1, 2:], 2, 0.5, gens(1))  # row 0 without its padding
    assert torch.equal(a[0, :, 2:], alone[0])
    big = prompt_masks(torch.ones(1, 2000, dtype=torch.bool), 1, 0.15, torch.Generator().manual_seed(0))
    assert 0.12 < big.float().mean() < 0.18


# -- SPG estimators -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPG)
def test_spg_replay_reproduces_values_exactly(tiny, name):
    est = ESTIMATORS.build(name, {"m": 3, "block_length": 4})
    prompt, completion, cmask = batch()
    first = est(tiny, prompt, completion, cmask, generator=torch.Generator().manual_seed(5))
    again = est(tiny, prompt, completion, cmask, generator=torch.Generator().manual_seed(99), draws=first.draws)
    assert torch.equal(first.per_token, again.per_token) and torch.equal(first.sequence, again.sequence)
    assert first.draws["prompt_masks"].any()  # p_prompt = 0.15 by default
    assert torch.allclose(first.per_token.sum(1), first.sequence)
    assert (first.per_token[~cmask] == 0).all() and first.n == 3


@pytest.mark.parametrize("name", SPG)
def test_spg_per_row_generators_make_a_batch_equal_its_rows_alone(tiny, name):
    est = ESTIMATORS.build(name, {"m": 2, "block_length": 3, "p_prompt": 0.3})
    prompt, completion, cmask = batch()
    pmask = torch.ones_like(prompt, dtype=torch.bool)
    pmask[1, :2] = False  # left padding: row 1 has a 2-token prompt
    prompt = torch.where(pmask, prompt, torch.zeros_like(prompt))
    full = est(tiny, prompt, completion, cmask, generator=gens(3), prompt_mask=pmask)
    for b in range(3):
        keep = pmask[b]
        one = est(tiny, prompt[b:b + 1, keep], completion[b:b + 1], cmask[b:b + 1], generator=gens(3)[b:b + 1],
                  prompt_mask=torch.ones(1, int(keep.sum()), dtype=torch.bool))
        assert torch.equal(one.draws["masks"][0], full.draws["masks"][b])
        assert torch.equal(one.draws["prompt_masks"][0], full.draws["prompt_masks"][b][:, keep])
        assert torch.allclose(one.sequence[0], full.sequence[b], atol=1e-5)
        assert torch.allclose(one.per_token[0], full.per_token[b], atol=1e-5)


@pytest.mark.parametrize("name", SPG)
def test_spg_meter_counts_m_passes_per_sequence(tiny, name):
    est = ESTIMATORS.build(name, {"m": 3, "max_tokens": 50})  # 3 rows per pass: forces chunking
    prompt, completion, cmask = batch()
    meter = Meter(tiny)
    est(meter, prompt, completion, cmask, generator=gens(3))
    assert meter.cost.nfe == est.nfe_for_batch(3) == 9


def test_spg_values_match_direct_forward_passes(tiny):
    beta, omega = 1.5, 0.3
    prompt, completion, cmask = batch(lengths=(10, 5, 1))
    kw = {"m": 3, "block_length": 4, "beta": beta}
    mix = ESTIMATORS.build("mix", {**kw, "omega": omega})
    out = mix(tiny, prompt, completion, cmask, generator=gens(3))
    d = out.draws
    for b in range(3):
        n = int(cmask[b].sum())
        elbo, acc = 0.0, torch.zeros(10, dtype=torch.float64)
        for i in range(3):
            mk = d["masks"][b, i]
            noised = torch.where(mk, 1, completion[b])
            p_in = torch.where(d["prompt_masks"][b, i], 1, prompt[b])
            lp = direct_logp(tiny, p_in, noised, completion[b])
            t_hat = float(mk.sum()) / n
            elbo += (lp[mk].sum() / t_hat).item() / 3
            acc += torch.where(mk, lp.exp() ** beta / t_hat, torch.zeros_like(lp)) / 3  # mean_i p^β 1/t̂
        cov = acc > 0
        eubo = n / int(cov.sum()) * (acc[cov].log() / beta).sum().item()
        want = omega * eubo + (1 - omega) * elbo
        assert out.sequence[b].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_mix_is_the_weighted_combination_on_shared_draws(tiny):
    prompt, completion, cmask = batch()
    kw = {"m": 2, "block_length": 3, "beta": 1.2}
    mix = ESTIMATORS.build("mix", {**kw, "omega": 0.25})
    out = mix(tiny, prompt, completion, cmask, generator=gens(3))
    lo = ESTIMATORS.build("block_elbo", {"m": 2, "block_length": 3})
    up = ESTIMATORS.build("eubo", kw)
    e = lo(tiny, prompt, completion, cmask, generator=None, draws=out.draws)
    u = up(tiny, prompt, completion, cmask, generator=None, draws=out.draws)
    assert torch.allclose(out.sequence, 0.25 * u.sequence + 0.75 * e.sequence)
    assert torch.allclose(out.per_token, 0.25 * u.per_token + 0.75 * e.per_token)
    # The same generator state gives mix the same draws as block_elbo alone.
    e2 = lo(tiny, prompt, completion, cmask, generator=gens(3))
    assert torch.equal(e2.draws["masks"], out.draws["masks"])


def test_eubo_with_one_sample_is_elbo_plus_minus_log_t_over_beta(tiny):
    """m = 1: each covered token's bound is ℓ − (1/β) log t̂, so EUBO = ELBO − (n/β) log t̂ >= ELBO."""
    prompt, completion, cmask = batch()
    kw = {"m": 1, "block_length": 3}
    e = ESTIMATORS.build("block_elbo", kw)(tiny, prompt, completion, cmask, generator=gens(3))
    u = ESTIMATORS.build("eubo", {**kw, "beta": 1.7})(tiny, prompt, completion, cmask, generator=None, draws=e.draws)
    n = cmask.sum(1).double()
    gap = -(n / 1.7) * torch.log(e.draws["t_hat"][:, 0])
    assert torch.allclose(u.sequence, e.sequence + gap)
    assert (u.sequence >= e.sequence - 1e-9).all()


def test_factorised_denoiser_elbo_is_exact_weighting():
    """Input-blind logits: each sample's ELBO is (1/t̂) Σ_masked log q_k; token scale divides by n."""
    den = Factorised()
    prompt, completion, cmask = batch(lengths=(10, 6, 3))
    seq = ESTIMATORS.build("block_elbo", {"m": 4, "block_length": 4, "p_prompt": 0.0})
    tok = ESTIMATORS.build("block_elbo", {"m": 4, "block_length": 4, "p_prompt": 0.0, "scale": "token"})
    a = seq(den, prompt, completion, cmask, generator=gens(3))
    b = tok(den, prompt, completion, cmask, generator=None, draws=a.draws)
    logq = F.log_softmax(den.table[4:14], -1).double()  # [L, V]
    lq = logq.expand(3, -1, -1).gather(-1, completion[:, :, None]).squeeze(-1)  # [B, L]
    masks, t_hat = a.draws["masks"], a.draws["t_hat"]
    want = ((masks * lq[:, None, :]).sum(-1) / t_hat).mean(1)
    assert torch.allclose(a.sequence, want)
    assert torch.allclose(b.sequence, want / cmask.sum(1))


def test_eubo_gradients_are_finite(tiny):
    prompt, completion, cmask = batch()
    out = ESTIMATORS.build("mix", {"m": 2, "block_length": 3})(tiny, prompt, completion, cmask, generator=gens(3))
    out.sequence.sum().backward()
    grads = [p.grad for p in tiny.module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny.module.zero_grad(set_to_none=True)


def test_spg_mask_padding_hides_post_eos_positions(tiny):
    prompt, completion, cmask = batch()
    for flag in (False, True):
        rec = Recorder(tiny)
        est = ESTIMATORS.build("block_elbo", {"m": 1, "p_prompt": 0.0, "mask_padding": flag})
        est(rec, prompt, completion, cmask, generator=gens(3))
        x = rec.inputs[0][:, 4:]  # completion part, rows = (b, i)
        assert bool((x[~cmask] == 1).all()) == flag and bool((x[~cmask] == 2).all()) != flag


# -- trace ----------------------------------------------------------------------------------------

def trace_batch(commit):
    commit = torch.tensor(commit)
    B, L = commit.shape
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, 20, (B, 3), generator=g), torch.randint(3, 20, (B, L), generator=g), commit


def test_trace_matches_direct_passes_on_a_hand_made_order(tiny):
    prompt, completion, commit = trace_batch([[2, 0, 1, 0]])
    cmask = torch.ones_like(commit, dtype=torch.bool)
    meter = Meter(tiny)
    out = ESTIMATORS.build("trace")(meter, prompt, completion, cmask, generator=None, draws={"commit_step": commit})
    assert meter.cost.nfe == 3
    c = completion[0]
    want = torch.zeros(4, dtype=torch.float64)
    for step, hide in ((0, [0, 1, 2, 3]), (1, [0, 2]), (2, [0])):
        noised = c.clone()
        noised[hide] = 1
        lp = direct_logp(tiny, prompt[0], noised, c)
        sel = commit[0] == step
        want[sel] = lp[sel]
    assert torch.allclose(out.per_token[0], want, atol=1e-6)
    assert out.sequence[0].item() == pytest.approx(want.mean().item(), abs=1e-6)

    meter = Meter(tiny)
    two = ESTIMATORS.build("trace", {"stride": 2})(meter, prompt, completion, cmask, generator=None,
                                                   draws={"commit_step": commit})
    assert meter.cost.nfe == 2
    want2 = direct_logp(tiny, prompt[0], torch.ones_like(c), c)  # steps 0-1: everything hidden
    lp = direct_logp(tiny, prompt[0], torch.where(commit[0] >= 2, 1, c), c)
    want2[0] = lp[0]  # step 2 group: only position 0 hidden
    assert torch.allclose(two.per_token[0], want2, atol=1e-6)


def test_trace_never_masks_or_scores_given_tokens(tiny):
    prompt, completion, commit = trace_batch([[-1, 0, 1, -1, 0]])
    cmask = torch.tensor([[True, True, True, True, False]])  # last position is padding
    rec = Recorder(tiny)
    out = ESTIMATORS.build("trace")(rec, prompt, completion, cmask, generator=None, draws={"commit_step": commit})
    x = torch.cat(rec.inputs)[:, 3:]
    assert (x[:, [0, 3, 4]] == completion[0, [0, 3, 4]]).all()  # given tokens and padding stay clean
    assert out.per_token[0, [0, 3, 4]].eq(0).all() and out.per_token[0, [1, 2]].ne(0).all()
    assert out.sequence[0].item() == pytest.approx(out.per_token[0].sum().item() / 2)
    rec = Recorder(tiny)
    ESTIMATORS.build("trace", {"mask_padding": True})(rec, prompt, completion, cmask, generator=None,
                                                       draws={"commit_step": commit})
    x = torch.cat(rec.inputs)[:, 3:]  # groups: step 0, step 1
    assert x[0, 4] == 1 and x[1, 4] == completion[0, 4]  # padding committed at step 0: hidden in group 0 only


def test_trace_one_token_per_step_on_a_factorised_model_is_mean_log_q():
    den = Factorised()
    L = 6
    order = torch.randperm(L, generator=torch.Generator().manual_seed(0))
    prompt, completion, _ = trace_batch([[0] * L])
    cmask = torch.ones(1, L, dtype=torch.bool)
    meter = Meter(den)
    out = ESTIMATORS.build("trace")(meter, prompt, completion, cmask, generator=None,
                                    draws={"commit_step": order[None]})
    lq = F.log_softmax(den.table[3:3 + L], -1).gather(-1, completion[0][:, None]).squeeze(-1)
    assert meter.cost.nfe == L
    assert out.sequence[0].item() == pytest.approx(lq.sum().item() / L, abs=1e-6)


def test_trace_merge_by_steps_or_by_ranks_and_group_aggregate(tiny):
    prompt, completion, commit = trace_batch([[0, 4, 5, 9], [3, 3, 1, -1]])
    cmask = torch.ones_like(commit, dtype=torch.bool)
    draws = {"commit_step": commit}
    counts = {}
    for merge in ("steps", "ranks"):
        meter = Meter(tiny)
        ESTIMATORS.build("trace", {"stride": 2, "merge": merge})(meter, prompt, completion, cmask,
                                                                 generator=None, draws=draws)
        counts[merge] = meter.cost.nfe
    # steps: row 0 {0}, {4,5}, {9}; row 1 {1}, {3}.  ranks: row 0 {0,4}, {5,9}; row 1 {1,3}.
    assert counts == {"steps": 5, "ranks": 3}
    tok = ESTIMATORS.build("trace")(tiny, prompt, completion, cmask, generator=None, draws=draws)
    grp = ESTIMATORS.build("trace", {"aggregate": "group"})(tiny, prompt, completion, cmask, generator=None,
                                                           draws=draws)
    assert torch.equal(tok.per_token, grp.per_token)
    pt = tok.per_token[1]
    assert grp.sequence[1].item() == pytest.approx(((pt[0] + pt[1]) / 2 + pt[2]).item() / 2, abs=1e-6)
    assert torch.allclose(grp.sequence[0], tok.sequence[0])  # one token per group: same means


def test_trace_replay_and_batch_equals_rows_alone(tiny):
    prompt, completion, commit = trace_batch([[2, 0, 1, 0, 3], [0, 0, 1, 1, -1], [4, 3, 2, 1, 0]])
    cmask = torch.ones_like(commit, dtype=torch.bool)
    est = ESTIMATORS.build("trace", {"max_tokens": 17})
    full = est(tiny, prompt, completion, cmask, generator=None, draws={"commit_step": commit})
    again = est(tiny, prompt, completion, cmask, generator=None, draws=full.draws)
    assert torch.equal(full.per_token, again.per_token) and torch.equal(full.sequence, again.sequence)
    for b in range(3):
        one = est(tiny, prompt[b:b + 1], completion[b:b + 1], cmask[b:b + 1], generator=None,
                  draws={"commit_step": commit[b:b + 1]})
        assert torch.allclose(one.per_token[0], full.per_token[b], atol=1e-6)


class NoMaskProposals(Recorder):
    """The tiny model with the mask token's logit removed, so an untrained model's argmax never
    proposes [M] (the sampler would commit it and leave the position masked)."""

    def logits(self, x, attention_mask=None):
        out = self.inner.logits(x, attention_mask).clone()
        out[..., self.inner.mask_id] = -torch.inf
        return out


@pytest.mark.parametrize("suppress_mask", [False, True])
def test_trace_accepts_the_low_confidence_sampler_order(tiny, suppress_mask):
    sampler = SAMPLERS.build("low_confidence", {})
    prompt = torch.randint(3, 20, (2, 4), generator=torch.Generator().manual_seed(0))
    gen = sampler(NoMaskProposals(tiny) if suppress_mask else tiny, prompt, generator=gens(2), gen_length=8)
    cmask = completion_mask(gen.tokens, tiny.eos_id)
    meter = Meter(tiny)
    out = ESTIMATORS.build("trace")(meter, prompt, gen.tokens, cmask, generator=None,
                                    draws={"commit_step": gen.commit_step})
    assert torch.isfinite(out.per_token).all() and torch.isfinite(out.sequence).all()
    scored = cmask & (gen.commit_step >= 0)
    groups = sum(len(torch.unique(gen.commit_step[b][scored[b]])) for b in range(2))
    assert meter.cost.nfe == groups
    assert (out.sequence <= 0).all()
    if suppress_mask:  # one token per step: every scored token is its own group
        assert groups == int(scored.sum()) > 2


def test_trace_requires_commit_steps(tiny):
    prompt, completion, commit = trace_batch([[0, 1]])
    cmask = torch.ones_like(commit, dtype=torch.bool)
    est = ESTIMATORS.build("trace")
    with pytest.raises(HarnessError, match="commit_step"):
        est(tiny, prompt, completion, cmask, generator=None)
    with pytest.raises(HarnessError, match="shape"):
        est(tiny, prompt, completion, cmask, generator=None, draws={"commit_step": commit[:, :1]})
