"""`rcr` (Running Confidence Remasking) against MDPO's own decoder, token for token.

Reference: autonomousvision/mdpo (commit e6ae439), `src/mdlm_generation_utils.py`,
`diffusion_generate(..., rcr=True)`, with `src/llada/generate.py` `get_num_transfer_tokens_maskgit`
and `gamma_func`. `reference_rcr` below transcribes it line by line (line numbers of that commit in
the comments) for the greedy path and runs in CI; `test_the_reference_itself` runs the repository's
own function when $DLM_HARNESS_MDPO_SRC names a checkout (skipped otherwise), against both the
harness and the transcription.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.registry import SAMPLERS
from harness.samplers.rcr import mask_ratio, maskgit_counts
from harness.types import HarnessError
from tests.samplers._reference import ContextDenoiser, RefModel, cut, reference_module

torch.set_num_threads(1)


# -- the transcription ----------------------------------------------------------------------------
def ref_gamma(r: float, mode: str):
    """generate.py `gamma_func` L23-37 (linear, cosine, pow modes), clipped to [1e-6, 1] (L37)."""
    if mode == "linear":
        ratio = 1 - r  # L25
    elif mode == "cosine":
        ratio = np.cos(r * np.pi / 2)  # L27
    else:
        ratio = 1 - r ** float(mode.replace("pow", ""))  # L28-30
    return np.clip(ratio, 1e-6, 1)  # L37: a numpy float64


def ref_counts(block_mask: torch.Tensor, steps: int, mode: str) -> torch.Tensor:
    """generate.py `get_num_transfer_tokens_maskgit` L40-52."""
    total = block_mask.sum(dim=1, keepdim=True)  # L45
    ratios = torch.tensor([[ref_gamma((t + 1) / steps, mode) for t in range(steps)] for _ in total[:, 0]])  # L47
    done = total - torch.floor(total.expand(total.shape[0], steps) * ratios)  # L48-50 (float64: numpy ratios)
    return torch.cat([done[:, :1], done[:, 1:] - done[:, :-1]], 1).to(torch.int64)  # L51-52


def ref_top_p(logits, top_p):
    """mdlm_generation_utils.py `top_p_logits` L7-18."""
    sorted_logits, order = torch.sort(logits, descending=True)
    remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = 0
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, remove)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def ref_top_k(logits, top_k):
    """mdlm_generation_utils.py `top_k_logits` L20-25."""
    top_k = min(top_k, logits.size(-1))
    return logits.masked_fill(logits < torch.topk(logits, top_k)[0][..., -1, None], torch.finfo(logits.dtype).min)


def reference_rcr(model, prompt, mask_id, steps, gen_length, block_length, conf_alg="llada", mode="linear",
                  top_p=None, top_k=None, events=None):
    """`diffusion_generate` L27-130 with rcr=True at temperature 0, one sequence ([1, P] prompt).
    `events` (a dict) counts re-masked positions, those of an earlier block, and those outside the
    open columns [P, end) (a tie at 1.0 with the unset confidences)."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)  # L37
    x[:, :P] = prompt.clone()  # L38
    num_blocks = gen_length // block_length  # L42
    steps_per_block = max(1, steps // num_blocks)  # L47
    overtime_confidence = torch.zeros_like(x, dtype=torch.float32)  # L48
    for nb in range(num_blocks):  # L49
        start, end = P + nb * block_length, P + (nb + 1) * block_length  # L50-51
        counts = ref_counts(x[:, start:end] == mask_id, steps_per_block, mode)  # L53-54
        for i in range(steps_per_block):  # L56
            mask_index = x == mask_id  # L57
            logits = model(x).logits  # L60 (temperature 0: no scaling, L63-64)
            if top_p is not None and top_p < 1:
                logits = ref_top_p(logits, top_p)  # L65-66
            if top_k is not None:
                logits = ref_top_k(logits, top_k)  # L67-68
            p = F.softmax(logits, dim=-1)  # L75
            confidence, x0 = p.max(dim=-1)  # L83
            if conf_alg == "entropy":  # L86-89
                confidence = torch.sum(p * torch.log(p + 1e-10), dim=-1)
            elif conf_alg == "topk_margin":  # L90-96
                sorted_probs, _ = torch.sort(p, dim=-1, descending=True)
                confidence = sorted_probs[:, :, 0] - sorted_probs[:, :, 1]
            confidence[:, end:] = -np.inf  # L99
            x0 = torch.where(mask_index, x0, x)  # L101
            confidence = torch.where(mask_index, confidence, torch.tensor(-np.inf))  # L105
            _, select = torch.topk(confidence[0], k=counts[0, i:].sum().item())  # L111
            x[0, select] = x0[0, select]  # L112
            overtime_confidence[0, select] = confidence[0, select].clone()  # L113
            if i != steps_per_block - 1:  # L115
                wo_zeros = torch.where(overtime_confidence == 0.0, 1.0, overtime_confidence)[0]  # L116-117
                r = counts[0, i + 1:].sum().item()  # L118
                _, remask = torch.topk(wo_zeros, k=r, largest=False)  # L119-120
                if len(remask) == 0:  # L121-122 (leaves the loop over rows: nothing to re-mask)
                    continue
                x[0, remask] = mask_id  # L123
                if events is not None:
                    events["remasked"] = events.get("remasked", 0) + len(remask)
                    events["earlier_block"] = events.get("earlier_block", 0) + int((remask < start).sum())
                    outside = (remask < P) | (remask >= end)  # a prompt or a later block's position
                    events["outside"] = events.get("outside", 0) + int(outside.sum())
    return x[:, -gen_length:]


# -- fixtures ---------------------------------------------------------------------------------------
def denoiser():
    """Context-dependent predictions with untied confidences (tests/samplers/_reference.py)."""
    return ContextDenoiser(seed=0)


def prompts(n=6, P=5):
    return torch.randint(3, 24, (n, P), generator=torch.Generator().manual_seed(7))


def harness_rcr(den, prompt, gen_length, **params):
    gens = [torch.Generator().manual_seed(i) for i in range(prompt.shape[0])]
    return SAMPLERS.build("rcr", params)(den, prompt, generator=gens, gen_length=gen_length)


CASES = [  # steps, gen_length, block_length, conf_alg, mode, (top_p, top_k)
    (8, 16, 16, "llada", "linear", (None, None)),
    (4, 16, 16, "llada", "linear", (None, None)),
    (12, 24, 8, "llada", "linear", (None, None)),
    (8, 16, 8, "topk_margin", "cosine", (None, None)),
    (6, 18, 6, "entropy", "pow2", (None, None)),
    (8, 16, 4, "llada", "linear", (0.995, 4)),
]
CONF = {"llada": "probability", "topk_margin": "margin", "entropy": "entropy"}


def rcr_params(steps, block, conf_alg, mode, filters):
    params = {"steps": steps, "block_length": block, "mode": mode, "confidence": CONF[conf_alg]}
    if filters[0] is not None:
        params["top_p"] = filters[0]
    if filters[1] is not None:
        params["top_k"] = filters[1]
    return params


@pytest.mark.parametrize("steps,gen_length,block,conf_alg,mode,filters", CASES)
def test_matches_the_transcribed_reference(steps, gen_length, block, conf_alg, mode, filters):
    """Every row of a batch decodes exactly as the reference decodes it alone; the cases re-mask
    tokens, earlier blocks' tokens included (counted in the reference)."""
    den = denoiser()
    ids = prompts()
    out = harness_rcr(den, ids, gen_length, **rcr_params(steps, block, conf_alg, mode, filters))
    events = {}
    for r in range(ids.shape[0]):
        model = RefModel(den)
        ref = reference_rcr(model, ids[r:r + 1], den.mask_id, steps, gen_length, block, conf_alg, mode, *filters,
                            events=events)
        assert torch.equal(out.tokens[r:r + 1], cut(ref, den)), f"row {r}"
        assert model.calls == steps == out.steps
    assert events["remasked"] > 0
    if block < gen_length and conf_alg == "llada" and filters == (None, None):
        assert events["earlier_block"] > 0  # running confidence reached back into a finished block


# top_p 0.9 leaves many positions a nucleus of one token: confidence exactly 1.0, tied with the
# reference's unset confidences (read as 1.0), so its lowest-k pick can fall on a prompt or a later
# block's position (a documented difference).
TIES = (8, 16, 4, "llada", "linear", (0.9, None))


def test_ties_at_one_are_where_the_reference_reaches_outside_the_open_columns():
    """With confidences tied at 1.0 the reference re-masks a position outside [prompt end, block end)
    (here a later block's mask, so one fewer token is re-decided and a later-block position is then
    committed early); the harness re-masks only committed completion tokens and still ends every
    block complete and consistent."""
    den = denoiser()
    ids = prompts()
    steps, gen_length, block, conf_alg, mode, filters = TIES
    events = {}
    for r in range(ids.shape[0]):
        reference_rcr(RefModel(den), ids[r:r + 1], den.mask_id, steps, gen_length, block, conf_alg, mode, *filters,
                      events=events)
    assert events["outside"] > 0, "no tie reached outside the open columns: this case no longer shows the difference"
    out = harness_rcr(den, ids, gen_length, **rcr_params(steps, block, conf_alg, mode, filters))
    assert (out.commit_step >= 0).all() and (out.tokens != den.mask_id).all()


def test_remasking_changes_tokens_against_low_confidence():
    """RCR is not low-confidence decoding in disguise: on this model some outputs differ."""
    den = denoiser()
    ids = prompts()
    rcr = harness_rcr(den, ids, 16, steps=8)
    low = SAMPLERS.build("low_confidence", {"steps": 8})(den, ids, generator=None, gen_length=16)
    assert not torch.equal(rcr.tokens, low.tokens)


def test_the_reference_itself():
    """MDPO's `diffusion_generate` (rcr=True) from a checkout, against the harness and the transcription."""
    mod = reference_module("DLM_HARNESS_MDPO_SRC", "src/mdlm_generation_utils.py", "autonomousvision/mdpo",
                           needs={"src.llada.generate": "src/llada/generate.py"})
    den = denoiser()
    ids = prompts()
    for steps, gen_length, block, conf_alg, mode, filters in CASES + [TIES]:
        out = harness_rcr(den, ids, gen_length, **rcr_params(steps, block, conf_alg, mode, filters))
        for r in range(ids.shape[0]):
            ref, *_ = mod.diffusion_generate(RefModel(den), ids[r:r + 1], den.mask_id, steps=steps,
                                             gen_length=gen_length, block_length=block, temperature=0.0,
                                             conf_alg=conf_alg, mode=mode, rcr=True, top_p=filters[0],
                                             top_k=filters[1])
            mine = reference_rcr(RefModel(den), ids[r:r + 1], den.mask_id, steps, gen_length, block, conf_alg,
                                 mode, *filters)
            assert torch.equal(ref, mine), (steps, gen_length, block, conf_alg, mode, r)
            if filters != TIES[-1]:
                assert torch.equal(out.tokens[r:r + 1], cut(ref, den)), (steps, gen_length, block, conf_alg, r)


# -- the schedule and the options --------------------------------------------------------------------
def test_maskgit_counts_by_hand_and_against_the_reference():
    n0 = torch.tensor([10, 7, 16])
    assert maskgit_counts(n0, 4, "linear")[0].tolist() == [3, 2, 3, 2]  # 10 - floor(10·[.75, .5, .25, 1e-6])
    assert maskgit_counts(n0, 4, "linear")[1].tolist() == [2, 2, 2, 1]  # 7 - floor(7·[.75, .5, .25, 0])
    for mode in ("linear", "cosine", "pow2", "pow0.5"):
        for steps in (1, 3, 4, 7):
            ours = maskgit_counts(n0, steps, mode)
            ref = torch.cat([ref_counts(torch.ones(1, int(n), dtype=torch.bool), steps, mode) for n in n0])
            assert torch.equal(ours, ref), (mode, steps)
            assert (ours.sum(1) == n0).all()
    assert mask_ratio("cosine", 1.0) == 1e-6 and mask_ratio("linear", 0.25) == 0.75


def test_sampled_proposals_follow_the_row_generators():
    den = denoiser()
    ids = prompts()
    a = harness_rcr(den, ids, 16, steps=8, temperature=1.0, top_k=5)
    b = harness_rcr(den, ids, 16, steps=8, temperature=1.0, top_k=5)
    greedy = harness_rcr(den, ids, 16, steps=8)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, greedy.tokens)
    assert (a.commit_step >= 0).all() and (a.tokens != den.mask_id).all()


@pytest.mark.parametrize("params", [{"mode": "log"}, {"confidence": "random"}, {"steps": 0}, {"top_p": 0.0},
                                    {"temperature": -1.0}])
def test_bad_options_are_refused(params):
    with pytest.raises(HarnessError):
        SAMPLERS.build("rcr", params)


def test_steps_must_split_over_the_blocks():
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        SAMPLERS.build("rcr", {"steps": 6, "block_length": 4}).max_nfe_per_sequence(16)
    assert SAMPLERS.build("rcr", {"steps": 8, "block_length": 4}).max_nfe_per_sequence(16) == 8
    assert SAMPLERS.build("rcr", {}).max_nfe_per_sequence(16) == 16


def test_refuses_a_block_model():
    class Block(ContextDenoiser):
        block_size = 4

    with pytest.raises(HarnessError, match="block-diffusion"):
        harness_rcr(Block(), prompts(1), 8, steps=8)
