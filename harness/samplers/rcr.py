"""`rcr`: Running Confidence Remasking, the training-free sampler of MDPO (arXiv
2508.13148; autonomousvision/mdpo `src/mdlm_generation_utils.py`, `diffusion_generate` with `rcr=True`).

Low-confidence decoding commits a token once and for all, with the confidence it had at that step;
RCR keeps every committed token revisable. Inside each semi-autoregressive block of `block_length`,
step t of the block's S steps runs one full pass and then:

1. every masked position up to the block's end gets a proposal (argmax, or a draw at `temperature`
   > 0) and is committed; each position's *running confidence* is the confidence its token had at
   the step it was (last) committed;
2. except at the block's last step, the r_t committed positions with the lowest running confidence
   are masked again, anywhere in the completion so far (earlier blocks included): r_t is what the
   schedule still has to commit after this step, so c_t = n0 - r_t tokens of the block's n0 stay.

The count follows MaskGIT's mask-ratio schedule γ (the reference's `get_num_transfer_tokens_maskgit`,
`gamma_func`; `mode`): r_t = floor(n0 · γ((t + 1) / S)) with γ(r) = 1 - r (linear), cos(πr/2)
(cosine) or 1 - r^k (`pow<k>`), clipped to [1e-6, 1] and computed in float64 as the reference does.
A low-confidence token committed early is thus replaced when later, better-informed steps propose
tokens that the model is more sure of: the running confidence ranks old and new commits together.

`confidence` is the reference's `conf_alg`: "probability" (its "llada"/"origin": p(x0)), "margin"
(`topk_margin`: top-1 minus top-2) or "entropy" (Σ p log(p + 1e-10)); p is softmax(logits /
temperature) after `top_p` then `top_k` filtering (that order, as the reference), so with `top_p` < 1
the confidence is renormalised over the nucleus even at temperature 0. The reference's "random" is
not offered (it reads its proposals before drawing them and raises). Temperature > 0 draws the
proposal from that distribution (the reference's `dists.Categorical`, here SDAR's multinomial rule
through the row's generator, `multinomial_rows`).

Reference defaults kept: temperature 0, mode linear, confidence p(x0), no top-p / top-k. The
harness's conventions: `gen_length` None is the task's length, `block_length` None is one block
(MDPO's RCR runs use one block of 512: `test_llada.py`, `recipes/.../mdpo/config_demo.yaml`; the
function's own default is 32), `steps` None is one pass per token; `steps` must be a multiple of the
number of blocks (the reference floors steps / blocks). NFE is exactly `steps` per sequence.

Documented differences: the mask token is never proposed (its logit is -inf; the reference keeps
it, a trained model gives it ~0); only committed completion positions up to the block's end can be
re-masked (the reference ranks the whole row with unset confidences read as 1.0, so on a tie at
exactly 1.0 it can re-mask a prompt or later-block position); equal running confidences re-mask the
lower position first (the reference's torch.topk leaves that order unspecified). `commit_step`
records each position's last commit. Whole-canvas passes only: no KV cache (re-masking changes
earlier blocks), no guidance (the reference has none), and no block-diffusion models.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.models.block_attention import block_size_of
from harness.registry import SAMPLERS
from harness.samplers._base import (
    aligned,
    check_sampling,
    finish,
    masked_canvas,
    multinomial_rows,
    select_topk,
    steps_plan,
    top_k_filter,
    top_p_filter,
)
from harness.types import HarnessError

CONFIDENCES = ("probability", "margin", "entropy")
_POW = re.compile(r"pow(\d+(\.\d+)?)")


def mask_ratio(mode: str, r: float) -> float:
    """MaskGIT's γ(r): the fraction of the block still masked after the fraction r of its steps
    (mdpo `src/llada/generate.py`, `gamma_func`), clipped to [1e-6, 1]."""
    if mode == "linear":
        value = 1 - r
    elif mode == "cosine":
        value = math.cos(r * math.pi / 2)
    elif _POW.fullmatch(mode):
        value = 1 - r ** float(mode[3:])
    else:
        raise ValueError(f"mode must be linear, cosine or pow<k> (e.g. pow2), got {mode!r}")
    return min(max(value, 1e-6), 1.0)


def maskgit_counts(n0: torch.Tensor, steps: int, mode: str) -> torch.Tensor:
    """[B] masked counts -> [B, steps] tokens the schedule commits at each step (float64 ratios, as
    the reference's `get_num_transfer_tokens_maskgit`: committed after step t = n0 - floor(n0·γ((t+1)/S)))."""
    ratios = torch.tensor([mask_ratio(mode, (t + 1) / steps) for t in range(steps)], dtype=torch.float64)
    done = n0[:, None].double() - torch.floor(n0[:, None].double() * ratios.to(n0.device)[None, :])  # [B, S]
    return torch.cat([done[:, :1], done[:, 1:] - done[:, :-1]], 1).long()


def step_confidence(probs: torch.Tensor, x0: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, n, V] distribution, [B, n] proposals -> [B, n] the reference's `conf_alg` score (higher: surer)."""
    if kind == "probability":
        return torch.gather(probs, -1, x0[..., None]).squeeze(-1)
    if kind == "margin":
        top = probs.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    return (probs * torch.log(probs + 1e-10)).sum(-1)  # negative entropy, the reference's epsilon


@SAMPLERS.register("rcr")
@dataclass(frozen=True, kw_only=True)
class RunningConfidenceRemasking:
    """MDPO's Running Confidence Remasking: commit every masked token each step, then re-mask the least confident
    commits (running confidence, earlier blocks included) down to the MaskGIT schedule's count."""

    gen_length: int | None = None  # None: the task's length
    block_length: int | None = None  # None: one block
    steps: int | None = None  # passes per sequence; None: one per token
    temperature: float = 0.0  # > 0: proposals drawn from softmax(logits / temperature) (top_p, top_k applied)
    top_p: float = 1.0  # nucleus filter (applied before top_k, as the reference)
    top_k: int = 0  # 0: no top-k filter
    mode: str = "linear"  # MaskGIT mask-ratio schedule: linear, cosine, pow<k>
    confidence: Literal["probability", "margin", "entropy"] = "probability"  # the reference's conf_alg

    adaptive: ClassVar[bool] = False
    budget_knobs: ClassVar[tuple[str, ...]] = ("steps",)  # read by the report (harness/report/samplers.py)

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        for name in ("gen_length", "block_length", "steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        check_sampling(self.temperature, self.top_p, self.top_k)
        mask_ratio(self.mode, 0.5)  # validates the mode
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {self.confidence!r}")

    def plan(self, gen_length: int) -> tuple[int, int, int]:
        """(L, block, steps per block)."""
        return steps_plan(self.gen_length or gen_length, self.block_length, self.steps)

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        L, block, per_block = self.plan(gen_length)
        return (L // block) * per_block

    def propose(self, logits: torch.Tensor, mask_id: int,
                generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, n, V] logits -> (proposals [B, n], their confidence score [B, n], their probability [B, n])."""
        logits[..., mask_id] = -torch.inf
        if self.temperature > 0:
            logits = logits / self.temperature
        logits = top_k_filter(top_p_filter(logits, self.top_p), self.top_k)
        probs = F.softmax(logits.float(), -1)  # [B, n, V]
        x0 = probs.argmax(-1) if self.temperature == 0 else multinomial_rows(probs, generator)
        prob = torch.gather(probs, -1, x0[..., None]).squeeze(-1)
        return x0, step_confidence(probs, x0, self.confidence), prob

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32):
        if block_size_of(denoiser) is not None:
            raise HarnessError("rcr re-masks tokens of earlier blocks, which a block-diffusion model has frozen in its "
                               "cache; use low_confidence, threshold or entropy_bound on a block model")
        L, block, per_block = self.plan(gen_length)
        B, P = prompt.shape
        mask_id = denoiser.mask_id
        dev = prompt.device
        x, attn = masked_canvas(prompt, prompt_mask, L, mask_id)
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        running = torch.zeros(B, L, dtype=torch.float32, device=dev)  # confidence at the last commit
        commit_conf = torch.full((B, L), float("nan"), device=dev)  # probability at the last commit, NaN if masked
        shift = bool(getattr(denoiser, "shift_logits", False))
        n = 0  # passes so far
        for b in range(L // block):
            hi = (b + 1) * block  # completion columns [0, hi) are open: earlier blocks and this one
            n0 = (x[:, P + b * block:P + hi] == mask_id).sum(1)  # [B]
            counts = maskgit_counts(n0, per_block, self.mode)  # [B, S]
            for s in range(per_block):
                logits = aligned(denoiser.logits(x, attn), P, P + hi, shift).clone()  # [B, hi, V]
                x0, conf, prob = self.propose(logits, mask_id, generator)
                canvas = x[:, P:P + hi]
                masked = canvas == mask_id
                canvas = torch.where(masked, x0, canvas)
                running[:, :hi] = torch.where(masked, conf.float(), running[:, :hi])
                commit_step[:, :hi] = torch.where(masked, n, commit_step[:, :hi])
                commit_conf[:, :hi] = torch.where(masked, prob.float(), commit_conf[:, :hi])
                if s < per_block - 1:
                    r = counts[:, s + 1:].sum(1)  # [B] what the schedule still commits after this step
                    score = torch.where(running[:, :hi] == 0, 1.0, running[:, :hi])  # the reference's 0 -> 1.0
                    remask = select_topk(-score, r)  # the r lowest running confidences
                    canvas = torch.where(remask, mask_id, canvas)
                    commit_step[:, :hi] = torch.where(remask, -1, commit_step[:, :hi])
                    commit_conf[:, :hi] = torch.where(remask, float("nan"), commit_conf[:, :hi])
                x[:, P:P + hi] = canvas
                n += 1
        return finish(denoiser, x, P, commit_step, n, commit_conf=commit_conf)
