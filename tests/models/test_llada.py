"""Tests of the `llada` adapter on its tiny random preset (native module; CPU, float32)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from harness.registry import MODELS
from harness.types import HarnessError
from tests.models import _diffusion_common as common

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llada():
    return MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()


def test_import_stays_cheap():
    code = "import harness.models.llada, harness.models.dream, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_protocol_and_mask_id(llada):
    common.check_protocol(llada, mask_id=127, shift=False, vocab=128)
    assert (llada.eos_id, llada.pad_id) == (126, 125)
    assert (llada.arch.n_layers, llada.arch.d_model) == (2, 64)
    embed = llada.module.model.transformer.wte.weight.numel()
    assert llada.arch.n_params == sum(p.numel() for p in llada.module.parameters()) - embed


def test_llada_8b_preset_shape_without_building():
    spec = MODELS.build("llada", {"preset": "llada-8b"})
    cfg = spec.resolved_config()
    assert (cfg["n_layers"], cfg["d_model"], cfg["mlp_hidden_size"], cfg["vocab_size"], cfg["n_heads"]) == \
        (32, 4096, 12288, 126464, 32)
    assert cfg["mask_token_id"] == 126336


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = MODELS.build("llada", {"preset": "tiny", "seed": 5, "device": "cpu"}).load()
    b = MODELS.build("llada", {"preset": "tiny", "seed": 5, "device": "cpu"}).load()
    c = MODELS.build("llada", {"preset": "tiny", "seed": 6, "device": "cpu"}).load()
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.module.model.transformer.blocks[0].q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_config_overrides_and_errors():
    d = MODELS.build("llada", {"preset": "tiny", "config": {"n_layers": 1}, "device": "cpu"}).load()
    assert d.arch.n_layers == 1
    with pytest.raises(HarnessError, match="exactly one of path"):
        MODELS.build("llada", {})
    with pytest.raises(HarnessError, match="unknown preset 'huge'.*tiny, llada-8b"):
        MODELS.build("llada", {"preset": "huge"})
    with pytest.raises(HarnessError, match="attn"):
        MODELS.build("llada", {"preset": "tiny", "attn": "flash"})


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="not an existing directory"):
        MODELS.build("llada", {"path": str(tmp_path / "nope")}).load()


def test_padding_invariance(llada):
    common.check_padding_invariance(llada)


def test_eager_and_sdpa_agree():
    sdpa = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    eager = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32", "attn": "eager"}).load()
    x = torch.randint(0, 128, (2, 9))
    m = torch.ones(2, 9, dtype=torch.bool)
    m[1, :4] = False
    with torch.no_grad():
        torch.testing.assert_close(sdpa.logits(x, m), eager.logits(x, m), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["prefix", "dual"])
def test_kv_cache_exact_for_one_block_step(llada, layout):
    """Right after the cache-building pass nothing has changed, so a cached pass over the block
    (prefix: block + suffix) must give the full pass's logits for those columns."""
    from harness.models.standins.standin_layers import KVCache  # the native models' cache type too

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 96, (2, 12), generator=g)
    attn = torch.ones(2, 12, dtype=torch.bool)
    attn[0, :2] = False
    lo, hi = 6, 9
    keep = torch.arange(lo) if layout == "prefix" else torch.cat([torch.arange(lo), torch.arange(hi, 12)])
    cols = torch.arange(lo, 12 if layout == "prefix" else hi)
    with torch.no_grad():
        full = llada.logits(x, attn)
        built, cache = llada.logits_build_cache(x, attn, keep=keep)
        cached = llada.logits_cached(x[:, cols], cache, positions=cols, attention_mask=attn)
    assert isinstance(cache, KVCache) and cache.length == keep.numel()
    torch.testing.assert_close(built, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached, full[:, cols], atol=1e-5, rtol=1e-4)
    # take(rows) keeps the chosen rows' keys
    assert cache.take(torch.tensor([1])).keys[0].shape[0] == 1


def test_cached_sampler_with_one_step_blocks_matches_uncached(llada):
    """One step per block: a dual-cache decode is exact, so it must equal the uncached decode."""
    from harness.registry import SAMPLERS

    prompt, pmask, _ = common.batch(llada)
    outs = []
    for cache in ("none", "prefix", "dual"):
        s = SAMPLERS.build("low_confidence", {"steps": 2, "block_length": 4, "cache": cache})
        outs.append(s(llada, prompt, prompt_mask=pmask, generator=torch.Generator().manual_seed(0), gen_length=8))
    assert torch.equal(outs[0].tokens, outs[1].tokens) and torch.equal(outs[0].tokens, outs[2].tokens)


def test_end_to_end_through_meter(llada):
    common.check_end_to_end(llada)


@pytest.mark.parametrize("impl", ["native", "remote"])
def test_path_route_loads_saved_checkpoint(llada, tmp_path, impl):
    """A saved checkpoint (official config.json keys + safetensors, stand-in code beside it) loads
    natively by name, or as remote code with impl: remote; both give the preset's logits."""
    from harness.models._hf_common import CachedDiffusionDenoiser, save_pretrained_dir
    from harness.models.native.llada import LLaDA as NativeLLaDA

    path = save_pretrained_dir(llada.module, llada.tokenizer.hf, tmp_path / "llada", "llada_standin")
    spec = MODELS.build("llada", {"path": str(path), "device": "cpu", "dtype": "float32", "impl": impl})
    d = spec.load()
    if impl == "remote":
        assert type(d.module).__module__.startswith("transformers_modules")  # loaded as remote code
    else:
        assert isinstance(d.module, NativeLLaDA)
    assert isinstance(d, CachedDiffusionDenoiser)
    assert (d.mask_id, d.eos_id, d.pad_id) == (127, 126, 125)
    assert d.tokenizer.apply_chat_template("1+1=") == "user: 1+1=\nassistant: "
    x = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        assert torch.equal(d.logits(x), llada.logits(x))
    prov = spec.provenance()
    assert prov["path"] == str(path) and prov["weights_files"] == ["model.safetensors"]
    assert len(prov["weights_sha256"]) == 64


def test_impl_remote_preset_builds_the_stand_in():
    from harness.models.native.llada import LLaDA as NativeLLaDA

    remote = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "impl": "remote"}).load()
    assert type(remote.module).__name__ == "LLaDAModelLM" and not isinstance(remote.module, NativeLLaDA)
    assert remote.mask_id == 127
    with pytest.raises(HarnessError, match="impl: expected one of 'native', 'remote', got 'hf'"):
        MODELS.build("llada", {"preset": "tiny", "impl": "hf"})


def test_preset_provenance_records_config_and_seed():
    spec = MODELS.build("llada", {"preset": "tiny", "seed": 2, "config": {"n_layers": 1}})
    prov = spec.provenance()
    assert prov["preset"] == "tiny" and prov["seed"] == 2 and prov["config"]["n_layers"] == 1
    assert dataclasses.asdict(spec)["config"] == {"n_layers": 1}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_logits_match_cpu_float32():
    cpu = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    gpu = MODELS.build("llada", {"preset": "tiny", "device": "cuda", "dtype": "bfloat16"}).load()
    x = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        a = cpu.logits(x)
        b = gpu.logits(x.cuda()).float().cpu()
    # bf16 keeps 8 bits of mantissa: logits of a 2-layer model agree to about 1e-2 relative
    torch.testing.assert_close(b, a, atol=3e-2, rtol=3e-2)
