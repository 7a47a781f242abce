"""`one_step`: diffu-GRPO's one-step mean-field log-likelihood (d1, arXiv 2504.12216).

per_token_k = (1/n) Σ_{i=1..n} log p(o_k | c'_i, all of o masked),   sequence = Σ_k per_token_k
                                                                       (docs/methods.md §1)

Every completion position is masked, the padding after the first EOS included (`mask_padding=True`,
the default: d1's `forward_process`, wd1 and IGPO mask the whole completion canvas, so the model
cannot read the completion's length off the clean padding); only scored positions (completion_mask
True) get terms. `mask_padding=False` keeps the padding clean (the earlier harness rule; it leaks
the length, about 0.2 nats per sequence on the tiny model). Each real prompt token (prompt_mask True) is replaced by
the mask token i.i.d. with probability `p_prompt`, independently in each of the `n_mc` draws, and
the n_mc draws are averaged (d1 uses one draw per inner iteration).

`p_prompt`: 0.15 in the paper's configs (the default here); 0.3 is the d1 code's default
(`p_mask_prompt`); 0 gives the baseline without prompt masking used by IGPO and DiffuCoder.

What it targets: not the ELBO and not log p(o). It is the mean-field (fully factorised) sum
Σ_k log p(o_k | c', nothing revealed), the t = 1 end of the ELBO integrand; it equals log p(o) only
when the model's conditionals ignore the other completion tokens (a factorised denoiser). With
p_prompt > 0 it is also averaged over corrupted prompts. NFE: n_mc per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs, prompt_masks
from harness.registry import ESTIMATORS
from harness.types import Estimate


@ESTIMATORS.register("one_step")
@dataclass(frozen=True, kw_only=True)
class OneStep:
    """diffu-GRPO one-step mean-field: all of o masked, prompt tokens masked i.i.d. with p_prompt."""

    metric: ClassVar[str] = "one_step"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    elbo_target: ClassVar[bool] = False  # the mean-field one-step term, a different quantity
    masks: ClassVar[str] = "independent"
    p_prompt: float = 0.15
    n_mc: int = 1
    mask_padding: bool = True  # mask the post-EOS padding too (the reference code); False: keep it clean
    max_tokens: int = 65536

    def __post_init__(self):
        if not 0.0 <= self.p_prompt <= 1.0:
            raise ValueError(f"p_prompt must be in [0, 1], got {self.p_prompt}")
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def nfe_for_batch(self, batch: int) -> int:
        return self.n_mc * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        cmask = completion_mask.bool()
        real = torch.ones_like(prompt, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        if draws is None:
            # Padding-invariant draws: a row's prompt masks do not depend on the batch's width.
            if self.p_prompt > 0:
                draws = {"prompt_masks": prompt_masks(real, self.n_mc, self.p_prompt, generator)}  # [B, n, P]
            else:  # deterministic: nothing to draw
                draws = {"prompt_masks": torch.zeros(B, self.n_mc, prompt.shape[1], dtype=torch.bool)}
        pmasks = draws["prompt_masks"].to(prompt.device)
        n = pmasks.shape[1]
        prompts = torch.where(pmasks, denoiser.mask_id, prompt[:, None, :])  # [B, n, P]
        hidden = torch.ones_like(cmask) if self.mask_padding else cmask  # [B, L] positions replaced by [M]
        noised = torch.where(hidden, denoiser.mask_id, completion)[:, None, :].expand(B, n, L)  # [B, n, L]
        logp = completion_logprobs(denoiser, prompts, prompt_mask, completion, noised, self.max_tokens)
        per_token = (logp.double() * cmask[:, None, :]).mean(1)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=n)
