"""`autoregressive`: the exact log-likelihood of a causal LM, the AR baseline of the estimator studies.

log p(o | c) = Σ_{k=1..L} m_k · log p(o_k | c, o_<k)        (chain rule; m = completion_mask)

One forward pass over [c, o] gives every conditional at once: with causal attention the logits at
absolute position j-1 see exactly the tokens before j, so the token at j is read from logits[j-1]
(`shift_logits`). The value is exact, hence deterministic: n = 1 and no draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


@ESTIMATORS.register("autoregressive", summary="exact chain-rule log-likelihood of a causal LM (AR baseline)")
@dataclass(frozen=True, kw_only=True)
class Autoregressive:
    """Exact chain-rule log-likelihood of a causal LM (AR baseline)."""

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    elbo_target: ClassVar[bool] = False  # exactly log p of a causal model: no masked ELBO to target
    masks: ClassVar[str] = "none"
    noise: ClassVar[str] = "causal"  # the models it applies to: causal LMs only (plan-time check in config.py)

    def nfe_for_batch(self, batch: int) -> int:
        return batch  # one pass per sequence

    def __call__(self, denoiser, prompt: torch.Tensor, completion: torch.Tensor,
                 completion_mask: torch.Tensor, *, generator: torch.Generator | None = None,
                 prompt_mask: torch.Tensor | None = None, draws: dict | None = None) -> Estimate:
        if not denoiser.shift_logits:
            raise HarnessError(
                "the autoregressive estimator needs a causal (shifted-logits) model such as "
                "hf_causal; this model predicts each position from itself (a masked denoiser)"
            )
        B, P = prompt.shape
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt, dtype=torch.bool)  # [B, P]
        # o_1 is read from the logits of the last prompt token, so every row needs one (a BOS).
        if P == 0 or not bool(prompt_mask[:, -1].all()):
            raise HarnessError("the autoregressive estimator needs at least one real prompt token "
                               "per row, ending at the last column (left-padded prompts)")
        L = completion.shape[1]
        x = torch.cat([prompt, completion], 1)  # [B, P + L]
        attn = torch.cat([prompt_mask.bool(), torch.ones_like(completion, dtype=torch.bool)], 1)
        logits = denoiser.logits(x, attn)[:, P - 1:P + L - 1]  # [B, L, V]: row k predicts o_k
        logp = F.log_softmax(logits.float(), -1)
        per_token = torch.gather(logp, -1, completion[..., None]).squeeze(-1)  # [B, L]
        per_token = torch.where(completion_mask.bool(), per_token, torch.zeros_like(per_token))
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws={}, n=1)
