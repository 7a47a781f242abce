"""`bd3_elbo` against BD3-LM's own loss and against the exact block ELBO.

- Parity: the fixture's `bd3lm_reference.BD3LMReference` runs the real `diffusion.py`
  (kuleshov-group/bd3lms 1c3e8f4, `Diffusion._loss` -> `_forward_pass_diffusion`) on the real HF
  model; its draws are replayed (same seed: `_sample_t`'s torch.rand for t with antithetic strata over
  batch x blocks, then `q_xt`'s torch.rand per token) and given to the harness estimator on the
  native model: the per-token nlls and the loss agree.
- Exactness: with t ~ U(0, 1) the estimator's mean is the block ELBO, Σ_b Σ_{M ⊆ b, M ≠ ∅}
  B(|M|, m_b − |M| + 1) Σ_{k∈M} log p(o_k | M masked, clean blocks < b), enumerated here.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as P

from harness.estimators.bd3_elbo import BD3Elbo, completion_blocks
from harness.registry import ESTIMATORS, MODELS
from tests.models import _bd3lm_real as real

MASK, EOS = 50257, 50256


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    return real.build(tmp_path_factory.mktemp("bd3lm") / "ckpt")


def _replay(seed: int, B: int, T: int, block: int):
    """BD3-LM's draws for a [B, T] batch (diffusion.py _sample_t with antithetic sampling, eps [1e-3, 1],
    then q_xt): t [B, T // block] per block and the masks [B, T] (rand <= t)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    nb = T // block
    u = torch.rand((B, nb))
    u = (u / (B * nb) + (torch.arange(B * nb) / (B * nb)).view(B, nb)) % 1
    t = u * (1.0 - 1e-3) + 1e-3
    masks = torch.rand(B, T) <= t.repeat_interleave(block, dim=-1)
    return t, masks


def test_equals_bd3lm_loss_with_the_same_draws(ckpt):
    real.bd3lm_dir()
    from bd3lm_reference import BD3LMReference

    ref = BD3LMReference(ckpt)
    den = MODELS.build("bd3lm", {"path": str(ckpt), "device": "cpu", "dtype": "float32"}).load()
    g = torch.Generator().manual_seed(0)
    B, T, block = 2, 64, 4  # the reference's training pass takes model_length (64) tokens
    x0 = torch.randint(0, 96, (B, T), generator=g)
    x0[:, 0] = EOS
    seed = 7
    t, masks = _replay(seed, B, T, block)
    with torch.no_grad():
        out = ref.loss(x0, torch.ones(B, T), seed=seed)
    # the replay is the reference's draw: its nonzero nlls are exactly at the masked tokens (BOS kept)
    assert torch.equal(out.nlls[:, 1:] != 0, masks[:, 1:])
    est = BD3Elbo(n_mc=1)
    blk, nb = completion_blocks(None, 1, T - 1, B, 4)
    t_pad = torch.cat([t, torch.ones(B, nb - t.shape[1])], 1)[:, None, :].double()  # [B, 1, nb]
    with torch.no_grad():
        got = est(den, x0[:, :1], x0[:, 1:], torch.ones(B, T - 1, dtype=torch.bool), generator=None,
                  draws={"t": t_pad, "masks": masks[:, None, 1:]})
    want_tok = -out.nlls[:, 1:].double()  # the reference's per-token terms (ignore_bos: BOS unscored)
    assert (got.per_token - want_tok).abs().max() < 1e-3 * want_tok.abs().max()
    loss = -got.sequence.sum() / (B * (T - 1))  # Loss.loss = Σ nlls / Σ token_mask
    assert abs(loss.item() - out.loss.item()) < 1e-5 * abs(out.loss.item()), (loss.item(), out.loss.item())


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return MODELS.build("bd3lm", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()


def _weight(j: int, m: int, a: float, b: float) -> float:
    """E_t[(1/t) t^j (1-t)^(m-j)] for t ~ U(a, b): (1/(b-a)) ∫_a^b t^(j-1) (1-t)^(m-j) dt."""
    poly = P.polymul(P.polypow([0.0, 1.0], j - 1), P.polypow([1.0, -1.0], m - j))
    prim = P.polyint(poly)
    return (P.polyval(b, prim) - P.polyval(a, prim)) / (b - a)


def _exact(den, prompt, completion, a: float, b: float):
    """Σ over blocks and nonempty masked subsets M of a block's m completion tokens of
    E_t[(1/t) t^|M| (1-t)^(m-|M|)] · Σ_{k∈M} log p(o_k | M masked, clean blocks < b)."""
    P_, L = prompt.shape[1], completion.shape[1]
    blk, _ = completion_blocks(None, P_, L, 1, den.block_size)
    total = 0.0
    x0 = torch.cat([prompt, completion], 1)
    for blk_id in blk[0].unique().tolist():
        cols = (blk[0] == blk_id).nonzero().squeeze(1).tolist()
        m = len(cols)
        for j in range(1, m + 1):
            w = _weight(j, m, a, b)
            for M in itertools.combinations(cols, j):
                xt = x0.clone()
                xt[0, [P_ + k for k in M]] = den.mask_id
                logp = torch.log_softmax(den.logits_denoise(xt, x0)[0].double(), -1)
                total += w * sum(logp[P_ + k, completion[0, k]].item() for k in M)
    return total


def _check_mean(den, prompt, completion, eps, n=3000, chunks=30):
    a, b = eps
    cmask = torch.ones_like(completion, dtype=torch.bool)
    est = BD3Elbo(n_mc=n, eps_min=a, eps_max=b, max_tokens=4096)
    with torch.no_grad():
        exact = _exact(den, prompt, completion, a, b)
        out = est(den, prompt, completion, cmask, generator=torch.Generator().manual_seed(0))
        # batch means over `chunks` slices of the same draws (replayed): the standard error of the mean
        size = n // chunks
        means = torch.stack([est(den, prompt, completion, cmask, generator=None,
                                 draws={k: out.draws[k][:, i * size:(i + 1) * size] for k in ("t", "masks")}
                                 ).sequence[0] for i in range(chunks)])
    mean = out.sequence.item()
    assert abs(means.mean().item() - mean) < 1e-9 * abs(mean)  # the replayed draws give the same value
    se = means.std().item() / math.sqrt(chunks)
    print(f"bd3_elbo eps {eps}: mean {mean:.4f} exact {exact:.4f} se {se:.4f}")
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    return exact


@pytest.mark.parametrize("eps", [(0.0, 1.0), (0.3, 0.9)])
def test_mean_is_the_exact_expectation_tiny(tiny, eps):
    """(0, 1): the block ELBO (Beta weights); (0.3, 0.9): a clipped schedule, its own expectation."""
    assert BD3Elbo(eps_min=eps[0], eps_max=eps[1]).elbo_target == (eps == (0.0, 1.0))
    assert not BD3Elbo().elbo_target  # BD3-LM's default eps_min 1e-3 misses [0, 1e-3)
    prompt = torch.tensor([tiny.tokenizer.encode("7+5")])  # positions 0-2; the completion's blocks: {3} {4-7} {8}
    completion = torch.tensor([tiny.tokenizer.encode("12;9!") + [tiny.eos_id]])
    _check_mean(tiny, prompt, completion, eps)


def test_mean_is_the_exact_expectation_on_a_context_sensitive_model(ckpt):
    """The fixture's model is confident and context-dependent (the tiny preset barely is): the
    clipped law's expectation differs from the ELBO there, and each is met by its own estimator."""
    den = MODELS.build("bd3lm", {"path": str(ckpt), "device": "cpu", "dtype": "float32"}).load()
    prompt, completion = torch.tensor([[EOS, 20, 30]]), torch.tensor([[40, 41, 42, 43, 44, EOS]])
    clipped = _check_mean(den, prompt, completion, (0.3, 0.9), n=600)
    elbo = _check_mean(den, prompt, completion, (0.0, 1.0), n=600)
    assert abs(clipped - elbo) > 1.0  # the two targets really differ here


def test_antithetic_draws_are_stratified_and_rows_independent():
    g = [torch.Generator().manual_seed(s) for s in (1, 2)]
    from harness.estimators.bd3_elbo import draw_t

    t = draw_t(2, 3, 5, 0.0, 1.0, True, g)  # [B, n, nb]
    for row in t:
        assert torch.equal((row.flatten() * 15).floor().sort().values, torch.arange(15, dtype=torch.float64))
    alone = draw_t(1, 3, 5, 0.0, 1.0, True, [torch.Generator().manual_seed(2)])
    assert torch.equal(alone[0], t[1])


def test_registered_and_declared():
    est = ESTIMATORS.build("bd3_elbo", {})
    assert est.metric == "elbo" and est.token_scale is False and est.masks == "independent"
    assert est.nfe_for_batch(3) == 3
    with pytest.raises(ValueError, match="eps_min"):
        BD3Elbo(eps_min=0.5, eps_max=0.4)


def test_left_padded_batch_equals_each_row_alone(tiny):
    """Blocks count from each row's first real token: a left-padded row draws and scores what it does alone."""
    tok = tiny.tokenizer
    prompts = [tok.encode("12+34="), tok.encode("7=")]
    completion = torch.tensor([tok.encode("46;") + [tiny.eos_id], tok.encode("7;;") + [tiny.eos_id]])
    P = max(map(len, prompts))
    prompt = torch.full((2, P), tiny.pad_id)
    pmask = torch.zeros(2, P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        prompt[i, P - len(p):] = torch.tensor(p)
        pmask[i, P - len(p):] = True
    cmask = torch.ones_like(completion, dtype=torch.bool)
    est = BD3Elbo(n_mc=4)
    with torch.no_grad():
        both = est(tiny, prompt, completion, cmask, prompt_mask=pmask,
                   generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
        for i, p in enumerate(prompts):
            alone = est(tiny, torch.tensor([p]), completion[i:i + 1], cmask[i:i + 1],
                        generator=[torch.Generator().manual_seed(3 + i)])
            assert torch.equal(both.draws["masks"][i], alone.draws["masks"][0])
            torch.testing.assert_close(both.per_token[i], alone.per_token[0], rtol=0, atol=1e-6)
    # row 0: 6 prompt tokens -> its completion starts at block 1, position 6: blocks {6,7} {8,9}
    blk, _ = completion_blocks(pmask, P, 4, 2, 4)
    assert blk.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
