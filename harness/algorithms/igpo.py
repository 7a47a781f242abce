"""`igpo`: inpainting-guided policy optimisation (IGPO, arXiv 2509.10396; METHODS.md §2).

Objective (the reference run, facebookresearch/igpo run_igpo.sh: use_gspo=true, d1_masking=true;
trainer_igpo.py IGPOTrainer.compute_loss): the whole completion canvas (T positions, post-EOS
padding included) is masked and scored by one_step without prompt masking; the sequence ratio is
ρ_i = exp(Σ_{k<T} (ℓ_θ,ik − ℓ_old,ik) / T) (GSPO-style, length-normalised), broadcast to every
token; per-token k3 KL to π_ref; loss = Σ over the counted tokens / their number (Σ/Σmask over
the batch), where the counted tokens are every canvas position except the dropped hint tokens.
Clip ε = 0.2, β = 0.01. Options: `loss_tokens="completion"` counts and scores only the completion up
to its first EOS; `ratio="sequence"` with `sequence_scale="none"` is exp(ΣΔℓ) with k3 on the summed
difference (the earlier harness objective, whose ratio and KL grow with the length). Exploration fix: when all G rewards of a group are 0 (no learning signal),
`n_hinted` of its completions are re-generated with a fragment of the reference solution inpainted:
a prefix of ⌈ρ·n⌉ reference tokens (n = reference length with its EOS, ρ ~ U(hint_min, hint_max)),
written into the canvas before decoding and never masked (the sampler's `fixed` canvas). Hint
tokens were not sampled by the policy, so only the top `entropy_top` fraction of them by the
policy's predictive entropy (one no-grad all-masked pass, counted as likelihood NFE) count in the
loss: k = max(1, ⌊top·n_hint⌋) of them (`entropy_round="floor"`, the reference's
`max(1, int(n·ratio))`; "ceil" rounds up); the other hint tokens are removed from the loss mask.
Not reproduced: the reference re-generates all G rows with hints and keeps only correct ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from harness.algorithms.grpo import GRPO
from harness.registry import ALGORITHMS
from harness.samplers._base import select_topk, token_entropy
from harness.tasks.base import reward
from harness.text import completion_mask, encode_completions, upto_first_eos


def hint_canvas(reference: torch.Tensor, ratio: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, L] reference tokens (EOS-padded), [B] ratios -> [B, L] fixed tokens (−1 = free): the
    first ⌈ratio·n⌉ tokens of each reference (n = its length with the EOS)."""
    n = upto_first_eos(reference, eos_id)  # [B]
    k = torch.ceil(ratio * n.double()).long().clamp(1)  # [B]
    pos = torch.arange(reference.shape[1])[None, :]
    return torch.where(pos < k[:, None], reference, torch.full_like(reference, -1))


def entropy_keep(entropy: torch.Tensor, hint: torch.Tensor, top: float, rounding: str = "floor") -> torch.Tensor:
    """[B, L] entropies, [B, L] bool hint tokens -> [B, L] bool: the hint tokens in the top `top`
    fraction of each row's hint tokens by entropy, k = max(1, floor or ceil of top·n) per row with
    hints (ties: lower position)."""
    keys = torch.where(hint, entropy.double(), torch.full_like(entropy, -math.inf, dtype=torch.float64))
    n = hint.sum(1)  # [B]
    k = (torch.floor if rounding == "floor" else torch.ceil)(top * n.double()).long()  # [B]
    k = torch.where(n > 0, k.clamp_min(1), torch.zeros_like(k))
    return hint & select_topk(keys, k)  # non-hint keys are -inf: never selected


@ALGORITHMS.register("igpo")
@dataclass(frozen=True, kw_only=True)
class IGPO(GRPO):
    """IGPO: GSPO-ratio GRPO over the whole canvas (clip 0.2, β 0.01, one_step) + reference hints inpainted
    into all-wrong groups."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=lambda: {"p_prompt": 0.0})
    ratio: Literal["token", "sequence", "gspo"] = "gspo"
    sequence_scale: Literal["none", "length", "canvas"] = "canvas"
    loss_tokens_over: Literal["canvas", "completion"] = "canvas"
    entropy_round: Literal["floor", "ceil"] = "floor"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    hint_min: float = 0.2
    hint_max: float = 0.6
    n_hinted: int = 0  # completions re-generated per all-wrong group; 0: half the group
    entropy_top: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.hint_min <= self.hint_max <= 1:
            raise ValueError(f"need 0 < hint_min <= hint_max <= 1, got {self.hint_min}, {self.hint_max}")
        if not 0 <= self.entropy_top <= 1 or self.n_hinted < 0:
            raise ValueError("need 0 <= entropy_top <= 1 and n_hinted >= 0")

    def loss_tokens(self, rollout):
        if self.loss_tokens_over == "completion":
            return rollout["loss_mask"]
        return ~(rollout["completion_mask"] & ~rollout["loss_mask"])  # every canvas position but dropped hints

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration, n_iterations):
        scored = torch.ones_like(completion_mask) if self.loss_tokens_over == "canvas" else completion_mask
        return super().terms(denoiser, prompt, prompt_mask, completion, scored, generator=generator, draws=draws,
                             iteration=iteration, n_iterations=n_iterations)

    def after_rollout(self, loop, rollout, step):
        G = loop.opts.group_size
        r = rollout["rewards"].view(-1, G)
        wrong = (r.max(1).values == 0).nonzero().squeeze(1)  # all-wrong groups
        if len(wrong) == 0:
            return rollout
        n_h = min(self.n_hinted or G // 2, G)
        rows = (wrong[:, None] * G + torch.arange(n_h)[None]).reshape(-1)  # [H]
        items = [rollout["items"][i] for i in rows.tolist()]
        eos, L = loop.policy.eos_id, rollout["tokens"].shape[1]
        reference = encode_completions(loop.policy.tokenizer, [it.reference for it in items], L, eos)  # [H, L]
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64)
                         for g in loop.generators(step, rows, "hint")])  # [H]
        fixed = hint_canvas(reference, self.hint_min + (self.hint_max - self.hint_min) * u, eos)
        gen = loop.sample(rollout["prompt"][rows], rollout["prompt_mask"][rows],
                          loop.generators(step, rows, "hint-rollout"), fixed=fixed)
        cmask = completion_mask(gen.tokens, eos)
        hint = (fixed >= 0) & cmask  # [H, L]
        with torch.no_grad():  # the policy's entropy at every completion position, all masked
            noised = torch.where(cmask, loop.policy.mask_id, gen.tokens)
            x = torch.cat([rollout["prompt"][rows], noised], 1)
            attn = torch.cat([rollout["prompt_mask"][rows], torch.ones_like(noised, dtype=torch.bool)], 1)
            logits = loop.meters["policy"].logits(x, attn)[:, -L:]
            entropy = token_entropy(F.softmax(logits.float(), -1))  # [H, L]
        keep = entropy_keep(entropy, hint, self.entropy_top, self.entropy_round)
        out = dict(rollout)
        for key, val in (("tokens", gen.tokens), ("commit_step", gen.commit_step), ("completion_mask", cmask),
                         ("loss_mask", cmask & (~hint | keep))):
            out[key] = rollout[key].clone()
            out[key][rows] = val
        out["rewards"] = rollout["rewards"].clone()
        out["rewards"][rows] = torch.tensor([reward(loop.task, it, t) for it, t in zip(items, gen.text)],
                                            dtype=torch.float64)
        return out
