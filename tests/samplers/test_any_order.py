"""`any_order` (d2-AnyOrder's decoder) against a line-by-line transcription of its reference.

Reference: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py, class d2AnyOrderTrainer, `generate`
(lines 696-796) and `add_gumbel_noise` (673-684). The reference calls d2's copy of LLaDA
(SFT_AO/custom_llada.py, which takes an additive `attention_bias` and `position_ids`); it is not among
the real-code fixtures, so `reference_generate` below is the function transcribed statement by
statement (comments cite the lines), the model call replaced by the tiny model's `logits_pattern` with
the bias as a bool pattern (`_preprocess_attention_mask` turns 0 into −inf, 1 into 0), and its global
RNG draws (`torch.rand_like`, `torch.rand`) replaced by `noise(step, shape, position_ids)`, which lays
the harness sampler's own draws onto the reference's permuted columns. It physically swaps each decoded
pair to the front, as the reference does; the harness keeps natural columns.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.estimators.any_order import decode_slots
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.seeding import rand
from harness.types import HarnessError


def reference_generate(den, prompt, gen_length, block_length, temperature, remasking, mask_id, noise):
    prompt_len = prompt.shape[1]  # :710
    x = prompt.clone()  # :711
    batch_size = x.shape[0]  # :712
    attention_bias = torch.full((batch_size, 1, prompt_len, prompt_len), 1.)  # :715-718
    position_ids = torch.arange(prompt_len).unsqueeze(0).expand(batch_size, -1).clone()  # :720
    select_index_1 = torch.zeros(batch_size, dtype=torch.long)  # :722
    select_index_2 = torch.zeros(batch_size, dtype=torch.long)  # :723
    num_blocks = gen_length // block_length  # :725
    step = 0
    for _ in range(num_blocks):  # :726
        mask_tensor = torch.full((x.shape[0], block_length), mask_id)  # :728
        x = torch.cat([x, mask_tensor], dim=1)  # :729
        curr_seq_len = attention_bias.shape[-1]  # :731
        attention_bias_1 = torch.full((batch_size, 1, block_length, curr_seq_len), 1.)  # :732
        attention_bias = torch.cat([attention_bias, attention_bias_1], dim=2)  # :733
        attention_bias_2 = torch.full((batch_size, 1, curr_seq_len + block_length, block_length), 0.)  # :734
        attention_bias = torch.cat([attention_bias, attention_bias_2], dim=3)  # :735
        attention_bias[..., curr_seq_len + torch.arange(block_length), curr_seq_len + torch.arange(block_length)] = 1.
        new_position_ids = torch.arange(curr_seq_len, curr_seq_len + block_length).unsqueeze(0).expand(
            batch_size, -1).clone()  # :738
        position_ids = torch.cat([position_ids, new_position_ids], dim=1)  # :739
        for _ in range(block_length // 2):  # :741
            mask_index = x == mask_id  # :742
            logits = den.logits_pattern(x, attention_bias == 1., position_ids)  # :744-745
            if temperature == 0.0:  # add_gumbel_noise :679-684
                logits_with_noise = logits
            else:
                u = noise(step, "gumbel", position_ids, logits.shape).to(torch.float64)  # :682 torch.rand_like
                logits_with_noise = logits.to(torch.float64).exp() / (-torch.log(u)) ** temperature
            x0 = torch.argmax(logits_with_noise, dim=-1)  # :749
            if remasking == "low_confidence":  # :752
                p = F.softmax(logits.to(logits.dtype), dim=-1)  # :754
                x0_p = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)  # :755
            else:  # :756-757
                x0_p = noise(step, "random", position_ids, x0.shape)
            x0 = torch.where(mask_index, x0, x)  # :762
            confidence = torch.where(mask_index, x0_p, -np.inf)  # :763
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)  # :766
            for j in range(confidence.shape[0]):  # :767
                _, select_indices = torch.topk(confidence[j], k=2)  # :770
                transfer_index[j, select_indices] = True  # :771
                select_index_1[j] = min(select_indices[0].item(), select_indices[1].item())  # :772
                select_index_2[j] = max(select_indices[0].item(), select_indices[1].item())  # :773
            x[transfer_index] = x0[transfer_index]  # :775
            curr_seq_len += 2  # :778
            attention_bias[..., curr_seq_len - 1:, curr_seq_len - 2] = 1.  # :779
            attention_bias[..., curr_seq_len:, curr_seq_len - 1] = 1.  # :780
            for j in range(batch_size):  # :782
                idx1 = select_index_1[j].item()  # :783
                idx2 = select_index_2[j].item()  # :784
                tmp1, tmp2 = position_ids[j, curr_seq_len - 2], position_ids[j, idx1]  # :786
                position_ids[j, idx1], position_ids[j, curr_seq_len - 2] = tmp1.clone(), tmp2.clone()  # :787
                tmp1, tmp2 = x[j, curr_seq_len - 2], x[j, idx1]  # :788
                x[j, idx1], x[j, curr_seq_len - 2] = tmp1.clone(), tmp2.clone()  # :789
                tmp1, tmp2 = position_ids[j, curr_seq_len - 1], position_ids[j, idx2]  # :791
                position_ids[j, idx2], position_ids[j, curr_seq_len - 1] = tmp1.clone(), tmp2.clone()  # :792
                tmp1, tmp2 = x[j, curr_seq_len - 1], x[j, idx2]  # :793
                x[j, idx2], x[j, curr_seq_len - 1] = tmp1.clone(), tmp2.clone()  # :794
            step += 1
    return x, position_ids  # :796


def harness_noise(seed, P, gen_length, block_length, temperature, remasking, V):
    """The uniforms the harness sampler draws from a one-row generator list seeded `seed` (per step: the
    Gumbel uniforms [1, block, V] at temperature > 0, then the random confidences [1, block]), laid onto
    the reference's columns by position id: column c of the current block gets the draw of its position."""
    g = [torch.Generator().manual_seed(seed)]
    draws = []
    for s in range(gen_length // 2):
        gumbel = rand(g, 1, block_length, V, dtype=torch.float64) if temperature > 0 else None
        rnd = rand(g, 1, block_length, dtype=torch.float64) if remasking == "random" else None
        draws.append({"gumbel": gumbel, "random": rnd, "lo": P + (2 * s // block_length) * block_length})

    def noise(step, kind, position_ids, shape):
        d = draws[step]
        out = torch.full(shape, 0.5, dtype=torch.float64)
        pos = position_ids[0]
        for c in range(shape[1]):
            k = int(pos[c]) - d["lo"]
            if 0 <= k < block_length:
                out[0, c] = d[kind][0, k]
        return out

    return noise


@pytest.fixture(scope="module")
def c16():
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    items = TASKS.build("addition", {"n_digits": 3, "canvas": 16}).items("test")[:8]
    return den, [torch.tensor([den.tokenizer.encode(it.prompt)]) for it in items]


# (block_length, temperature, remasking): the reference's settings (block 32 capped at the 16-token
# canvas, greedy), several blocks, sampled tokens and random remasking
SETTINGS = [(16, 0.0, "low_confidence"), (8, 0.0, "low_confidence"), (4, 0.0, "low_confidence"),
            (16, 1.0, "low_confidence"), (8, 0.7, "random")]


@pytest.mark.parametrize("setting", SETTINGS)
def test_token_parity_with_the_reference_transcription(c16, setting):
    den, prompts = c16
    bl, temp, remasking = setting
    L = 16
    sampler = SAMPLERS.build("any_order", {"block_length": bl, "temperature": temp, "remasking": remasking})
    for i, prompt in enumerate(prompts):
        P = prompt.shape[1]
        noise = harness_noise(i, P, L, min(bl, L), temp, remasking, den.vocab_size)
        with torch.no_grad():
            want, pos = reference_generate(den, prompt, L, min(bl, L), temp, remasking, den.mask_id, noise)
        natural = torch.empty(L, dtype=torch.long)
        natural[pos[0, P:] - P] = want[0, P:]  # the reference's canvas in natural order
        meter = Meter(den)
        gen = sampler(meter, prompt, generator=[torch.Generator().manual_seed(i)], gen_length=L)
        cut = int(gen.gen_len[0])  # the harness cuts at the first stop token; the reference returns the canvas
        assert torch.equal(gen.tokens[0, :cut], natural[:cut]), (setting, gen.tokens[0].tolist(), natural.tolist())
        # the recorded commit steps rebuild the reference's decoding order (its final position ids)
        assert decode_slots(gen.commit_step)[0].tolist() == torch.argsort(pos[0, P:] - P).tolist()
        assert gen.steps == L // 2 == meter.cost.nfe


def test_rows_of_a_padded_batch_decode_as_alone(c16):
    """With ties broken by natural position, a row decodes the same in a left-padded batch as alone (the
    reference's topk tie order depends on the row's columns, so `topk` keeps only the tokens)."""
    den, prompts = c16
    from harness.text import encode_prompts

    texts = [den.tokenizer.decode(p[0].tolist()) for p in prompts[:3]] + ["1+2="]
    ids, pm = encode_prompts(den.tokenizer, texts, den.pad_id)
    for ties in ("position", "topk"):
        sampler = SAMPLERS.build("any_order", {"block_length": 8, "temperature": 1.0, "tie_break": ties})
        gens = [torch.Generator().manual_seed(i) for i in range(4)]
        batch = sampler(den, ids, prompt_mask=pm, generator=gens, gen_length=16)
        for i, t in enumerate(texts):
            alone = sampler(den, torch.tensor([den.tokenizer.encode(t)]), generator=[torch.Generator().manual_seed(i)],
                            gen_length=16)
            assert torch.equal(batch.tokens[i], alone.tokens[0])
            assert ties == "topk" or torch.equal(batch.commit_step[i], alone.commit_step[0])


def test_refuses_models_without_a_pattern_and_bad_parameters():
    class NoPattern:
        mask_id, shift_logits = 0, False

    with pytest.raises(HarnessError, match="logits_pattern"):
        SAMPLERS.build("any_order", {})(NoPattern(), torch.zeros(1, 2, dtype=torch.long), generator=None)
    with pytest.raises(ValueError, match="multiple of block_length"):
        SAMPLERS.build("any_order", {"block_length": 5}).plan(16)
    with pytest.raises(ValueError, match="multiple of tokens_per_step"):
        SAMPLERS.build("any_order", {"block_length": 8, "tokens_per_step": 3}).plan(16)
    for bad in ({"remasking": "entropy"}, {"tokens_per_step": 0}, {"tie_break": "random"}):
        with pytest.raises(HarnessError):
            SAMPLERS.build("any_order", bad)


def test_token_parity_on_native_llada():
    """The same parity on the native LLaDA (rotary position ids, the reference's model family; random weights)."""
    den = MODELS.build("llada", {"preset": "tiny", "dtype": "float32"}).load()
    g = torch.Generator().manual_seed(0)
    sampler = SAMPLERS.build("any_order", {"block_length": 4, "temperature": 0.5})
    for i in range(3):
        prompt = torch.randint(0, 100, (1, 5), generator=g)
        noise = harness_noise(i, 5, 8, 4, 0.5, "low_confidence", den.vocab_size)
        with torch.no_grad():
            want, pos = reference_generate(den, prompt, 8, 4, 0.5, "low_confidence", den.mask_id, noise)
        gen = sampler(den, prompt, generator=[torch.Generator().manual_seed(i)], gen_length=8)
        natural = torch.empty(8, dtype=torch.long)
        natural[pos[0, 5:] - 5] = want[0, 5:]
        cut = int(gen.gen_len[0])
        assert torch.equal(gen.tokens[0, :cut], natural[:cut])
        assert decode_slots(gen.commit_step)[0].tolist() == torch.argsort(pos[0, 5:] - 5).tolist()
