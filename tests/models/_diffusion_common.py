"""Checks the llada and dream adapter tests share (tiny random presets, CPU, float32)."""
from __future__ import annotations

import torch

from harness.budget import Meter
from harness.registry import ESTIMATORS, SAMPLERS
from harness.text import completion_mask, encode_completions, encode_prompts
from harness.types import Denoiser

PROMPTS = ["12+7=", "3+45="]
ANSWERS = ["19", "48"]


def batch(d):
    """Left-padded prompts (the second one is longer) and EOS-padded completions of length 6."""
    prompt, pmask = encode_prompts(d.tokenizer, PROMPTS + ["1+1="], d.pad_id)
    comp = encode_completions(d.tokenizer, ANSWERS + ["2"], 6, d.eos_id)
    return prompt, pmask, comp


def check_protocol(d, *, mask_id: int, shift: bool, vocab: int):
    assert isinstance(d, Denoiser)
    assert d.mask_id == mask_id and d.shift_logits is shift and d.vocab_size == vocab
    assert d.device == torch.device("cpu")
    x = torch.randint(0, 96, (3, 7))
    out = d.logits(x)
    assert out.shape == (3, 7, vocab) and out.dtype == torch.float32
    # the tokenizer: characters round-trip; decode stops at EOS and drops specials
    ids = d.tokenizer.encode("12+7=")
    assert len(ids) == 5 and d.tokenizer.decode(ids + [d.eos_id] + ids) == "12+7="
    assert d.tokenizer.decode([d.mask_id, *ids]) == "12+7="
    # the chat template wraps a user turn and asks for the assistant's
    chat = d.tokenizer.apply_chat_template("12+7=")
    assert chat == "user: 12+7=\nassistant: "


def check_padding_invariance(d):
    """A left-padded row scores as it does alone (padding mask + positions as the model expects)."""
    prompt, pmask, comp = batch(d)
    x = torch.cat([prompt, comp], 1)
    attn = torch.cat([pmask, torch.ones_like(comp, dtype=torch.bool)], 1)
    with torch.no_grad():
        full = d.logits(x, attn)
        for i in range(3):
            real = attn[i]
            alone = d.logits(x[i:i + 1, real])
            torch.testing.assert_close(full[i, real], alone[0], atol=2e-5, rtol=1e-4)


def check_end_to_end(d):
    """low_confidence generation and mc_elbo run through the meter; the meter counts their passes."""
    prompt, pmask, comp = batch(d)
    meter = Meter(d)
    gen = SAMPLERS.build("low_confidence", {"steps": 4, "block_length": 4})(
        meter, prompt, prompt_mask=pmask, generator=torch.Generator().manual_seed(0), gen_length=8)
    assert gen.tokens.shape == (3, 8) and len(gen.text) == 3 and gen.steps == 4
    assert meter.cost.nfe == 3 * 4 and meter.cost.tokens == 3 * 4 * (prompt.shape[1] + 8)
    est = ESTIMATORS.build("mc_elbo", {"n_mc": 3})
    with torch.no_grad():
        e = est(meter, prompt, comp, completion_mask(comp, d.eos_id), generator=torch.Generator().manual_seed(1),
                prompt_mask=pmask)
    assert e.sequence.shape == (3,) and torch.isfinite(e.sequence).all() and (e.sequence < 0).all()
    assert meter.cost.nfe == 3 * 4 + 3 * 3
