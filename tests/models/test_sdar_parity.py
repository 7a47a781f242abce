"""The native SDAR/TraDo model and block-diffusion decoding against the public code
(../shared/fixtures/real-code/block, see its README).

References: Gen-Verse/dLLM-RL at 10b4fd1 (`models/sdar/modeling_sdar.py`, the TraDo/SDAR model
file; `generate.py`, `block_diffusion_generate`) and JetAstra/SDAR at c2041a8
(`training/model/SDAR-4B-Chat/modeling_sdar.py`, `block_diff_mask`; `generate.py`,
`block_diffusion_generate`). The checkpoints are the fixture's build_sdar.py output (real config
keys and special ids, full 151936 vocabulary, tiny dims; the same weights for both codes), built
once per session; the public files load under the pinned transformers 5 through the fixture's
tf5_sdar.py (flash-attn is a pure-torch shim there: SDAR's own file runs its cached passes through
the shim's flash_attn_func). Float32 on the CPU, tolerance 0, unless a line says otherwise.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.budget import Meter
from harness.registry import MODELS, SAMPLERS
from tests.models import _real_code as rc

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # two 78 MB checkpoints; every pass has a 151936-entry vocabulary

MASK, EOS, IM_END = 151669, 151643, 151645
CODES = ("dllm_rl", "sdar_repo")
GENERATE = {"dllm_rl": "dllm_rl/generate.py", "sdar_repo": "sdar_repo/generate.py"}


def block_dir() -> Path:
    d = rc.real_code_dir()
    if d is None or not (d / "block" / "sdar" / "build_sdar.py").is_file():
        pytest.skip("../shared/fixtures/real-code/block (the public SDAR/TraDo code) is absent; set "
                    "DLM_HARNESS_REAL_CODE")
    return d / "block" / "sdar"


def tf5():
    return rc._module("tf5_sdar", block_dir() / "tf5_sdar.py")


def generate_module(code: str):
    return rc._module(f"sdar_generate_{code}", block_dir() / GENERATE[code])


@pytest.fixture(scope="session")
def sdar_ckpts(tmp_path_factory) -> dict:
    """build_sdar.py's checkpoint with each code's modeling files (identical weights and config)."""
    src = block_dir()
    out = {}
    for code in CODES:
        path = tmp_path_factory.mktemp("sdar") / code
        res = subprocess.run([sys.executable, str(src / "build_sdar.py"), str(path), "--code", code],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"build_sdar.py failed:\n{res.stderr[-2000:]}")
        out[code] = path
    return out


@pytest.fixture(scope="module")
def real(sdar_ckpts):
    """code -> (the public SDARForCausalLM, its module) in float32."""
    return {code: tf5().load(sdar_ckpts[code], code) for code in CODES}


def native(path, dtype="float32", **kw):
    return MODELS.build("sdar", {"path": str(path), "device": "cpu", "dtype": dtype, **kw}).load()


def block_mask(T: int, block: int) -> torch.Tensor:
    """generate.py's block_diffusion_attention_mask (blocks from position 0), [1, 1, T, T] 0/1."""
    n = -(-T // block)
    m = torch.tril(torch.ones(n, n)).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return m[None, None, :T, :T]


def canvas(B: int = 2, T: int = 23, seed: int = 0) -> torch.Tensor:
    x = torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(seed))
    x[:, 9:15] = MASK
    x[:, 3] = EOS
    return x


def real_mask(code, m):
    # dLLM-RL's file turns a 0/1 float mask additive; SDAR's own takes it as bool (a 3-D or 4-D mask)
    return m if code == "dllm_rl" else m.bool()


# -- logits -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("code", CODES)
def test_block_causal_logits_equal_the_public_code(code, dtype, sdar_ckpts):
    torch_dtype = getattr(torch, dtype)
    ref, _ = tf5().load(sdar_ckpts[code], code, dtype=torch_dtype)
    nat = native(sdar_ckpts[code], dtype)
    assert nat.block_size == 4 and nat.mask_id == MASK  # config.json's block_size and mask_token_id
    x = canvas()
    T = x.shape[1]
    with torch.no_grad():
        want = ref(x, attention_mask=real_mask(code, block_mask(T, 4)), position_ids=torch.arange(T)[None]).logits
        got = nat.logits(x)
    assert got.dtype == want.dtype == torch_dtype and got.shape == (2, T, 151936)
    assert torch.equal(got, want), (got.float() - want.float()).abs().max()


