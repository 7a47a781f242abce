"""Pieces every masked-likelihood estimator shares.

`uniform` draws every random number through `seeding.rand` (batch-invariant rows);
`subset_masks` masks an exact number of scored positions as a uniform random subset (count laws);
`completion_logprobs` scores many noised copies in as few forward passes as memory allows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.batching import logits_capped
from harness.models.block_attention import block_size_of
from harness.seeding import rand


def completion_logprobs(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor | None,
                        completion: torch.Tensor, noised: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """log p(o_k | c, x_t) at every completion position for each noised copy.

    prompt [B, P] (shared by a row's copies) or [B, n, P] (each copy its own, e.g. with prompt
    tokens masked as diffu-GRPO does), completion [B, L], noised [B, n, L] (completion with some
    positions = mask) -> [B, n, L]. All B·n copies go through the model in as few passes as
    `max_tokens` allows, lowered for a large vocabulary so the logits fit (batching.logits_capped;
    never one sample at a time). With `shift_logits` (Dream-style models)
    position k is read from the logits at k-1 (docs/methods.md §1, choice 5). Log-probabilities are
    computed in float32 at least (float64 models keep float64, for exact ground truth).
    """
    B, n, L = noised.shape
    P = prompt.shape[-1]
    prompts = prompt if prompt.dim() == 3 else prompt[:, None].expand(B, n, P)  # [B, n, P]
    x = torch.cat([prompts, noised], 2).reshape(B * n, P + L)  # [Bn, T]
    attn = None
    if prompt_mask is not None:
        attn = torch.cat([prompt_mask.bool()[:, None].expand(B, n, P), torch.ones_like(noised, dtype=torch.bool)], 2)
        attn = attn.reshape(B * n, P + L)
    target = completion[:, None].expand(B, n, L).reshape(B * n, L)  # [Bn, L]
    # A block model scores each noised block given the clean earlier ones: one pass over
    # [x_t ; x_0] (harness/models/block_attention.py), twice the columns of a plain pass. x_0 of each
    # copy is its own prompt (masked tokens stay masked) and the clean completion.
    block = block_size_of(denoiser) is not None
    clean = torch.cat([prompts, completion[:, None].expand(B, n, L)], 2).reshape(B * n, P + L) if block else None
    rows = max(1, logits_capped(max_tokens, getattr(denoiser, "vocab_size", None)) // ((P + L) * (1 + block)))
    out = []
    for lo in range(0, B * n, rows):
        hi = min(lo + rows, B * n)
        a = None if attn is None else attn[lo:hi]
        logits = denoiser.logits_denoise(x[lo:hi], clean[lo:hi], a) if block else denoiser.logits(x[lo:hi], a)
        logits = logits[:, P - 1:P + L - 1] if denoiser.shift_logits else logits[:, P:]
        # Upcast inside the kernel (no separate float32 copy of bf16 logits); fp64 stays fp64.
        logp = F.log_softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        out.append(torch.gather(logp, -1, target[lo:hi, :, None]).squeeze(-1))  # [r, L]
    return torch.cat(out).view(B, n, L)


def uniform(generator, B: int, *shape: int, device=None) -> torch.Tensor:
    """[B, *shape] float64 uniforms through `seeding.rand` (one generator, or B per-row ones, so
    rows are batch-invariant), drawn on the generator's device and moved to `device`."""
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    u = rand(generator, B, *shape, dtype=torch.float64, device=g.device if g is not None else "cpu")
    return u if device is None else u.to(device)


def subset_masks(u: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Exactly `count` of the valid positions, a uniform random subset: the smallest keys win.

    u [B, n, L] uniform keys, valid [B, L] bool (scored positions), count [B, n] (clipped to the
    row's number of valid positions) -> masks [B, n, L] bool.
    """
    B, n, L = u.shape
    valid = valid.bool()[:, None, :].expand(B, n, L)
    keys = torch.where(valid, u, torch.full_like(u, 2.0))  # invalid positions sort last
    ranks = keys.argsort(-1).argsort(-1)  # [B, n, L] rank of each position's key
    return (ranks < count[..., None]) & valid


def prompt_masks(prompt_mask: torch.Tensor, m: int, p: float, generator) -> torch.Tensor:
    """[B, P] real-token mask -> [B, m, P] bool: each real prompt token masked i.i.d. with prob p.

    One seed per (row, sample) comes from the row's generator; its uniforms are laid on the real
    tokens from the last one backwards, so left padding does not change a row's draws.

    The B·m seeded draws are the only loop (one reused generator, written in place); laying them
    on the prompt positions is one gather.
    """
    real = prompt_mask.bool().cpu()
    B, P = real.shape
    seeds = rand(generator, B, m, dtype=torch.float64)  # [B, m]
    counts = real.sum(1).tolist()  # real tokens per row
    width = max(counts, default=0)
    u = torch.ones(B, m, max(width, 1), dtype=torch.float64)  # u[b, i, k]: k-th real token from the end
    ints = (seeds * 2.0**53).long().tolist()  # exact: seeds are multiples of 2^-53
    g = torch.Generator()
    for b, n in enumerate(counts):
        if n == 0:
            continue
        for row, seed in zip(u[b, :, :n].unbind(0), ints[b]):  # [n] views, one per sample
            g.manual_seed(seed)
            row.uniform_(generator=g)  # = torch.rand(n, generator=g, dtype=float64)
    k = (real.flip(1).long().cumsum(1) - 1).flip(1).clamp_min(0)  # [B, P] rank of a real token from the end
    vals = u.gather(2, k[:, None, :].expand(B, m, P))  # [B, m, P]
    return (vals < p) & real[:, None, :]
