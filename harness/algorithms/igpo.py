"""`igpo`: inpainting-guided policy optimisation (IGPO, arXiv 2509.10396; docs/methods.md §2).

Objective (the reference run, facebookresearch/igpo run_igpo.sh: use_gspo=true, d1_masking=true;
trainer_igpo.py IGPOTrainer.compute_loss): the whole completion canvas (T positions, post-EOS
padding included) is masked and scored by one_step without prompt masking; the sequence ratio is
ρ_i = exp(Σ_{k<T} (ℓ_θ,ik − ℓ_old,ik) / T) (GSPO-style, length-normalised), broadcast to every
token; per-token k3 KL to π_ref; loss = Σ over the counted tokens / their number (Σ/Σmask over
the batch), where the counted tokens are every canvas position except the dropped hint tokens.
Clip ε = 0.2, β = 0.01. Options: `loss_tokens_over="completion"` counts and scores only the
completion up to its first EOS; `ratio="sequence"` with `sequence_scale="none"` is exp(ΣΔℓ) with
k3 on the summed difference (the earlier harness objective, whose ratio and KL grow with length).

Exploration fix: when all G rewards of a group are 0 (no learning signal), completions are
re-generated with a fragment of the reference solution inpainted:
a prefix of ⌈ρ·n⌉ reference tokens (n = reference length with its EOS, ρ ~ U(hint_min, hint_max)),
written into the canvas before decoding and never masked (the sampler's `fixed` canvas). Hint
tokens were not sampled by the policy, so only the top `entropy_top` fraction of them by the
policy's predictive entropy (one no-grad all-masked pass, counted as likelihood NFE) count in the
loss: k = max(1, ⌊top·n_hint⌋) of them (`entropy_round="floor"`, the reference's
`max(1, int(n·ratio))`; "ceil" rounds up); the other hint tokens are removed from the loss mask.
Which rows (`hint_rows="correct"`, default, the reference's selective replacement): all G rows of an
all-wrong group are re-generated with hints (ratios sorted increasing within the group), and up to
`n_hinted` of the correct ones (score 1; a random subset when more) replace the group's first rows;
a group with no correct hinted row stays as it was. `hint_rows="all"`: the first `n_hinted` rows
are re-generated with hints and replace the originals whatever their reward. The entropy pass
masks the whole canvas, as the reference's d1_masking pass does.
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
    """IGPO: GSPO-ratio GRPO over the whole canvas (clip 0.2, β 0.01, one_step) + hints for all-wrong groups."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=lambda: {"p_prompt": 0.0})
    ratio: Literal["token", "sequence", "gspo"] = "gspo"
    sequence_scale: Literal["none", "length", "canvas"] = "canvas"
    loss_tokens_over: Literal["canvas", "completion"] = "canvas"
    entropy_round: Literal["floor", "ceil"] = "floor"
    hint_rows: Literal["correct", "all"] = "correct"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    hint_min: float = 0.2
    hint_max: float = 0.6
    n_hinted: int = 0  # rows replaced per all-wrong group (the reference's max_replacements); 0: half the group
    entropy_top: float = 0.2
    # run_igpo.sh: per_device_train_batch_size 8 = num_generations 8 (Σ/Σ token_mask per micro-batch)
    micro_batch: float = 1.0

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
        per_group = G if self.hint_rows == "correct" else n_h  # hinted re-generations per all-wrong group
        cand = (wrong[:, None] * G + torch.arange(per_group)[None]).reshape(-1)  # [H] their rows
        items = [rollout["items"][i] for i in cand.tolist()]
        eos, L = loop.policy.eos_id, rollout["tokens"].shape[1]
        reference = encode_completions(loop.policy.tokenizer, [it.reference for it in items], L, eos)  # [H, L]
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64)
                         for g in loop.generators(step, cand, "hint")])  # [H]
        if self.hint_rows == "correct":  # the reference sorts each group's ratios, increasing
            u = u.view(-1, per_group).sort(1).values.reshape(-1)
        fixed = hint_canvas(reference, self.hint_min + (self.hint_max - self.hint_min) * u, eos)
        gen = loop.sample(rollout["prompt"][cand], rollout["prompt_mask"][cand],
                          loop.generators(step, cand, "hint-rollout"), fixed=fixed)
        scores = torch.tensor([reward(loop.task, it, t) for it, t in zip(items, gen.text)], dtype=torch.float64)
        if self.hint_rows == "correct":  # up to n_h correct hinted rows replace the group's first rows
            src, dst = [], []
            for k, grp in enumerate(wrong.tolist()):
                ok = (scores[k * G:(k + 1) * G] >= 1.0).nonzero().squeeze(1) + k * G
                if len(ok) > n_h:
                    pick = loop.generators(step, [grp], "hint-pick")[0]
                    ok = ok[torch.randperm(len(ok), generator=pick)[:n_h]]
                src += ok.tolist()
                dst += [grp * G + i for i in range(len(ok))]
            if not src:
                return rollout
            src, rows = torch.tensor(src), torch.tensor(dst)
        else:
            src, rows = torch.arange(len(cand)), cand
        tokens, commit = gen.tokens[src], gen.commit_step[src]
        cmask = completion_mask(tokens, eos)
        hint = (fixed[src] >= 0) & cmask  # [R, L]
        with torch.no_grad():  # the policy's entropy at every canvas position, the whole canvas masked
            noised = torch.full_like(tokens, loop.policy.mask_id)
            x = torch.cat([rollout["prompt"][rows], noised], 1)
            attn = torch.cat([rollout["prompt_mask"][rows], torch.ones_like(noised, dtype=torch.bool)], 1)
            logits = loop.meters["policy"].logits(x, attn)[:, -L:]
            entropy = token_entropy(F.softmax(logits.float(), -1))  # [R, L]
        keep = entropy_keep(entropy, hint, self.entropy_top, self.entropy_round)
        out = dict(rollout)
        for key, val in (("tokens", tokens), ("commit_step", commit), ("completion_mask", cmask),
                         ("loss_mask", cmask & (~hint | keep))):
            out[key] = rollout[key].clone()
            out[key][rows] = val
        out["rewards"] = rollout["rewards"].clone()
        out["rewards"][rows] = scores[src]
        return out
