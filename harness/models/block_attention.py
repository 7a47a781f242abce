"""Block-causal attention: the one convention every block-diffusion model in the harness follows.

Block diffusion (BD3-LM, arXiv 2503.09573; SDAR, JetAstra/SDAR; TraDo, Gen-Verse/dLLM-RL) splits a
sequence into blocks of `block_size` tokens: attention is bidirectional inside a block and causal
across blocks, so finished blocks can sit in an exact KV cache while the current one is denoised.

Conventions (shared by the tiny block model, SDAR/TraDo and BD3-LM adapters, the samplers and the
estimators):

- **Positions** count a row's real tokens: ``pos = cumsum(attention_mask) - 1``, so a left-padded
  row has the positions (and the blocks) it has alone, and batching never changes a number.
- **Blocks** are ``pos // block_size``: aligned to the row's first real token, as SDAR's and
  dLLM-RL's ``block_diffusion_generate`` align them to position 0 of an unpadded row. The prompt's
  last partial block is one attention block with the first generated tokens.
- **Plain forward / decoding** (`decode_mask`): query i sees key j iff j is a real token and
  block(j) <= block(i).
- **Scoring / training** (`dual_stream_mask`): one pass over ``[x_t ; x_0]`` (width 2T, the same
  position ids in both halves), logits read from the x_t half. x_t block b sees x_t block b and
  x_0 blocks < b; x_0 block b sees x_0 blocks <= b; x_0 never sees x_t (BD3-LM
  ``modeling_bd3lm.py`` ``block_diff_mask``; SDAR's modeling file has the same function). Every
  noised block is thus scored given the *clean* earlier blocks, which is what the block-diffusion
  ELBO needs; a plain forward of a noised sequence would let block b see noised earlier blocks.

A block model (a Denoiser with an integer ``block_size``) implements, besides ``logits``,

    logits_denoise(xt [B, T], x0 [B, T], attention_mask [B, T] | None) -> logits [B, T, V]

the x_t half of the dual-stream pass, which the masked estimators call for a block model
(harness/estimators/_common.py `completion_logprobs`); a full-attention model's plain logits of a
noised sequence already condition on nothing else.

**An explicit pattern** (`logits_pattern`, optional): layouts that are not the shared convention,
such as TraceRL's block-model training rows ``[prompt ; clean response ; noisy response]`` (prompt
blocks aligned to the prompt's end, response blocks from the response start; Gen-Verse/dLLM-RL
``train/rl_trado.py``, built by harness/algorithms/trace_rl.py), go through

    logits_pattern(x [B, S], allowed [B, 1, S, S] bool (True: attend), position_ids [B, S]) -> [B, S, V]

which applies the pattern and positions as given (a query column that sees nothing attends to
itself and must not be read). The meter counts it as one full pass of S columns.
"""
from __future__ import annotations

import torch


def block_size_of(denoiser) -> int | None:
    """The model's block size (None: full bidirectional attention). Works through the meter."""
    size = getattr(denoiser, "block_size", None)
    return int(size) if size else None


def positions(attention_mask: torch.Tensor | None, B: int, T: int, device=None) -> torch.Tensor:
    """[B, T] position ids counting real tokens only (left pads get position 0, as in the models)."""
    if attention_mask is None:
        return torch.arange(T, device=device).expand(B, T)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def block_ids(attention_mask: torch.Tensor | None, B: int, T: int, block_size: int, device=None) -> torch.Tensor:
    """[B, T] block index of every column (pads: -1)."""
    blk = positions(attention_mask, B, T, device) // block_size
    if attention_mask is not None:
        blk = torch.where(attention_mask.bool(), blk, torch.full_like(blk, -1))
    return blk


def _keep_pad_rows_finite(allowed: torch.Tensor) -> torch.Tensor:
    """A query that sees no key (a pad column) attends to itself, so SDPA returns no NaN; its
    output is never read."""
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    empty = ~allowed.any(-1, keepdim=True)
    return allowed | (empty & eye)


def decode_mask(attention_mask: torch.Tensor | None, B: int, T: int, block_size: int, device=None) -> torch.Tensor:
    """[B, 1, T, T] bool (True: attend) for a plain forward of a block model."""
    blk = block_ids(attention_mask, B, T, block_size, device)  # [B, T]
    real = blk >= 0
    allowed = (blk[:, None, :] <= blk[:, :, None]) & real[:, None, :] & real[:, :, None]  # [B, Tq, Tk]
    return _keep_pad_rows_finite(allowed)[:, None]


def dual_stream_mask(attention_mask: torch.Tensor | None, B: int, T: int, block_size: int,
                     device=None) -> torch.Tensor:
    """[B, 1, 2T, 2T] bool for one pass over [x_t ; x_0] (see the module docstring)."""
    blk = block_ids(attention_mask, B, T, block_size, device)  # [B, T]
    real = blk >= 0
    both = real[:, :, None] & real[:, None, :]  # [B, Tq, Tk]
    q, k = blk[:, :, None], blk[:, None, :]
    xt_xt = (q == k) & both  # the noised block itself
    xt_x0 = (k < q) & both  # clean earlier blocks
    x0_x0 = (k <= q) & both  # block-causal over the clean stream
    x0_xt = torch.zeros_like(xt_xt)
    top = torch.cat([xt_xt, xt_x0], 2)
    bottom = torch.cat([x0_xt, x0_x0], 2)
    return _keep_pad_rows_finite(torch.cat([top, bottom], 1))[:, None]
