"""`left_to_right`: the exact log-likelihood of a masked diffusion LM decoded left to right (JustGRPO).

Decoding one token per step in position order (block length 1: at step t the past o_<t is clean,
the future masked, and o_t is drawn from the model's conditional at position t) is an
autoregressive policy whose likelihood the chain rule gives exactly:

  per_token[b, t] = log p(o_t | c, o_<t, x_{≥t} = mask)      for every scored t (completion_mask)
  sequence        = Σ_t per_token[b, t] = log P_L2R(o_S | c)

Only scored positions are masked (positions outside completion_mask stay clean, the harness rule);
at scored position t every scored position >= t is masked. Scoring the whole canvas
(completion_mask all True) is JustGRPO's reference, LeapLabTHU/JustGRPO grpo.py `logprob_loss`:
for t in range(gen_length), x = [prompt, o_<t, mask × (gen_length − t)], log_softmax of the
logits at prompt_len + t, gathered at o_t. Scoring up to the first EOS is the probability that
left-to-right decoding produces the completion up to its EOS (the later tokens are decoded after
it and marginalise out).

Deterministic: no draws, n = 1, and its exact moments are its value with variance 0. It is not an
ELBO (`elbo_target` False): the value is log P of one decoding order, a lower bound of nothing in
particular and generally above the ELBO's any-order average. One copy per position, all through
the model together in as few passes as `max_tokens` allows: NFE = L per sequence (the canvas
length, as the reference's loop over gen_length); no `nfe_for_batch`, since L is known only from
the batch (the planner then skips its plan-time NFE check; the meter counts every pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs
from harness.registry import ESTIMATORS
from harness.types import Estimate


def left_to_right_noised(completion: torch.Tensor, scored: torch.Tensor, mask_id: int) -> torch.Tensor:
    """[B, L] completion, [B, L] bool scored -> [B, L, L] copies: copy t masks every scored position >= t."""
    L = completion.shape[1]
    future = torch.arange(L, device=completion.device)[None, :] >= torch.arange(L, device=completion.device)[:, None]
    hidden = future[None] & scored.bool()[:, None, :]  # [B, L(copy t), L(position)]
    return torch.where(hidden, mask_id, completion[:, None, :])


@ESTIMATORS.register("left_to_right", summary="exact log-likelihood of left-to-right decoding (JustGRPO)")
@dataclass(frozen=True, kw_only=True)
class LeftToRight:
    """Exact log-likelihood of the masked denoiser decoded left to right: Σ_t log p(o_t | c, o_<t, masked future).

    Source: LeapLabTHU/JustGRPO grpo.py `logprob_loss` (the per-position loop over gen_length)."""

    metric: ClassVar[str] = "left_to_right"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    elbo_target: ClassVar[bool] = False  # exact log P of one decoding order, not the any-order ELBO
    masks: ClassVar[str] = "order"
    max_tokens: int = 65536

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator=None,
                 prompt_mask=None, draws=None) -> Estimate:
        scored = completion_mask.bool()
        noised = left_to_right_noised(completion, scored, denoiser.mask_id)  # [B, L, L]
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised, self.max_tokens)
        diag = torch.diagonal(logp, dim1=1, dim2=2).double()  # [B, L] copy t read at position t
        per_token = torch.where(scored, diag, torch.zeros_like(diag))
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws={}, n=1)
