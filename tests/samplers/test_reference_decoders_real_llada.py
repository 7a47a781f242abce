"""rcr, pc_sampler and klass against their references' decoding loops on the public LLaDA model file.

The transcriptions of MDPO's `diffusion_generate` (rcr=True), PC-Sampler's `generate_with_pc_sampler`
and KLASS's `stable_confident_decode` (tests/samplers/test_rcr.py, test_pc_sampler.py,
test_klass.py, each cited line by line) drive the public `modeling_llada.py` of the real-code fixture
(../shared/fixtures/real-code: a random-weight checkpoint with LLaDA's vocabulary and special ids, mask
126336), as the references drive LLaDA-8B; the harness samplers decode on the harness's native LLaDA
loaded from the same checkpoint. Skipped without the fixture.
"""
from __future__ import annotations

import json

import pytest
import torch

from harness.registry import MODELS, SAMPLERS
from tests.models import _real_code as rc
from tests.samplers._reference import cut
from tests.samplers.test_klass import reference_klass
from tests.samplers.test_pc_sampler import ref_background, reference_pc
from tests.samplers.test_rcr import reference_rcr

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # a 60-75 MB checkpoint; every pass has a 126k vocabulary

MASK = 126336


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    path = rc.build("llada", tmp_path_factory.mktemp("real-code") / "llada")
    real = rc.real_llada(path)
    den = MODELS.build("llada", {"path": str(path), "dtype": "float32", "device": "cpu"}).load()
    tok = den.tokenizer.hf
    prompts = []
    for text in ("What is 12 + 30?", "Name three colours."):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        prompts.append(torch.tensor([tok(chat, add_special_tokens=False)["input_ids"]]))
    return real, den, prompts


class Real:
    """The public module called as the references call it (model(x).logits, model.config.vocab_size)."""

    def __init__(self, real, vocab_size):
        self.real, self.device = real, torch.device("cpu")
        self.config = type("Config", (), {"vocab_size": vocab_size})

    def __call__(self, x, attention_mask=None):
        return self.real(x)


@pytest.mark.parametrize("steps,gen_length,block", [(8, 16, 16), (8, 16, 8)])
def test_rcr(llada, steps, gen_length, block):
    real, den, prompts = llada
    for p in prompts:
        events = {}
        ref = reference_rcr(Real(real, den.vocab_size), p, MASK, steps, gen_length, block, events=events)
        out = SAMPLERS.build("rcr", {"steps": steps, "block_length": block})(den, p, generator=None,
                                                                              gen_length=gen_length)
        assert torch.equal(out.tokens, cut(ref, den))
        assert events["remasked"] > 0


@pytest.mark.parametrize("steps,gen_length,block", [(16, 16, 16), (8, 16, 8)])
def test_pc_sampler(llada, tmp_path, steps, gen_length, block):
    real, den, prompts = llada
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 126464, (5000,), generator=g).tolist()
    counts = {str(i): int(c) for i, c in zip(ids, torch.randint(0, 10**6, (5000,), generator=g).tolist())}
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"num_token": 10**9, "p_baseline_dict": counts}))
    bg = ref_background(path)
    for p in prompts:
        ref = reference_pc(Real(real, den.vocab_size), p, steps, gen_length, block, 0.25, 10.0, bg, MASK)
        out = SAMPLERS.build("pc_sampler", {"steps": steps, "block_length": block, "baseline": str(path)})(
            den, p, generator=None, gen_length=gen_length)
        assert torch.equal(out.tokens, cut(ref, den))


@pytest.mark.parametrize("steps,gen_length,block,conf,kl", [(16, 16, 16, 0.9, 0.01), (16, 16, 8, 0.6, 0.015)])
def test_klass(llada, steps, gen_length, block, conf, kl):
    real, den, prompts = llada
    for p in prompts[:1]:  # float64 distributions over 126k tokens at every pass: one prompt
        events = {}
        ref, used = reference_klass(Real(real, den.vocab_size), p, gen_length, steps, block, MASK, conf, kl, 2, "all",
                                    events)
        out = SAMPLERS.build("klass", {"steps": steps, "block_length": block, "conf_threshold": conf,
                                       "kl_threshold": kl})(den, p, generator=None, gen_length=gen_length)
        assert torch.equal(out.tokens, cut(ref[:, p.shape[1]:], den)) and out.steps == used
        assert "overwrite" not in events and "left_masked" not in events
        if conf < 0.9:
            assert events.get("ready", 0) > 0 and events.get("fallback", 0) > 0  # both branches compared
