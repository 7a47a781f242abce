"""Tests of the `dream` adapter on its tiny random preset (native module; CPU, float32)."""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter
from harness.estimators._common import completion_logprobs
from harness.registry import MODELS, SAMPLERS
from tests.models import _diffusion_common as common

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def dream():
    return MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()


def test_protocol_mask_id_and_shift(dream):
    common.check_protocol(dream, mask_id=127, shift=True, vocab=128)
    assert dream.eos_id == dream.pad_id == 126
    assert (dream.arch.n_layers, dream.arch.d_model) == (2, 64)


def test_dream_7b_preset_uses_dreams_mask_id():
    cfg = MODELS.build("dream", {"preset": "dream-7b"}).resolved_config()
    assert cfg["mask_token_id"] == 151666 and cfg["vocab_size"] == 152064 and cfg["num_hidden_layers"] == 28


def test_estimators_read_position_k_at_k_minus_1(dream):
    """completion_logprobs on Dream equals log-softmax(logits)[k-1] gathered at the token of k."""
    prompt, pmask, comp = common.batch(dream)
    B, P = prompt.shape
    L = comp.shape[1]
    noised = comp.clone()
    noised[:, 1::2] = dream.mask_id  # mask every other completion position
    with torch.no_grad():
        got = completion_logprobs(dream, prompt, pmask, comp, noised[:, None], max_tokens=10_000)[:, 0]  # [B, L]
        x = torch.cat([prompt, noised], 1)
        attn = torch.cat([pmask, torch.ones_like(comp, dtype=torch.bool)], 1)
        logp = dream.logits(x, attn).log_softmax(-1)  # [B, T, V]
    manual = torch.stack([logp[b, P + k - 1, comp[b, k]] for b in range(B) for k in range(L)]).view(B, L)
    unshifted = torch.stack([logp[b, P + k, comp[b, k]] for b in range(B) for k in range(L)]).view(B, L)
    torch.testing.assert_close(got, manual)
    assert not torch.allclose(got, unshifted)  # the alignment matters: reading k at k would differ


def test_padding_is_passed_as_dream_expects(dream):
    """Padding goes in as a boolean [B, 1, T, T] mask with position ids counting real tokens."""
    kw = dream._kwargs(torch.tensor([[False, True, True], [True, True, True]]))
    assert kw["attention_mask"].shape == (2, 1, 3, 3) and kw["attention_mask"].dtype == torch.bool
    assert kw["position_ids"].tolist() == [[0, 0, 1], [0, 1, 2]]
    common.check_padding_invariance(dream)


def test_end_to_end_through_meter(dream):
    common.check_end_to_end(dream)


@pytest.mark.parametrize("layout", ["prefix", "dual"])
def test_kv_cache_exact_on_an_unchanged_canvas(dream, layout):
    """Shifted layouts (block [lo, hi) read at [lo - 1, hi - 1)): right after the cache-building
    pass a cached pass over the query columns gives the full pass's logits, padding included (a
    4-D mask plus position ids, sliced to the queried columns)."""
    from harness.models.standins.standin_layers import KVCache

    x = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(2, 12, dtype=torch.bool)
    attn[0, :2] = False  # a left-padded row
    lo, hi = 6, 9
    keep = torch.arange(lo - 1) if layout == "prefix" else torch.cat([torch.arange(lo - 1), torch.arange(hi, 12)])
    cols = torch.arange(lo - 1, 12 if layout == "prefix" else hi)
    with torch.no_grad():
        full = dream.logits(x, attn)
        built, cache = dream.logits_build_cache(x, attn, keep=keep)
        cached = dream.logits_cached(x[:, cols], cache, positions=cols, attention_mask=attn)
    assert isinstance(cache, KVCache) and cache.length == keep.numel()
    assert torch.equal(built, full)  # the cache-building pass is the ordinary full pass
    torch.testing.assert_close(cached, full[:, cols], atol=1e-5, rtol=1e-4)
    assert cache.take(torch.tensor([1])).keys[0].shape[0] == 1


@pytest.mark.parametrize("name, params", [("low_confidence", {"steps": 2}), ("threshold", {"max_steps": 2})])
def test_cached_sampler_with_one_step_blocks_matches_uncached(dream, name, params):
    """One step per block: a cache is exact, so prefix and dual decodes equal the uncached one."""
    prompt, pmask, _ = common.batch(dream)
    outs = []
    for cache in ("none", "prefix", "dual"):
        s = SAMPLERS.build(name, dict(params, block_length=4, cache=cache))
        outs.append(s(dream, prompt, prompt_mask=pmask, generator=torch.Generator().manual_seed(0), gen_length=8))
    for o in outs[1:]:
        assert torch.equal(outs[0].tokens, o.tokens) and torch.equal(outs[0].commit_step, o.commit_step)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("name, params", [("low_confidence", {}), ("threshold", {"tau": 0.1})])
