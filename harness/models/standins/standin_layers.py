"""Layers shared by the LLaDA and Dream stand-ins and the native models (harness/models/native):
RMSNorm, rotary embeddings, attention with SDPA or eager kernels and grouped key/value heads,
SwiGLU, a Fast-dLLM style KV cache, the decoder loop, and the two architectures' blocks (LLaDA's
`LLaDABlock`, Dream's `DreamDecoderLayer` and `DreamBaseModel`) with the checkpoints' parameter
names. The blocks take either config class (the stand-in's PretrainedConfig or the native
dataclass): they read the same attribute names from both.

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


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh] rotated in cos's dtype and cast back to x's: LLaDA's rope_full_precision
    rotates bf16 q/k in float32; when cos is in x's dtype (Dream, the stand-ins) both casts are no-ops."""
    return apply_rotary(x.to(cos.dtype), cos, sin).to(x.dtype)


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
                  order: torch.Tensor | None = None, keep: torch.Tensor | None = None, attention=attend):
    """Run pre-norm blocks over h [B, T, D]; each block has `qkv(h, cos, sin)` -> q, k, v (rotary
    applied) and `finish(h, a)` -> h after the attention output a [B, H, T, Dh] and the MLP.

    Each layer attends with `attention(q, k, v, key_mask, impl)` (`attend` by default; the native
    models pass their left-padding attention with `key_mask` already turned into its plan).
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
        h = blk.finish(h, attention(q, k, v, key_mask, impl))
    return h, (keys, values)


# -- LLaDA (modeling_llada.py, block_type llama): weights under model.transformer.blocks.N -----------
class LLaDANames:
    """The generic config names that transformers and the harness read, over LLaDA's own keys
    (a mixin of both LLaDA config classes: the stand-in's and the native one)."""

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers


class LLaDABlock(nn.Module):
    """RMSNorm -> q/k/v -> rotary -> attention -> attn_out, then RMSNorm -> SwiGLU -> ff_out (no biases)."""

    def __init__(self, cfg):
        super().__init__()
        d, dh = cfg.d_model, cfg.d_model // cfg.n_heads
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * dh, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * dh, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)  # the SwiGLU gate
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)

    def qkv(self, h, cos, sin):
        """h [B, T, D] -> q [B, H, T, Dh], k/v [B, Hkv, T, Dh]; q, k rotated in cos's dtype."""
        x = self.attn_norm(h)
        q, k = heads(self.q_proj(x), self.n_heads), heads(self.k_proj(x), self.n_kv)
        return rotate(q, cos, sin), rotate(k, cos, sin), heads(self.v_proj(x), self.n_kv)

    def finish(self, h, a):
        h = h + self.attn_out(merge_heads(a))
        return h + swiglu(self.ff_norm(h), self.ff_proj, self.up_proj, self.ff_out)


# -- Dream (modeling_dream.py, Qwen2 blocks): weights under model.{embed_tokens, layers.N, norm} -------
class DreamAttention(nn.Module):
    """The projections of Qwen2 attention: biased q/k/v, grouped key/value heads, unbiased o_proj."""

    def __init__(self, cfg):
        super().__init__()
        d, self.n_heads, self.n_kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        dh = d // self.n_heads
        self.q_proj = nn.Linear(d, d, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv * dh, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv * dh, bias=True)
        self.o_proj = nn.Linear(d, d, bias=False)


class DreamMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class DreamDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DreamAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DreamMLP(cfg)

    def qkv(self, h, cos, sin):
        """h [B, T, D] -> q [B, H, T, Dh], k/v [B, Hkv, T, Dh]; q, k rotated (cos in h's dtype)."""
        a, x = self.self_attn, self.input_layernorm(h)
        q, k = heads(a.q_proj(x), a.n_heads), heads(a.k_proj(x), a.n_kv)
        return rotate(q, cos, sin), rotate(k, cos, sin), heads(a.v_proj(x), a.n_kv)

    def finish(self, h, a):
        h = h + self.self_attn.o_proj(merge_heads(a))
        m = self.mlp
        return h + swiglu(self.post_attention_layernorm(h), m.gate_proj, m.up_proj, m.down_proj)


class DreamBaseModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
