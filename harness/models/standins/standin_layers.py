"""Layers shared by the LLaDA and Dream stand-ins and the native models (harness/models/native):
RMSNorm, rotary embeddings, attention with SDPA or eager kernels and grouped key/value heads,
SwiGLU, and a Fast-dLLM style KV cache.

This file travels with the stand-ins as transformers remote code: it imports torch only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 (as Llama/Qwen2 do), then back to the input dtype.
        x = h.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(h.dtype)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """[B, T] (or [T]) positions -> cos, sin [B, 1, T, Dh] (or [1, 1, T, Dh]), the half-split layout."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    pos = positions.float()
    if pos.dim() == 1:
        pos = pos[None]
    ang = pos[..., None] * inv  # [B, T, Dh/2]
    ang = torch.cat([ang, ang], -1)[:, None]  # [B, 1, T, Dh]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh]: rotate the halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attend(q, k, v, key_mask: torch.Tensor | None, impl: str) -> torch.Tensor:
    """q [B, H, Tq, Dh], k/v [B, Hkv, Tk, Dh] (grouped heads), key_mask [B, 1, Tq|1, Tk] bool
    (True = attend) or None -> [B, H, Tq, Dh]. Full (bidirectional) attention."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if impl == "eager":
        scores = (q @ k.transpose(-1, -2)).float() / q.shape[-1] ** 0.5  # [B, H, Tq, Tk]
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        return scores.softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n·Dh] -> [B, n, T, Dh]."""
    B, T, D = x.shape
    return x.view(B, T, n, D // n).transpose(1, 2)


def merge_heads(a: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dh] -> [B, T, H·Dh]."""
    B, H, T, Dh = a.shape
    return a.transpose(1, 2).reshape(B, T, H * Dh)


def swiglu(h: torch.Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> torch.Tensor:
    return down(F.silu(gate(h)) * up(h))


@dataclass
class KVCache:
    """Per-layer keys/values [B, Hkv, Tc, Dh] (rotary applied) of the canvas columns `columns` [Tc]:
    the object the harness's prefix/dual-cache samplers pass back (`length`, `take`)."""

    keys: list
    values: list
    columns: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.columns.numel())

    def take(self, rows: torch.Tensor) -> "KVCache":
        return KVCache([k[rows] for k in self.keys], [v[rows] for v in self.values], self.columns)


def key_order(cached: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The permutation putting cat(cached, new) columns back in canvas order, so that attention
    sums its terms in the same order as a full pass does."""
    return torch.argsort(torch.cat([cached, columns]), stable=True)


def padding_mask(attention_mask: torch.Tensor | None, key_cols: torch.Tensor | None = None):
    """[B, T] (1 = real token) -> [B, 1, 1, Tk] bool key-padding mask (of `key_cols`), or None."""
    if attention_mask is None:
        return None
    m = attention_mask.bool()
    if key_cols is not None:
        m = m[:, key_cols]
    return m[:, None, None, :]


def decoder_stack(blocks, h, cos, sin, key_mask, impl, cache: KVCache | None = None,
                  order: torch.Tensor | None = None, keep: torch.Tensor | None = None):
    """Run pre-norm blocks over h [B, T, D]; each block has `qkv(h, cos, sin)` -> q, k, v (rotary
    applied) and `finish(h, a)` -> h after the attention output a [B, H, T, Dh] and the MLP.

    With `cache` + `order`: h holds some columns only; their keys/values join the cached ones in
    canvas order. With `keep`: also return the keys/values of the columns `keep` (a new cache)."""
    keys, values = [], []
    for i, blk in enumerate(blocks):
        q, k, v = blk.qkv(h, cos, sin)
        if keep is not None:
            keys.append(k[:, :, keep])
            values.append(v[:, :, keep])
        if cache is not None:
            k = torch.cat([cache.keys[i], k], 2)[:, :, order]
            v = torch.cat([cache.values[i], v], 2)[:, :, order]
        h = blk.finish(h, attend(q, k, v, key_mask, impl))
    return h, (keys, values)
