"""`klass` against KLASS's own LLaDA decoder, token for token and pass for pass.

Reference: shkim0116/KLASS (commit ad87ecb), `src/model/llada_klass.py`, `stable_confident_decode`
(L42-218, alg="klass") with its `get_num_transfer_tokens` (L22-40). `reference_klass` transcribes it
line by line for the greedy path and runs in CI; `test_the_reference_itself` runs the repository's
own function when $DLM_HARNESS_KLASS_SRC names a checkout (skipped otherwise). That function
hard-codes LLaDA's mask id 126336 (L54), so it runs on a denoiser with LLaDA's vocabulary size.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.registry import SAMPLERS
from harness.samplers.klass import kl_divergence, pick_one
from harness.types import HarnessError
from tests.samplers._reference import ContextDenoiser, RefModel, cut, reference_module

torch.set_num_threads(1)


# -- the transcription ----------------------------------------------------------------------------
def ref_transfer(block_mask, steps):
    """`get_num_transfer_tokens` L22-40 (LLaDA's linear counts)."""
    mask_num = block_mask.sum(dim=1, keepdim=True)
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + mask_num // steps
    for i in range(mask_num.size(0)):
        out[i, :mask_num[i] % steps] += 1
    return out


def reference_klass(model, prompt, gen_length, steps, block_length, mask_id, conf_threshold, kl_threshold,
                    history, strategy, events):
    """`stable_confident_decode` with alg="klass", temperature 0, one sequence -> (canvas, passes).
    `events` counts ready steps, fallback steps, fallbacks asking for more tokens than are masked
    (the reference then overwrites unmasked positions) and blocks left with masks."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)  # L55
    x[:, :P] = prompt.clone()  # L56
    num_blocks = gen_length // block_length  # L59
    steps_per_block = steps // num_blocks  # L61
    used_steps = 0  # L63
    V = model.config.vocab_size  # L66
    kl_history = torch.zeros((1, x.shape[1], history), dtype=torch.float64)  # L67
    p_prev = torch.zeros((1, x.shape[1], V), dtype=torch.float64)  # L68
    for nb in range(num_blocks):  # L72
        start, end = P + nb * block_length, P + (nb + 1) * block_length  # L73-74
        counts = ref_transfer(x[:, start:end] == mask_id, steps_per_block)  # L75-76
        for step in range(steps_per_block):  # L78
            mask_index = x == mask_id  # L79
            block_mask = torch.zeros_like(mask_index)  # L81
            block_mask[:, start:end] = True  # L82
            mask_index = mask_index & block_mask  # L83
            if not mask_index[:, start:end].any():  # L86-87
                break
            logits = model(x).logits  # L89 (temperature 0: no noise, L90-91)
            p_curr = F.softmax(logits.to(torch.float64), dim=-1)  # L92
            x0 = torch.argmax(p_curr, dim=-1)  # L93
            curr_conf = torch.squeeze(torch.gather(p_curr, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # L107-108
            kl = (p_curr * (torch.log(p_curr + 1e-12) - torch.log(p_prev + 1e-12))).sum(dim=-1)  # L111-114
            kl_history = torch.roll(kl_history, shifts=-1, dims=-1)  # L116
            kl_history[..., -1] = kl  # L117
            p_prev = p_curr.clone()  # L119
            if step >= history - 1:  # L123-126
                stable = torch.all(kl_history < kl_threshold, dim=-1)
            else:
                stable = torch.zeros_like(curr_conf, dtype=torch.bool)
            ready = stable & (curr_conf > conf_threshold) & mask_index  # L128-130
            transfer = torch.zeros_like(x0, dtype=torch.bool)  # L135
            ready_idx = torch.where(ready[0])[0]  # L156
            if len(ready_idx) > 0:  # L157
                selected = ready_idx
                if len(ready_idx) > 1 and strategy == "max_conf":  # L159-163
                    i = torch.argmax(curr_conf[0, ready_idx])
                    selected = ready_idx[i:i + 1]
                elif len(ready_idx) > 1 and strategy == "min_kl":  # L164-168
                    i = torch.argmin(kl[0, ready_idx])
                    selected = ready_idx[i:i + 1]
                transfer[0, selected] = True  # L175
                events["ready"] = events.get("ready", 0) + 1
            else:  # L177-182
                curr_conf[:, end:] = -float("inf")
                confidence = torch.where(mask_index, curr_conf, -float("inf"))
                k = counts[0, step].item()
                _, selected = torch.topk(confidence[0], k=k)
                transfer[0, selected] = True
                events["fallback"] = events.get("fallback", 0) + 1
                if k > int(mask_index.sum()):
                    events["overwrite"] = events.get("overwrite", 0) + 1
            x[transfer] = x0[transfer]  # L198
            used_steps += 1  # L211
        if (x[:, start:end] == mask_id).any():
            events["left_masked"] = events.get("left_masked", 0) + 1
    return x, used_steps


# -- fixtures ---------------------------------------------------------------------------------------
def prompts(n=6, P=5):
    return torch.randint(3, 24, (n, P), generator=torch.Generator().manual_seed(13))


CASES = [  # steps, gen_length, block_length, conf_threshold, kl_threshold, history_length, unmask_strategy
    (16, 16, 16, 0.9, 0.01, 2, "all"),  # the reference's defaults
    (16, 16, 16, 0.6, 0.05, 2, "all"),
    (24, 24, 8, 0.6, 0.05, 2, "all"),
    (24, 24, 8, 0.5, 0.1, 3, "max_conf"),
    (16, 16, 4, 0.5, 0.1, 2, "min_kl"),
]


def harness_klass(den, ids, gen_length, steps, block, conf, kl, history, strategy):
    params = {"steps": steps, "block_length": block, "conf_threshold": conf, "kl_threshold": kl,
              "history_length": history, "unmask_strategy": strategy}
    return SAMPLERS.build("klass", params)(den, ids, generator=None, gen_length=gen_length)


@pytest.mark.parametrize("steps,gen_length,block,conf,kl,history,strategy", CASES)
def test_matches_the_transcribed_reference(steps, gen_length, block, conf, kl, history, strategy):
    """Each row alone: the reference's tokens and its number of passes; the batch: the same tokens."""
    den = ContextDenoiser(seed=2)
    ids = prompts()
    batch = harness_klass(den, ids, gen_length, steps, block, conf, kl, history, strategy)
    events = {}
    for r in range(ids.shape[0]):
        ref, used = reference_klass(RefModel(den), ids[r:r + 1], gen_length, steps, block, den.mask_id, conf, kl,
                                    history, strategy, events)
        alone = harness_klass(den, ids[r:r + 1], gen_length, steps, block, conf, kl, history, strategy)
        assert torch.equal(alone.tokens, cut(ref[:, ids.shape[1]:], den)), f"row {r}"
        assert alone.steps == used, f"row {r}"
        assert torch.equal(batch.tokens[r], alone.tokens[0]), f"row {r}"
    assert "overwrite" not in events and "left_masked" not in events  # the documented differences stay out
    if (conf, kl) != (0.9, 0.01):
        assert events.get("ready", 0) > 0 and events.get("fallback", 0) > 0  # both branches compared


def test_the_reference_itself():
    """KLASS's `stable_confident_decode` from a checkout (LLaDA's mask id and vocabulary size), against the
    harness and the transcription."""
    mod = reference_module("DLM_HARNESS_KLASS_SRC", "src/model/llada_klass.py", "shkim0116/KLASS")
    den = ContextDenoiser(seed=2, vocab_size=126464, mask_id=126336, max_len=40)
    ids = prompts(3)
    for steps, gen_length, block, conf, kl, history, strategy in CASES:
        batch = harness_klass(den, ids, gen_length, steps, block, conf, kl, history, strategy)
        for r in range(ids.shape[0]):
            ref, used = mod.stable_confident_decode(RefModel(den), None, ids[r:r + 1], gen_length, steps, block,
                                                    temperature=0.0, conf_threshold=conf, kl_threshold=kl,
                                                    kl_history_length=history, alg="klass",
                                                    unmask_strategy=strategy)
            mine, mine_used = reference_klass(RefModel(den), ids[r:r + 1], gen_length, steps, block, den.mask_id,
                                              conf, kl, history, strategy, {})
            assert torch.equal(ref, mine) and used == mine_used, (steps, block, strategy, r)
            assert torch.equal(batch.tokens[r:r + 1], cut(ref[:, ids.shape[1]:], den)), (steps, block, strategy, r)


# -- what the loop adds, the helpers, the options --------------------------------------------------
def test_stability_saves_passes():
    """Loose thresholds commit several tokens per pass (fewer passes than tokens); impossible ones
    fall back to one token per pass, the low-confidence order."""
    den = ContextDenoiser(seed=2)
    ids = prompts()
    loose = SAMPLERS.build("klass", {"conf_threshold": 0.3, "kl_threshold": 1.0})(den, ids, generator=None,
                                                                                  gen_length=16)
    never = SAMPLERS.build("klass", {"conf_threshold": 1.0})(den, ids, generator=None, gen_length=16)
    low = SAMPLERS.build("low_confidence", {"confidence_dtype": "float64"})(den, ids, generator=None, gen_length=16)
    assert loose.steps < 16 and never.steps == 16
    assert torch.equal(never.tokens, low.tokens)


def test_the_last_step_of_a_block_commits_what_is_left():
    """With fewer steps than tokens, a ready step can commit fewer than the schedule's count; the
    block's last step then commits every mask left (the reference would leave them masked)."""
    den = ContextDenoiser(seed=2)
    ids = prompts()
    out = SAMPLERS.build("klass", {"steps": 4, "block_length": 8, "conf_threshold": 0.5, "kl_threshold": 0.1,
                                   "unmask_strategy": "max_conf"})(den, ids, generator=None, gen_length=16)
    assert (out.tokens != den.mask_id).all() and (out.commit_step >= 0).all()
    events = {}
    for r in range(ids.shape[0]):
        reference_klass(RefModel(den), ids[r:r + 1], 16, 4, 8, den.mask_id, 0.5, 0.1, 2, "max_conf", events)
    assert events.get("left_masked", 0) > 0  # the setting where the reference differs


def test_sampled_scores_follow_the_row_generators():
    den = ContextDenoiser(seed=2)
    ids = prompts()
    sampler = SAMPLERS.build("klass", {"temperature": 0.5, "conf_threshold": 0.5, "kl_threshold": 0.1})

    def run():
        return sampler(den, ids, generator=[torch.Generator().manual_seed(i) for i in range(6)], gen_length=16)

    a, b = run(), run()
    greedy = SAMPLERS.build("klass", {"conf_threshold": 0.5, "kl_threshold": 0.1})(den, ids, generator=None,
                                                                                   gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, greedy.tokens)


def test_helpers_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.75, 0.0]], dtype=torch.float64)
    want = 0.5 * math.log(2.0) + 0.5 * math.log(2 / 3)
    assert kl_divergence(p, q).item() == pytest.approx(want, abs=1e-9)
    ready = torch.tensor([[True, False, True, True], [False, False, False, False]])
    value = torch.tensor([[0.2, 0.9, 0.7, 0.7], [0.1, 0.2, 0.3, 0.4]])
    assert pick_one(ready, value, largest=True).tolist() == [[False, False, True, False], [False] * 4]
    assert pick_one(ready, value, largest=False).tolist() == [[True, False, False, False], [False] * 4]


@pytest.mark.parametrize("params", [{"conf_threshold": 1.5}, {"kl_threshold": -1.0}, {"history_length": 0},
                                    {"unmask_strategy": "random"}, {"steps": 0}])
def test_bad_options_are_refused(params):
    with pytest.raises(HarnessError):
        SAMPLERS.build("klass", params)


def test_refuses_a_block_model():
    class Block(ContextDenoiser):
        block_size = 4

    with pytest.raises(HarnessError, match="block-diffusion"):
        SAMPLERS.build("klass", {})(Block(), prompts(1), generator=None, gen_length=8)
