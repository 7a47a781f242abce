"""Pieces every masked-likelihood estimator shares: chunked scoring of many masked copies."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def completion_logprobs(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor | None,
                        completion: torch.Tensor, noised: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """log p(o_k | c, x_t) at every completion position for each noised copy.

    prompt [B, P], completion [B, L], noised [B, n, L] (completion with some positions = mask)
    -> [B, n, L]. All B·n copies go through the model in as few passes as `max_tokens` allows
    (never one sample at a time). With `shift_logits` (Dream-style models) position k is read
    from the logits at k-1 (METHODS.md §1, choice 5).
    """
    B, n, L = noised.shape
    P = prompt.shape[1]
    x = torch.cat([prompt[:, None].expand(B, n, P), noised], 2).reshape(B * n, P + L)  # [Bn, T]
    attn = None
    if prompt_mask is not None:
        attn = torch.cat([prompt_mask[:, None].expand(B, n, P), torch.ones_like(noised, dtype=torch.bool)], 2)
        attn = attn.reshape(B * n, P + L)
    target = completion[:, None].expand(B, n, L).reshape(B * n, L)  # [Bn, L]
    rows = max(1, max_tokens // (P + L))
    out = []
    for lo in range(0, B * n, rows):
        hi = min(lo + rows, B * n)
        logits = denoiser.logits(x[lo:hi], None if attn is None else attn[lo:hi])  # [r, T, V]
        logits = logits[:, P - 1:P + L - 1] if denoiser.shift_logits else logits[:, P:]
        logp = F.log_softmax(logits.float(), -1)
        out.append(torch.gather(logp, -1, target[lo:hi, :, None]).squeeze(-1))  # [r, L]
    return torch.cat(out).view(B, n, L)
