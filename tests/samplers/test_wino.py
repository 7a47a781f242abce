"""WINO (`wino`) against a line-by-line transcription of its reference decoding function.

Reference: Feng-Hong/WINO-DLLM, `LLaDA/decoding.py`, function `decoding_wino` (commit 9549a1d). The
reference calls its own copy of LLaDA's modeling file (`LLaDA/modeling_llada.py`, which takes
position ids and a boolean 4-D mask); neither is among the real-code fixtures and the public LLaDA
file takes no position ids, so the reference cannot run here as is. `reference_wino` below is that
function transcribed statement by statement (each comment cites the reference line), batch of one,
with the model call `model(x, attention_mask=..., position_ids=...).logits` replaced by a
`forward(x, attention_mask, position_ids)` argument. It runs on the trained tiny checkpoint through
its `logits_pattern`, which applies exactly such a pattern and positions, and the harness's sampler
must give the same tokens with the same number of passes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.samplers.wino import shadow_pattern
from harness.text import encode_prompts
from harness.types import HarnessError
from tests.helpers import make_tiny


def reference_wino(forward, prompt, gen_length, block_length, mask_id, threshold, threshold_back, events=None):
    """`decoding_wino` at temperature 0 (the reference's add_gumbel_noise returns the logits
    unchanged then, decoding.py:104-105), for a [1, P] prompt -> (canvas [1, P + gen_length], passes).
    `events` (a list), if given, receives (pass, committed count, re-masked count) per pass."""
    P = prompt.shape[1]
    x_block = torch.full((1, P + gen_length + block_length), mask_id, dtype=torch.long)  # :116
    x_block[:, :P] = prompt.clone()  # :117
    assert gen_length % block_length == 0  # :121
    num_blocks = gen_length // block_length  # :122
    step = 0  # :123
    for num_block in range(num_blocks):  # :126
        lo, hi = P + num_block * block_length, P + (num_block + 1) * block_length  # the slice of :129-137
        block_step = 0  # :127
        mask_index_block = x_block == mask_id  # :128
        mask_index_block[:, hi:] = False  # :129
        unmask_index_block = torch.full_like(mask_index_block, False)  # :131
        unmask_index_block[:, -block_length:] = ~mask_index_block[:, lo:hi]  # :132
        position_ids = torch.cat([torch.arange(P + gen_length), torch.arange(lo, hi)])  # :133
        attention_mask = torch.ones(1, 1, x_block.shape[1], x_block.shape[1], dtype=torch.bool)  # :134
        attention_mask[:, :, :, -block_length:] = False  # :135
        attention_mask[:, :, -block_length:, -block_length:] = torch.ones(block_length, block_length,
                                                                          dtype=torch.bool)  # :136
        attention_mask[:, :, -block_length:, lo:hi] = ~torch.eye(block_length, dtype=torch.bool)  # :137
        last_accept = 30  # :138
        while mask_index_block.any():  # :139
            max_accept = min(max(int(mask_index_block.sum() * 0.7), 5), 20)  # :140
            logits = forward(x_block, attention_mask, position_ids)  # :141
            x0 = torch.argmax(logits, dim=-1)  # :142-143 (temperature 0)
            shift_left = torch.zeros_like(unmask_index_block)  # :144
            shift_left[:, lo:hi] = unmask_index_block[:, -block_length:]  # :145
            x0[unmask_index_block] = x_block[shift_left]  # :146
            p = F.softmax(logits.to(torch.float64), dim=-1)  # :148
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # :149-150
            x0 = torch.where(mask_index_block, x0, x_block)  # :151
            confidence = torch.where(mask_index_block, x0_p, -np.inf)  # :152
            confidence_back = torch.where(unmask_index_block, x0_p, np.inf)  # :153
            transfer_index = confidence > threshold  # :156
            if transfer_index.sum() > max_accept:  # :157
                _, indices = torch.topk(confidence, k=max_accept, largest=True)  # :159
                transfer_index = torch.zeros_like(confidence, dtype=torch.bool)  # :160
                transfer_index.view(-1)[indices] = True  # :161
            else:  # :164
                if not transfer_index.any():  # :165
                    transfer_index.view(-1)[torch.argmax(confidence)] = True  # :166-167
            x_block[transfer_index] = x0[transfer_index]  # :168
            num_accept = transfer_index.sum()  # :170
            if num_accept > 1:  # :172
                remask_index = confidence_back < threshold_back  # :173
                if remask_index.sum() >= last_accept:  # :174
                    num_remask = last_accept - 1  # :175
                    confidence_flat = confidence_back.view(-1)  # :176
                    temp_mask = torch.zeros_like(confidence_flat, dtype=torch.bool)  # :177
                    _, indices = torch.topk(confidence_flat, k=num_remask, largest=False)  # :178
                    temp_mask[indices] = True  # :179
                    remask_index = temp_mask.view(confidence_back.shape)  # :180
            else:  # :181
                remask_index = torch.zeros_like(transfer_index)  # :182
            remask_index_shift = torch.zeros_like(remask_index)  # :184
            remask_index_shift[:, lo:hi] = remask_index[:, -block_length:]  # :185
            x_block[remask_index_shift] = mask_id  # :186
            mask_index_block[transfer_index] = False  # :187
            mask_index_block[remask_index_shift] = True  # :188
            if events is not None:
                events.append((step + block_step, int(num_accept), int(remask_index_shift.sum())))
            block_step += 1  # :189
            transfer_index_shift = torch.zeros_like(transfer_index)  # :190
            transfer_index_shift[:, -block_length:] = transfer_index[:, lo:hi]  # :191
            unmask_index_block[transfer_index_shift] = True  # :192
            unmask_index_block[remask_index] = False  # :193
            last_accept = num_accept  # :194
        step += block_step  # :196
    return x_block[:, :P + gen_length], step  # :198


@pytest.fixture(scope="module")
def c16():
    """The trained tiny checkpoint of the sampler study (16-token canvas) and addition prompts."""
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    items = TASKS.build("addition", {"n_digits": 3, "canvas": 16}).items("test")[:12]
    return den, [torch.tensor([den.tokenizer.encode(it.prompt)]) for it in items]


def pattern_forward(den):
    return lambda x, am, pos: den.logits_pattern(x, am, pos[None])


# (gen_length, block_length, threshold, threshold_back): the reference's defaults, one block and
# several; the trained checkpoint is confident (p > 0.9 almost everywhere), so the verification
# re-masks only with threshold_back near 1 (at 1, every earlier token qualifies and the a - 1 cap
# decides: passes run up to the one-per-token bound).
SETTINGS = [(16, 16, 0.6, 0.9), (16, 8, 0.6, 0.9), (16, 8, 0.5, 0.9999), (16, 16, 0.3, 1.0), (16, 8, 0.3, 1.0),
            (16, 16, 0.99, 1.0), (16, 4, 0.2, 1.0)]


@pytest.mark.parametrize("setting", SETTINGS)
def test_token_parity_with_the_reference_transcription(c16, setting):
    den, prompts = c16
    L, bl, thr, back = setting
    sampler = SAMPLERS.build("wino", {"block_length": bl, "threshold": thr, "threshold_back": back})
    for prompt in prompts:
        want, passes = reference_wino(pattern_forward(den), prompt, L, bl, den.mask_id, thr, back)
        meter = Meter(den)
        gen = sampler(meter, prompt, generator=[torch.Generator().manual_seed(0)], gen_length=L)
        canvas = want[0, prompt.shape[1]:]
        cut = int(gen.gen_len[0])  # the harness cuts at the first stop token; the reference returns the canvas
        assert torch.equal(gen.tokens[0, :cut], canvas[:cut]), (setting, gen.tokens[0].tolist(), canvas.tolist())
        assert gen.steps == passes == meter.cost.nfe, (setting, gen.steps, passes, meter.cost.nfe)


def test_the_parity_settings_exercise_remasking(c16):
    """The parity above is only informative if the reference re-masks and drafts several tokens at
    once on these prompts: count both over the settings."""
    den, prompts = c16
    events = []
    for L, bl, thr, back in SETTINGS:
        for prompt in prompts:
            reference_wino(pattern_forward(den), prompt, L, bl, den.mask_id, thr, back, events)
    assert sum(r for _, _, r in events) >= 100, events  # re-masked tokens
    assert sum(a > 1 for _, a, _ in events) >= 100  # passes that drafted several tokens
    assert sum(a == 1 for _, a, _ in events) >= 10  # the single most confident fallback


def test_shadow_pattern_matches_the_reference_mask():
    """shadow_pattern without padding is decoding.py:134-137's mask for any block."""
    P, L, n = 3, 8, 4
    for b in range(L // n):
        lo = P + b * n
        want = torch.ones(1, 1, P + L + n, P + L + n, dtype=torch.bool)
        want[:, :, :, -n:] = False
        want[:, :, -n:, -n:] = True
        want[:, :, -n:, lo:lo + n] = ~torch.eye(n, dtype=torch.bool)
        assert torch.equal(shadow_pattern(torch.ones(1, P + L, dtype=torch.bool), lo, n), want)


def test_batch_rows_decode_as_alone_and_nfe_counts_each_rows_passes(c16):
    """A batch (left-padded prompts of different lengths) gives each row what it gives alone; the
    meter charges each row only its own passes, each over prompt + gen_length + block_length columns."""
    den, prompts = c16
    texts = ["12+345=", "987+6=", "5+5="]
    ids = [den.tokenizer.encode(t) for t in texts]
    prompt, pm = encode_prompts(den.tokenizer, texts, den.pad_id)
    sampler = SAMPLERS.build("wino", {"block_length": 8, "threshold": 0.3, "threshold_back": 0.99})
    meter = Meter(den)
    gen = sampler(meter, prompt, prompt_mask=pm, generator=[torch.Generator().manual_seed(i) for i in range(3)],
                  gen_length=16)
    alone_nfe = 0
    for r, row in enumerate(ids):
        m1 = Meter(den)
        one = sampler(m1, torch.tensor([row]), generator=[torch.Generator().manual_seed(r)], gen_length=16)
        assert torch.equal(gen.tokens[r], one.tokens[0]), (texts[r], gen.text[r], one.text[0])
        assert int(gen.row_steps[r]) == one.steps
        alone_nfe += m1.cost.nfe
    assert meter.cost.nfe == alone_nfe == int(gen.row_steps.sum())
    assert meter.cost.tokens == int(gen.row_steps.sum()) * (prompt.shape[1] + 16 + 8)


def test_min_length_keeps_eos_out_of_the_first_positions(c16):
    """The trained model ends its answer with EOS padding; with min_length EOS is never proposed
    before that position, while the default run does end early."""
    den, prompts = c16
    plain = SAMPLERS.build("wino", {"block_length": 8})(den, prompts[0], generator=None, gen_length=16)
    assert int(plain.gen_len[0]) < 10
    gen = SAMPLERS.build("wino", {"block_length": 8, "min_length": 10})(den, prompts[0], generator=None,
                                                                           gen_length=16)
    assert int(gen.gen_len[0]) > 10 and (gen.tokens[0, :10] != den.eos_id).all()


def test_sampled_decoding_is_reproducible_and_bounded():
    """temperature > 0 on a random tiny model: the row generators make it reproducible, no mask is
    left, and the passes stay within the declared bound (one per token)."""
    den = make_tiny(seed=3, max_len=24)
    prompt = torch.randint(3, 20, (3, 4), generator=torch.Generator().manual_seed(1))
    sampler = SAMPLERS.build("wino", {"block_length": 4, "temperature": 1.0, "threshold": 0.05})

    def run():
        return sampler(den, prompt, generator=[torch.Generator().manual_seed(i) for i in range(3)], gen_length=12)

    a, b = run(), run()
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert (a.tokens != den.mask_id).all()
    assert int(a.row_steps.max()) <= sampler.max_nfe_per_sequence(12)


def test_refuses_models_without_the_shadow_layout():
    sampler = SAMPLERS.build("wino", {})
    block = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16-block4"}).load()
    with pytest.raises(HarnessError, match="full attention"):
        sampler(block, torch.tensor([[5, 6, 7, 8]]), generator=None, gen_length=8)

    class NoPattern:
        block_size, shift_logits, mask_id = None, False, 1

    with pytest.raises(HarnessError, match="logits_pattern"):
        sampler(NoPattern(), torch.tensor([[5, 6]]), generator=None, gen_length=8)


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"accept_min": 0}, {"accept_min": 9, "accept_max": 8},
                                 {"block_length": 0}, {"first_remask_cap": 0}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(HarnessError, match=f"samplers.wino.*{next(iter(bad))}"):
        SAMPLERS.build("wino", bad)
