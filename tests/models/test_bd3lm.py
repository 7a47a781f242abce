"""The `bd3lm` model without the reference code: presets, config checks, the explicit-pattern forward."""
from __future__ import annotations

import pytest
import torch

from harness.models.block_attention import decode_mask, positions
from harness.registry import MODELS
from harness.types import HarnessError


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return MODELS.build("bd3lm", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()


def test_tiny_preset_is_a_block_model(tiny):
    assert tiny.block_size == 4 and tiny.mask_id == 127 and tiny.eos_id == 126 and tiny.pad_id == 127
    x = torch.tensor([tiny.tokenizer.encode("12+34=46")])
    out = tiny.logits(x)
    assert out.shape == (1, 8, 128) and torch.isfinite(out).all()
    again = MODELS.build("bd3lm", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load().logits(x)
    assert torch.equal(out, again)  # a seeded init
    assert out[..., 127].max() < -1e5  # MASK never predicted (subs)


def test_pattern_forward_equals_the_plain_forward_on_its_mask(tiny):
    x = torch.tensor([tiny.tokenizer.encode("1+2=3456789")])
    B, T = x.shape
    allowed = decode_mask(None, B, T, tiny.block_size)
    got = tiny.logits_pattern(x, allowed, positions(None, B, T))
    assert torch.equal(got, tiny.logits(x))


@pytest.mark.parametrize("key,value", [("time_conditioning", True), ("cross_attn", False), ("causal", True)])
def test_unsupported_config_is_refused_naming_the_key(key, value):
    from harness.models.native.bd3lm import BD3LMConfig

    cfg = {"model_type": "bd3lm", "block_size": 4, "vocab_size": 128, "model_length": 64, "hidden_dim": 64,
           "cond_dim": 32, "n_blocks": 2, "n_heads": 4, key: value}
    with pytest.raises(HarnessError, match=key):
        BD3LMConfig.from_json(cfg, "x/config.json")
    assert BD3LMConfig.from_json({**cfg, key: not value}, "x/config.json").block_size == 4


def test_too_long_a_sequence_is_refused(tiny):
    with pytest.raises(HarnessError, match="model_length"):
        tiny.logits(torch.zeros(1, 129, dtype=torch.long))


def test_compile_and_remote_presets_are_refused():
    with pytest.raises(HarnessError, match="compile"):
        MODELS.build("bd3lm", {"preset": "tiny", "compile": True})
    with pytest.raises(HarnessError, match="checkpoint path"):
        MODELS.build("bd3lm", {"preset": "tiny", "impl": "remote"})


def test_the_cache_of_finished_blocks_gives_the_plain_forward(tiny):
    """Prefill the first two blocks, run block 2 against the cache, store it, run block 3: the
    logits equal the plain forward's on those columns (float32 rounding: other matmul shapes), and a
    left-padded row's cached passes give what it gives alone."""
    tok = tiny.tokenizer
    x = torch.tensor([tok.encode("0123456789abcdef"), tok.encode("xyzw9876543210ab")])  # 4 blocks
    am = torch.ones_like(x, dtype=torch.bool)
    x[1, :4] = tiny.pad_id
    am[1, :4] = False  # row 1 left-padded by a block: the cache boundary is a block boundary of both rows
    with torch.no_grad():
        full = tiny.logits(x, am)
        _, cache = tiny.logits_build_cache(x[:, :8], am, keep=torch.arange(8))
        assert cache.length == 8
        mid, cache2 = tiny.logits_cached(x[:, 8:12], cache, positions=torch.arange(8, 12), attention_mask=am,
                                         store=True)
        last = tiny.logits_cached(x[:, 12:], cache2, positions=torch.arange(12, 16), attention_mask=am)
        _, direct = tiny.logits_build_cache(x[:, :12], am, keep=torch.arange(12))
        alone = tiny.logits(x[1:, 4:])
    assert (mid[0] - full[0, 8:12]).abs().max() < 1e-4 and (last[0] - full[0, 12:]).abs().max() < 1e-4
    assert (mid[1] - alone[0, 4:8]).abs().max() < 1e-4 and (last[1] - alone[0, 8:]).abs().max() < 1e-4
    for a, b in zip(cache2.keys + cache2.values, direct.keys + direct.values):
        assert (a[0] - b[0]).abs().max() < 1e-4 and (a[1, :, 4:] - b[1, :, 4:]).abs().max() < 1e-4
    with pytest.raises(HarnessError, match="right after the cache"):
        tiny.logits_cached(x[:, 12:], cache, positions=torch.arange(12, 16), attention_mask=am)
    with pytest.raises(HarnessError, match="inside a block"):  # [0, 6) holds 6 and 2 real tokens
        tiny.logits_build_cache(x[:, :6], am, keep=torch.arange(6))
