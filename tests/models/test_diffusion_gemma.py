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


def test_uniform_x0_matches_a_manual_computation_and_replays(gemma):
    prompt, pmask, comp = common.batch(gemma)
    cmask = completion_mask(comp, gemma.eos_id)
    est = ESTIMATORS.build("uniform_x0", {"n_mc": 2})
    with torch.no_grad():
        e = est(gemma, prompt, comp, cmask, generator=torch.Generator().manual_seed(0), prompt_mask=pmask)
        again = est(gemma, prompt, comp, cmask, generator=torch.Generator().manual_seed(9), prompt_mask=pmask,
                    draws=e.draws)
        torch.testing.assert_close(again.sequence, e.sequence)
        corrupt, noise = e.draws["corrupt"], e.draws["noise"]
        assert not (corrupt & ~cmask[:, None]).any() and noise.max() < 128
        manual = torch.zeros(3)
        for i in range(2):
            xt = torch.where(corrupt[:, i], noise[:, i], comp)
            with gemma.canvas(6):
                lp = gemma.logits(torch.cat([prompt, xt], 1),
                                  torch.cat([pmask, torch.ones_like(comp, dtype=torch.bool)], 1))[:, -6:]
            lp = lp.log_softmax(-1).gather(-1, comp[..., None]).squeeze(-1)
            manual += (lp * cmask).sum(1) / 2
    torch.testing.assert_close(e.sequence, manual)
    assert e.n == 2 and (e.sequence < 0).all()


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
    assert 1 <= gen.steps <= 6 and meter.cost.nfe == 3 * gen.steps  # every pass runs the whole batch
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
    lines = {line.split("\t")[0]: line for line in out.splitlines()}
    assert {"llada", "dream", "diffusion_gemma", "hf_masked", "hf_causal", "tiny"} <= set(lines)
    assert "noise: uniform; estimators: uniform_x0 only" in lines["diffusion_gemma"]
    assert "noise: masked" in lines["llada"] and "noise: masked" in lines["dream"]
