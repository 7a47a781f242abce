"""The native BD3-LM against the public `modeling_bd3lm.py` (kuleshov-group/bd3lms 1c3e8f4,
`DITBackbone.forward`) on build_bd3lm.py's random-weight checkpoint (real config keys, GPT-2's
special ids, block 4, model_length 64).

- plain forward = the file's `sample_mode=True` (block-causal x_0–x_0 part of `block_diff_mask`);
- scoring pass = the file's training forward over [x_t ; x_0] (`sample_mode=False`), x_t half;
- fp32 weights and bf16 weights (the reference computes in float32 under its autocast: compared
  with the reference holding the same bf16-rounded weights);
- a left-padded batch gives each row the numbers it has alone (the reference takes no padding);
- `impl: remote` runs the file itself (patched for transformers 5 by the fixture's tf5_bd3lm.py).
"""
from __future__ import annotations

import pytest
import torch

from harness.registry import MODELS
from harness.types import HarnessError
from tests.models import _bd3lm_real as real

MASK, EOS = 50257, 50256


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    return real.build(tmp_path_factory.mktemp("bd3lm") / "ckpt")


@pytest.fixture(scope="module")
def reference(ckpt):
    return real.real_model(ckpt)


def _native(ckpt, dtype="float32", **kw):
    return MODELS.build("bd3lm", {"path": str(ckpt), "device": "cpu", "dtype": dtype, **kw}).load()


def _pair(T=64, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 96, (B, T), generator=g)
    x0[:, 0] = EOS  # BD3-LM's sequences start with <|endoftext|>
    xt = torch.where(torch.rand(B, T, generator=g) < 0.5, MASK, x0)
    return xt, x0


def test_impl_remote_unpatched_fails_with_a_clear_error(ckpt):
    """The 4.x file does not load under transformers 5 unpatched (no post_init): a HarnessError that
    points to impl: native. (Runs first: the fixture's patch, once applied, holds for the process.)"""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    if getattr(get_class_from_dynamic_module("modeling_bd3lm.BD3LM", str(ckpt)), "_fid_patched", False):
        pytest.skip("the reference class was patched earlier in this process (tf5_bd3lm)")
    with pytest.raises(HarnessError, match="impl: native"):
        _native(ckpt, impl="remote")


def test_special_ids_block_size_and_subs(ckpt):
    den = _native(ckpt)
    assert (den.mask_id, den.eos_id, den.pad_id, den.vocab_size, den.block_size) == (MASK, EOS, MASK, 50258, 4)
    assert den.prompting["add_bos"] and den.prompting["bos_id"] == EOS and den.stop_ids == (EOS,)
    _, x0 = _pair(T=12, B=1)
    with torch.no_grad():
        raw = den.module(x0).logits
        out = den.logits(x0)
    # BD3-LM's subs parameterisation: the MASK column is pushed down by 1e6, nothing else changes
    assert torch.equal(out[..., :MASK], raw[..., :MASK]) and torch.equal(out[..., MASK], raw[..., MASK] - 1e6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_equal_the_reference(ckpt, reference, dtype):
    ref = reference
    if dtype == "bfloat16":  # the reference with the same bf16-rounded weights (it computes in float32)
        ref = real.real_model(ckpt)
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.bfloat16().float())
    den = _native(ckpt, dtype)
    assert next(den.module.parameters()).dtype == getattr(torch, dtype)
    xt, x0 = _pair()
    # fp32: bit-identical row by row. bf16: the matmuls run on float32 copies of the bf16 weights,
    # whose fresh buffers MKL may sum in another order than the reference's parameters (measured
    # max|diff| ~1e-5 on logits of size ~10)
    tol = 0.0 if dtype == "float32" else 1e-4
    with torch.no_grad():
        for i in range(2):
            want = real.real_logits(ref, x0[i:i + 1, :23], sample_mode=True)
            assert (den.module(x0[i:i + 1, :23]).logits - want).abs().max() <= tol, (dtype, i)
            want = real.real_logits(ref, torch.cat([xt[i:i + 1], x0[i:i + 1]], 1), sample_mode=False)
            assert (den.module.forward_denoise(xt[i:i + 1], x0[i:i + 1]).logits - want).abs().max() <= tol, (dtype, i)
        # batched: the reference computes its conditioning vector with the batch (a B-row matmul), the
        # native code with one row (batch-invariant), so they agree up to float32 rounding
        want = real.real_logits(ref, torch.cat([xt, x0], 1), sample_mode=False)
        got = den.module.forward_denoise(xt, x0).logits
        assert (got - want).abs().max() < 1e-4