def test_one_layer_dream_cache_is_exact_over_several_steps(cache, name, params):
    """A one-layer model's cache is exact, so cached passes inside a block (padded rows: the 4-D
    mask and position ids sliced to the queried columns) decode as the uncached loop does."""
    d = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32",
                               "config": {"num_hidden_layers": 1}}).load()
    prompt, pmask, _ = common.batch(d)
    outs = [SAMPLERS.build(name, dict(params, block_length=4, cache=c))(
        d, prompt, prompt_mask=pmask, generator=torch.Generator().manual_seed(0), gen_length=8)
        for c in ("none", cache)]
    assert outs[0].steps > 2  # several steps per block: cached passes really happened
    assert torch.equal(outs[0].tokens, outs[1].tokens) and torch.equal(outs[0].commit_step, outs[1].commit_step)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_meter_counts_full_and_cached_passes(dream, cache):
    """A full pass per block start, cached passes after it over [lo - 1, T) or [lo - 1, hi)."""
    prompt, pmask, _ = common.batch(dream)
    (B, P), L, block, steps = prompt.shape, 8, 4, 8
    meter = Meter(dream)
    SAMPLERS.build("low_confidence", {"steps": steps, "block_length": block, "cache": cache})(
        meter, prompt, prompt_mask=pmask, generator=None, gen_length=L)
    T, n_blocks, per_block = P + L, L // block, steps // (L // block)
    c = meter.cost
    assert c.nfe_full == B * n_blocks and c.nfe_cached == B * n_blocks * (per_block - 1)
    q = [T - lo + 1 if cache == "prefix" else block + 1 for lo in range(P, T, block)]  # query columns
    assert c.tokens == B * n_blocks * T + sum(B * (per_block - 1) * n for n in q)


def test_dream_without_cache_methods_refuses_a_cache(dream, monkeypatch):
    """A real Dream (remote code without forward_with_cache) loads as a plain denoiser, and a
    cached sampler says it needs a model with KV-cache support."""
    from harness.models._hf_common import CachedDiffusionDenoiser
    from harness.models.dream import Dream
    from harness.types import HarnessError

    class NoCache(torch.nn.Module):  # the stand-in without its cache methods, as the remote code is
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name.startswith("forward_"):
                    raise
                return getattr(self.inner, name)

    monkeypatch.setattr(Dream, "build_module", lambda self: (NoCache(dream.module), dream.tokenizer.hf))
    d = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    assert not isinstance(d, CachedDiffusionDenoiser)
    prompt, pmask, _ = common.batch(d)
    with pytest.raises(HarnessError, match="KV-cache support"):
        SAMPLERS.build("low_confidence", {"cache": "dual"})(d, prompt, prompt_mask=pmask, generator=None, gen_length=8)


@pytest.mark.parametrize("impl", ["native", "remote"])
def test_path_route_loads_saved_checkpoint(dream, tmp_path, impl):
    from harness.models._hf_common import CachedDiffusionDenoiser, save_pretrained_dir
    from harness.models.native.dream import Dream as NativeDream

    path = save_pretrained_dir(dream.module, dream.tokenizer.hf, tmp_path / "dream", "dream_standin")
    d = MODELS.build("dream", {"path": str(path), "device": "cpu", "dtype": "float32", "impl": impl}).load()
    if impl == "remote":
        assert type(d.module).__module__.startswith("transformers_modules")
    else:
        assert isinstance(d.module, NativeDream)
    assert isinstance(d, CachedDiffusionDenoiser)  # the stand-in's cache travels with its remote code
    assert (d.mask_id, d.eos_id, d.shift_logits) == (127, 126, True)
    x = torch.randint(0, 128, (2, 8))
    attn = torch.ones(2, 8, dtype=torch.bool)
    attn[0, :3] = False
    with torch.no_grad():
        got, want = d.logits(x, attn), dream.logits(x, attn)
    if impl == "native":
        assert torch.equal(got, want)
    else:  # the stand-in masks padded keys, the native code drops them: the real positions agree
        torch.testing.assert_close(got[attn], want[attn], atol=1e-5, rtol=1e-5)  # up to rounding


def test_bfloat16_dtype_on_cpu_runs():
    d = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "bfloat16"}).load()
    with torch.no_grad():
        out = d.logits(torch.randint(0, 128, (1, 5)))
    assert out.dtype == torch.bfloat16 and next(d.module.parameters()).dtype == torch.bfloat16
