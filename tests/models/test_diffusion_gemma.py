"""Tests of the `diffusion_gemma` adapter (tiny random DiffusionGemma, CPU), its `uniform_x0`
estimator and its `uniform_entropy_bound` sampler."""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter
from harness.registry import ESTIMATORS, MODELS, SAMPLERS
from harness.text import completion_mask
from harness.types import Denoiser, HarnessError
from tests.models import _diffusion_common as common

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("this transformers has no DiffusionGemma", allow_module_level=True)


@pytest.fixture(scope="module")
def gemma():
    return MODELS.build("diffusion_gemma", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()


def test_protocol(gemma):
    assert isinstance(gemma, Denoiser)
    assert gemma.mask_id is None and gemma.noise == "uniform" and gemma.shift_logits is False
    assert (gemma.eos_id, gemma.pad_id, gemma.vocab_size, gemma.canvas_length) == (126, 125, 128, 8)
    assert gemma.tokenizer.decode(gemma.tokenizer.encode("12+7=") + [126, 5]) == "12+7="


def test_logits_split_context_and_canvas(gemma):
    """The last `width` columns are the canvas; context columns carry zero logits; the canvas's
    logits equal a direct call of the model with the context as the encoder's input."""
    x = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        out = gemma.logits(x)  # default width: canvas_length 8
        direct = gemma.module(input_ids=x[:, :3], decoder_input_ids=x[:, 3:]).logits
        with gemma.canvas(5):
            out5 = gemma.logits(x)
    assert out.shape == (2, 11, 128) and torch.equal(out[:, :3], torch.zeros(2, 3, 128))
    torch.testing.assert_close(out[:, 3:], direct)
    assert out5[:, :6].abs().sum() == 0 and out5[:, 6:].abs().sum() > 0 and gemma.width is None
    with pytest.raises(HarnessError, match="context column"):
        gemma.logits(x[:, :8])


def direct_uniform_x0(gemma, prompt, pmask, comp, cmask, draws, sc: bool) -> torch.Tensor:
    """uniform_x0 recomputed with plain calls of the transformers module (no cache, no harness
    pass): canvas j of each copy is denoised with the prompt and the clean canvases before it as
    the encoder's input; with self-conditioning the scored pass gets the first pass's logits."""
    B, L = comp.shape
    W = gemma.canvas_length
    n, width = draws["corrupt"].shape[1:]
    clean = torch.cat([comp, torch.full((B, width - L), gemma.eos_id)], 1)
    value = torch.zeros(B)
    for i in range(n):
        xt = torch.where(draws["corrupt"][:, i], draws["noise"][:, i], clean)
        for j in range(width // W):
            ctx = torch.cat([prompt, clean[:, :j * W]], 1)
            am = torch.cat([pmask, torch.ones(B, j * W, dtype=torch.bool)], 1)
            kw = dict(input_ids=ctx, attention_mask=am, decoder_input_ids=xt[:, j * W:(j + 1) * W],
                      decoder_attention_mask=torch.cat([am, torch.ones(B, W, dtype=torch.bool)], 1))
            logits = gemma.module(**kw).logits
            if sc:
                logits = gemma.module(**kw, self_conditioning_logits=logits.detach()).logits
            lp = logits.log_softmax(-1).gather(-1, clean[:, j * W:(j + 1) * W, None]).squeeze(-1)  # [B, W]
            keep = torch.arange(j * W, (j + 1) * W) < L
            value += (lp[:, keep] * cmask[:, j * W:(j + 1) * W][:, :int(keep.sum())]).sum(1) / n
    return value


@pytest.mark.parametrize("L", [6, 13])
@pytest.mark.parametrize("sc", [True, False])
def test_uniform_x0_equals_a_direct_recomputation_and_replays(gemma, L, sc):
    """Canvas by canvas (13 tokens: two canvases of 8, the second one's 3 extra columns noise),
    with and without self-conditioning, through the meter: equal to plain module calls."""
    from harness.text import encode_completions, encode_prompts
    from tests.models._diffusion_common import ANSWERS, PROMPTS

    prompt, pmask = encode_prompts(gemma.tokenizer, PROMPTS + ["1+1="], gemma.pad_id)
    comp = encode_completions(gemma.tokenizer, [a * ((L - 1) // 2) for a in ANSWERS] + ["2"], L, gemma.eos_id)
    cmask = completion_mask(comp, gemma.eos_id)
    est = ESTIMATORS.build("uniform_x0", {"n_mc": 2, "self_conditioning": sc})
    meter = Meter(gemma)
    with torch.no_grad():
        e = est(meter, prompt, comp, cmask, generator=torch.Generator().manual_seed(0), prompt_mask=pmask)
        again = est(gemma, prompt, comp, cmask, generator=torch.Generator().manual_seed(9), prompt_mask=pmask,
                    draws=e.draws)
        direct = direct_uniform_x0(gemma, prompt, pmask, comp, cmask, e.draws, sc)
    torch.testing.assert_close(again.sequence, e.sequence)
    torch.testing.assert_close(e.sequence, direct, rtol=1e-5, atol=1e-4)
    corrupt, noise = e.draws["corrupt"], e.draws["noise"]
    n_canvas = -(-L // 8)
    assert corrupt.shape == (3, 2, 8 * n_canvas) and noise.max() < 128
    assert corrupt[:, :, L:].all() and not (corrupt[:, :, :L] & ~cmask[:, None]).any()
    passes = n_canvas * 2 * (2 if sc else 1)  # canvases x copies x (self-conditioning pass)
    assert meter.cost.nfe == 3 * passes and meter.cost.nfe_full == 3  # the first pass builds the cache
    assert e.n == 2 and (e.sequence < 0).all()


def test_uniform_x0_gradient_equals_the_direct_recomputation(gemma):
    """Under autograd (RL losses), through the cached passes: the same parameter gradient as the
    plain module calls, the self-conditioning input being a stop-gradient estimate."""
    prompt, pmask, comp = common.batch(gemma)
    cmask = completion_mask(comp, gemma.eos_id)
    est = ESTIMATORS.build("uniform_x0", {"n_mc": 1})
    e = est(gemma, prompt, comp, cmask, generator=torch.Generator().manual_seed(0), prompt_mask=pmask)
    weight = gemma.module.model.decoder.norm.weight  # both passes use it
    (grad,) = torch.autograd.grad(e.sequence.sum(), weight)
    (ref,) = torch.autograd.grad(direct_uniform_x0(gemma, prompt, pmask, comp, cmask, e.draws, True).sum(), weight)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def test_uniform_x0_follows_the_model_on_self_conditioning(gemma):
    """Default: self-conditioning on (DiffusionGemma's generate always uses it): a different value
    from self_conditioning=false on the same draws, the same as self_conditioning=true."""
    prompt, pmask, comp = common.batch(gemma)
    cmask = completion_mask(comp, gemma.eos_id)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        e = ESTIMATORS.build("uniform_x0", {"n_mc": 1})(gemma, prompt, comp, cmask, generator=g, prompt_mask=pmask)
        on, off = (ESTIMATORS.build("uniform_x0", {"n_mc": 1, "self_conditioning": v})(
            gemma, prompt, comp, cmask, generator=g, prompt_mask=pmask, draws=e.draws) for v in (True, False))
    assert gemma.self_conditioning is True
    torch.testing.assert_close(e.sequence, on.sequence)
    assert not torch.allclose(e.sequence, off.sequence)


def test_cached_passes_equal_full_recomputations(gemma):
    """logits_build_cache (prompt encoded, canvas denoised) and logits_cached (previous canvas
    appended to the cache, canvas denoised with self-conditioning) equal plain module calls on the
    whole context; the meter counts the first as a full pass and the second as a cached one."""
    prompt, pmask, _ = common.batch(gemma)
    g = torch.Generator().manual_seed(3)
    c1, c2 = torch.randint(0, 128, (2, 3, 8), generator=g)
    sc = torch.randn(3, 8, 128, generator=g)
    ones = torch.ones(3, 8, dtype=torch.bool)
    meter = Meter(gemma)
    with torch.no_grad():
        first, cache = meter.logits_build_cache(torch.cat([prompt, c1], 1), torch.cat([pmask, ones], 1),
                                                keep=slice(0, prompt.shape[1]))
        second = meter.logits_cached(torch.cat([c1, c2], 1), cache, context=8, self_conditioning=sc)
        am = torch.cat([pmask, ones], 1)
        ref1 = gemma.module(input_ids=prompt, attention_mask=pmask, decoder_input_ids=c1,
                            decoder_attention_mask=am).logits
        ref2 = gemma.module(input_ids=torch.cat([prompt, c1], 1), attention_mask=am, decoder_input_ids=c2,
                            decoder_attention_mask=torch.cat([am, ones], 1), self_conditioning_logits=sc).logits
    P = prompt.shape[1]
    assert first.shape == (3, P + 8, 128) and first[:, :P].abs().sum() == 0
    torch.testing.assert_close(first[:, P:], ref1, rtol=1e-5, atol=1e-5)
    assert second.shape == (3, 16, 128) and second[:, :8].abs().sum() == 0
    torch.testing.assert_close(second[:, 8:], ref2, rtol=1e-5, atol=1e-5)
    assert cache.length == P + 8 and cache.take(torch.tensor([2])).mask.shape == (1, P + 8)
    c = meter.cost
    assert (c.nfe_full, c.nfe_cached, c.tokens) == (3, 3, 3 * (P + 8) + 3 * 16)
    with pytest.raises(HarnessError, match="context columns"):
        gemma.logits_build_cache(torch.cat([prompt, c1], 1), keep=slice(0, 2))


def test_masked_estimators_and_samplers_refuse_or_do_not_apply(gemma):
    prompt, pmask, comp = common.batch(gemma)
    with pytest.raises(HarnessError, match="uniform-noise"):
        ESTIMATORS.build("uniform_x0", {})(common_tiny_masked(), prompt, comp, completion_mask(comp, 2),
                                           generator=torch.Generator())
    with pytest.raises(HarnessError, match="uniform-noise"):
        SAMPLERS.build("uniform_entropy_bound", {})(common_tiny_masked(), prompt, generator=torch.Generator())


def common_tiny_masked():
    from tests.helpers import make_tiny

    return make_tiny()


def test_entropy_bound_generation_through_the_meter(gemma):
    prompt, pmask, _ = common.batch(gemma)
    meter = Meter(gemma)
    s = SAMPLERS.build("uniform_entropy_bound", {"max_steps": 3})
    gen = s(meter, prompt, prompt_mask=pmask, generator=torch.Generator().manual_seed(0), gen_length=16)
    assert gen.tokens.shape == (3, 16) and len(gen.text) == 3
    # a near-uniform random model never converges: every row runs every step of both canvases
    assert gen.steps == 6 and meter.cost.nfe == 3 * gen.steps and meter.cost.nfe_full == 3
    # deterministic given the generator
    again = s(gemma, prompt, prompt_mask=pmask, generator=torch.Generator().manual_seed(0), gen_length=16)
    assert torch.equal(gen.tokens, again.tokens)
    # the first canvas's tokens were committed at a pass of the first canvas
    assert (gen.commit_step[:, :8] < 3).all()


def test_path_route_loads_a_saved_model(gemma, tmp_path):
    from harness.models._hf_common import save_pretrained_dir

    path = save_pretrained_dir(gemma.module, gemma.tokenizer.hf, tmp_path / "dg")
    d = MODELS.build("diffusion_gemma", {"path": str(path), "device": "cpu", "dtype": "float32"}).load()
    x = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(d.logits(x), gemma.logits(x))


def test_list_models_says_which_estimators_apply():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "harness.cli", "list", "models"], capture_output=True, text=True,
                         check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert {"llada", "dream", "diffusion_gemma", "hf_masked", "hf_causal", "tiny"} <= set(lines)
    assert "noise: uniform; estimators: uniform_x0 only" in lines["diffusion_gemma"]
    assert "noise: masked" in lines["llada"] and "noise: masked" in lines["dream"]