def test_left_padded_batch_equals_each_row_alone(ckpt):
    den = _native(ckpt)
    xt, x0 = _pair(T=20, B=3, seed=1)
    lengths = [20, 13, 6]
    am = torch.zeros(3, 20, dtype=torch.bool)
    for i, n in enumerate(lengths):
        am[i, 20 - n:] = True
        xt[i, :20 - n] = x0[i, :20 - n] = MASK  # left padding (pad == MASK)
    with torch.no_grad():
        plain = den.logits(x0, am)
        dual = den.logits_denoise(xt, x0, am)
        for i, n in enumerate(lengths):
            assert torch.equal(plain[i, 20 - n:], den.logits(x0[i:i + 1, 20 - n:])[0]), i
            assert torch.equal(dual[i, 20 - n:], den.logits_denoise(xt[i:i + 1, 20 - n:], x0[i:i + 1, 20 - n:])[0]), i


def test_block_causal_structure(ckpt):
    """Changing tokens of a later block leaves earlier positions unchanged; in the scoring pass the
    x_t of an earlier block is invisible (each block sees the clean earlier blocks)."""
    den = _native(ckpt)
    xt, x0 = _pair(T=16, B=1, seed=2)
    with torch.no_grad():
        base = den.logits_denoise(xt, x0)
        xt2 = xt.clone()
        xt2[0, :4] = MASK - 1 - xt2[0, :4]  # rewrite block 0 of x_t: blocks 1.. must not move
        other = den.logits_denoise(xt2, x0)
        assert torch.equal(base[0, 4:], other[0, 4:]) and not torch.equal(base[0, :4], other[0, :4])
        x02 = x0.clone()
        x02[0, 12:] = 5  # rewrite the last clean block: blocks 0..2 must not move
        assert torch.equal(den.logits_denoise(xt, x02)[0, :12], base[0, :12])
        plain = den.logits(x0)
        assert torch.equal(den.logits(x02)[0, :12], plain[0, :12])


def test_impl_remote_runs_the_reference_file(ckpt):
    real.bd3lm_dir()
    import tf5_bd3lm

    tf5_bd3lm.patch(ckpt)
    rem, nat = _native(ckpt, impl="remote"), _native(ckpt)
    assert rem.remote and (rem.mask_id, rem.eos_id, rem.block_size) == (MASK, EOS, 4)
    xt, x0 = _pair(T=64, B=1, seed=3)
    am = torch.ones(2, 24, dtype=torch.bool)
    am[0, :4] = False
    with torch.no_grad():
        assert torch.equal(rem.logits(x0[:, :21]), nat.logits(x0[:, :21]))
        assert torch.equal(rem.logits_denoise(xt, x0), nat.logits_denoise(xt, x0))
        assert torch.equal(rem.logits_denoise(xt[:, :32], x0[:, :32]), nat.logits_denoise(xt[:, :32], x0[:, :32]))
        xx, tt = torch.cat([x0[:, :24], x0[:, 10:34]]), torch.cat([xt[:, :24], xt[:, 10:34]])
        assert torch.equal(rem.logits(xx, am)[am], nat.logits(xx, am)[am])
        # right-padded to model_length (other matmul shapes): equal up to float32 rounding
        assert (rem.logits_denoise(tt, xx, am)[am] - nat.logits_denoise(tt, xx, am)[am]).abs().max() < 1e-4
        with pytest.raises(HarnessError, match="multiple of block_size"):
            rem.logits_denoise(xt[:, :30], x0[:, :30])
        with pytest.raises(HarnessError, match="impl: native"):
            rem.logits_pattern(x0, torch.ones(1, 1, 64, 64, dtype=torch.bool), torch.arange(64)[None])