@pytest.mark.parametrize("code", CODES)
def test_denoise_pass_equals_the_public_code_on_its_block_diff_mask(code, real, sdar_ckpts):
    """logits_denoise = the public file's forward over [x_t ; x_0] under SDAR's own training mask
    (`block_diff_mask`, SDAR modeling_sdar.py), the same position ids in both halves."""
    ref, module = real[code]
    _, sdar_mod = real["sdar_repo"]
    nat = native(sdar_ckpts[code])
    x0 = canvas(seed=1)
    xt = x0.clone()
    xt[:, 2:7] = MASK
    xt[:, 13:20] = MASK
    T = x0.shape[1]
    idx = torch.arange(2 * T)
    m = sdar_mod.block_diff_mask(None, None, idx[:, None], idx[None, :], block_size=4, n=T)[None, None]
    with torch.no_grad():
        want = ref(torch.cat([xt, x0], 1), attention_mask=real_mask(code, m.float()),
                   position_ids=torch.cat([torch.arange(T)] * 2)[None]).logits[:, :T]
        got = nat.logits_denoise(xt, x0)
    assert torch.equal(got, want), (got - want).abs().max()
    with torch.no_grad():  # and it is not the plain pass of x_t (block b sees the CLEAN earlier blocks)
        assert not torch.allclose(got, nat.logits(xt), atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cache_of_finished_blocks_equals_the_public_store_kv_passes(dtype, sdar_ckpts):
    """Prefill (store_kv) + a cached pass of the next block: the native cache and the public file's
    DynamicCache give the same logits, and those equal an uncached block-causal pass."""
    from transformers.cache_utils import DynamicCache

    torch_dtype = getattr(torch, dtype)
    ref, _ = tf5().load(sdar_ckpts["dllm_rl"], "dllm_rl", dtype=torch_dtype)
    nat = native(sdar_ckpts["dllm_rl"], dtype)
    x = canvas(B=1, T=16, seed=2)
    bm = block_mask(16, 4)
    with torch.no_grad():
        pkv = DynamicCache()
        ref(x[:, :8], attention_mask=bm[..., :8, :8], position_ids=torch.arange(8)[None], past_key_values=pkv,
            use_cache=True, store_kv=True)
        want = ref(x[:, 8:12], attention_mask=bm[..., 8:12, :12], position_ids=torch.arange(8, 12)[None],
                   past_key_values=pkv, use_cache=True, store_kv=False).logits
        _, cache = nat.logits_build_cache(x[:, :8], None, keep=torch.arange(8))
        got = nat.logits_cached(x[:, 8:12], cache, positions=torch.arange(8, 12))
        got_s, cache2 = nat.logits_cached(x[:, 8:12], cache, positions=torch.arange(8, 12), store=True)
        nxt = nat.logits_cached(x[:, 12:16], cache2, positions=torch.arange(12, 16))
        full = nat.logits(x)
    assert torch.equal(got, want) and torch.equal(got_s, got)
    assert cache2.length == 12
    # an uncached pass sums over the keys in other groupings: measured 1.4e-5 (float32) and 0.0625
    # (bf16: one ulp of logits in [8, 16); |logits| <= 25) on these weights
    tol = 1e-4 if dtype == "float32" else 0.125
    assert (got.float() - full[:, 8:12].float()).abs().max() <= tol
    assert (nxt.float() - full[:, 12:16].float()).abs().max() <= tol


def test_left_padded_batch_equals_single_rows(sdar_ckpts):
    nat = native(sdar_ckpts["dllm_rl"])
    x = canvas(B=3, T=14, seed=3)
    am = torch.ones(3, 14, dtype=torch.long)
    am[1, :5] = 0
    am[2, :3] = 0
    x0 = canvas(B=3, T=14, seed=4)
    with torch.no_grad():
        both, dual = nat.logits(x, am), nat.logits_denoise(x, x0, am)
        for r, n in ((0, 0), (1, 5), (2, 3)):
            assert torch.equal(both[r, n:], nat.logits(x[r:r + 1, n:])[0])
            assert torch.equal(dual[r, n:], nat.logits_denoise(x[r:r + 1, n:], x0[r:r + 1, n:])[0])


def test_remote_impl_passes_the_block_mask(sdar_ckpts):
    """impl: remote runs the checkpoint's own file (patched by the fixture to load under
    transformers 5) with the block mask and positions the harness passes: the native numbers."""
    path = sdar_ckpts["dllm_rl"]
    tf5().patch(path, "dllm_rl")
    remote = native(path, impl="remote")
    nat = native(path)
    x = canvas()
    am = torch.ones_like(x)
    am[1, :4] = 0
    with torch.no_grad():
        assert torch.equal(remote.logits(x), nat.logits(x))
        x0 = canvas(seed=5)
        assert torch.equal(remote.logits_denoise(x, x0), nat.logits_denoise(x, x0))
        # padded rows: the public file sums over the masked pad keys too (rounding only)
        assert (remote.logits(x, am)[1, 4:] - nat.logits(x[1:, 4:])[0]).abs().max() < 1e-4
        # an explicit pattern (TraceRL's [prompt ; clean ; noisy] rows, a left-padded prompt): the same logits
        from harness.algorithms.trace_rl import training_pattern

        ids = torch.cat([x[:, :7], x[:, 7:15], torch.full((2, 8), MASK)], 1)
        ids[1, :2] = EOS  # left pads (pad = EOS)
        allowed, pos = training_pattern(ids, 7, 8, 4, EOS)
        seen = allowed[:, 0].any(-1)
        assert torch.equal(remote.logits_pattern(ids, allowed, pos)[seen], nat.logits_pattern(ids, allowed, pos)[seen])
    assert remote.stop_ids == nat.stop_ids == (EOS, IM_END) and remote.block_size == 4


# -- decoding ------------------------------------------------------------------------------------------
PROMPTS = ["12+7=", "Q: 3*4?\nA: abc"]  # 5 and 14 characters: the prompt ends inside a block


def reference_decode(code, model, ids, seed, **kw):
    """block_diffusion_generate on the global RNG seeded with `seed`; -> (completion, forward passes)."""
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        torch.manual_seed(seed)
        out = generate_module(code).block_diffusion_generate(model, {"input_ids": ids}, MASK,
                                                             stopping_criteria_idx=[IM_END, EOS], **kw)
    finally:
        hook.remove()
    return out[0, ids.shape[1]:], len(calls)


def harness_decode(den, ids, seed, *, strategy, gen_length, block_length, denoising_steps, confidence_threshold,
                   temperature=1.0, top_k=0, top_p=1.0, cache="prefix"):
    common = dict(cache=cache, temperature=temperature, top_k=top_k, top_p=top_p)
    if strategy == "low_confidence_static":  # steps are per generation: denoising_steps per block
        s = SAMPLERS.build("low_confidence", {"steps": -(-gen_length // block_length) * denoising_steps, **common})
    else:
        s = SAMPLERS.build("threshold", {"tau": confidence_threshold, **common})
    meter = Meter(den)
    gen = s(meter, ids, generator=[torch.Generator().manual_seed(seed)], gen_length=gen_length)
    return gen, meter.cost


def agree(ref_tokens, gen) -> bool:
    """Token-identical up to the first stop id (the harness pads after it with EOS; the reference
    leaves the blocks after a stop as MASK), and the same stop position."""
    n = int(gen.gen_len[0])
    stop = torch.isin(ref_tokens, torch.tensor([IM_END, EOS]))
    ref_n = int(stop.nonzero()[0]) + 1 if stop.any() else ref_tokens.numel()
    return ref_n == n and torch.equal(ref_tokens[:n], gen.tokens[0, :n])


CONFIG_DEFAULTS = dict(gen_length=16, block_length=4, denoising_steps=4)  # dLLM-RL/SDAR configs: 4, 4, 0.9


@pytest.mark.parametrize("strategy, threshold", [("low_confidence_static", 0.9), ("low_confidence_dynamic", 0.9)])
@pytest.mark.parametrize("code", CODES)
def test_block_decoding_is_token_identical_with_equal_nfe_at_the_config_defaults(code, strategy, threshold, real,
                                                                                 sdar_ckpts):
    ref, _ = real[code]
    den = native(sdar_ckpts[code])
    outputs = set()
    for seed, prompt in enumerate(PROMPTS):
        ids = torch.tensor([den.tokenizer.encode(prompt)])
        want, passes = reference_decode(code, ref, ids, seed, remasking_strategy=strategy,
                                        confidence_threshold=threshold, **CONFIG_DEFAULTS)
        gen, cost = harness_decode(den, ids, seed, strategy=strategy, confidence_threshold=threshold,
                                   **CONFIG_DEFAULTS)
        assert agree(want, gen), (want, gen.tokens)
        # prefill (prompt >= one block) + denoising steps + one store pass per block, cached passes as cached
        assert cost.nfe == passes and cost.nfe_full == int(ids.shape[1] >= 4)
        assert gen.tokens.shape[1] == -(-(ids.shape[1] + 16) // 4) * 4 - ids.shape[1]  # the reference's length
        outputs.add(tuple(want.tolist()))
    assert len(outputs) == len(PROMPTS)


def test_block_decoding_is_token_identical_at_the_signature_defaults(real, sdar_ckpts):
    """block_diffusion_generate's own defaults (gen_length 128, block_length 8, 8 steps, temperature
    1, dynamic, threshold 0.85) on a block-4 checkpoint decoded with block 8 (the model's
    `block_size` field, as the function's block_length argument); another seed gives other tokens."""
    code = "dllm_rl"
    ref, _ = real[code]
    den = native(sdar_ckpts[code], block_size=8)
    ids = torch.tensor([den.tokenizer.encode("Q: 3*4?\nA: abc")])
    defaults = dict(gen_length=128, block_length=8, denoising_steps=8)
    want, passes = reference_decode(code, ref, ids, 0, **defaults)  # remasking/threshold: the signature's
    gen, cost = harness_decode(den, ids, 0, strategy="low_confidence_dynamic", confidence_threshold=0.85, **defaults)
    assert agree(want, gen) and cost.nfe == passes
    other, _ = harness_decode(den, ids, 1, strategy="low_confidence_dynamic", confidence_threshold=0.85, **defaults)
    assert not torch.equal(other.tokens, gen.tokens)


@pytest.mark.parametrize("sampling", [dict(temperature=0.6, top_k=20, top_p=0.95), dict(top_k=1)],
                         ids=["generation_config", "greedy"])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_block_8_decoding_with_generation_config_and_greedy_sampling(strategy, sampling, real, sdar_ckpts):
    """block 8 / 8 steps on SDAR's own generate.py with the checkpoints' generation_config sampling
    (temperature 0.6, top_k 20, top_p 0.95: many confidences tie at 1.0) and greedy top_k 1 (all tie:
    static commits in torch.topk's order, dynamic the whole block at once); cached == uncached."""
    code = "sdar_repo"
    ref, _ = real[code]
    den = native(sdar_ckpts[code], block_size=8)
    ids = torch.tensor([den.tokenizer.encode("12+7=")])
    kw = dict(gen_length=24, block_length=8, denoising_steps=8, **sampling)
    want, passes = reference_decode(code, ref, ids, 3, remasking_strategy=strategy, confidence_threshold=0.9, **kw)
    gen, cost = harness_decode(den, ids, 3, strategy=strategy, confidence_threshold=0.9, **kw)
    assert agree(want, gen) and cost.nfe == passes
    plain, plain_cost = harness_decode(den, ids, 3, strategy=strategy, confidence_threshold=0.9, cache="none", **kw)
    assert torch.equal(plain.tokens, gen.tokens) and plain_cost.nfe_cached == 0
    P, n = ids.shape[1], int(gen.gen_len[0])
    blocks = -(-(P + n) // 8) - P // 8  # blocks decoded up to the one holding the stop id
    assert cost.nfe - plain_cost.nfe == blocks + int(P >= 8)  # the store passes and the prefill


@pytest.mark.parametrize("prompt", ["Q: 3*4?\nA: abcdefg", "12+7=12+7=12+7=1"])  # 18 and 16 tokens
def test_static_decoding_with_two_tokens_per_step(prompt, real, sdar_ckpts):
    """block 8 with 4 denoising steps (num_transfer 2 per step) on dLLM-RL's generate.py.

    (The dynamic strategy is not compared at fewer steps than the block: with num_transfer 2 and one
    mask left, the reference's torch.topk picks an already committed position and overwrites it
    with a fresh sample -- it did in every run tried, 2-4 times per 24 tokens; the harness's
    `threshold` with `floor: schedule` caps the count at the masks left.)"""
    code = "dllm_rl"
    ref, _ = real[code]
    den = native(sdar_ckpts[code], block_size=8)
    ids = torch.tensor([den.tokenizer.encode(prompt)])
    kw = dict(gen_length=24, block_length=8, denoising_steps=4)
    for seed in (0, 1):
        want, passes = reference_decode(code, ref, ids, seed, remasking_strategy="low_confidence_static", **kw)
        gen, cost = harness_decode(den, ids, seed, strategy="low_confidence_static", confidence_threshold=0.9, **kw)
        assert agree(want, gen) and cost.nfe == passes


@pytest.mark.parametrize("code", CODES)
def test_remote_impl_decodes_with_its_own_cache_as_the_reference(code, real, sdar_ckpts):
    """impl: remote with cache: prefix drives the file's own DynamicCache (store_kv passes) as
    block_diffusion_generate does: the reference's tokens and pass count."""
    path = sdar_ckpts[code]
    tf5().patch(path, code)
    remote = native(path, impl="remote")
    ids = torch.tensor([remote.tokenizer.encode("Q: 3*4?\nA: abc")])
    for strategy in ("low_confidence_static", "low_confidence_dynamic"):
        want, passes = reference_decode(code, real[code][0], ids, 4, remasking_strategy=strategy,
                                        confidence_threshold=0.9, **CONFIG_DEFAULTS)
        gen, cost = harness_decode(remote, ids, 4, strategy=strategy, confidence_threshold=0.9, **CONFIG_DEFAULTS)
        assert agree(want, gen) and cost.nfe == passes and cost.nfe_cached == passes - 1
