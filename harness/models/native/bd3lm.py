"""Native BD3-LM (kuleshov-group/bd3lms; Arriola et al. 2025, arXiv 2503.09573): torch only, no remote code.

Architecture as the public Hugging Face file (`models/hf/modeling_bd3lm.py`, `DITBackbone`) computes it:
a DiT over token embeddings (`vocab_embed.embedding`), `n_blocks` `DDiTBlock`s (LayerNorm without bias
in float32 times a weight, adaLN shift/scale/gate from the conditioning vector c, one fused q/k/v
projection without bias, rotary on q and k (half-split, theta 10000, cos/sin from float32 positions),
SDPA with a boolean mask, tanh-GELU MLP with biases, gated residuals) and `DDitFinalLayer` (adaLN
shift/scale, an untied linear head with bias). c = silu(sigma_map(sigma)) with sigma zeroed: the
released checkpoints have `time_conditioning: false`, so c is one constant vector and the model
takes no noise level (a checkpoint with time conditioning is refused: the harness gives a denoiser
no t). Tensor names are the checkpoint's (`backbone.*`; the persistent buffers
`backbone.rotary_emb.inv_freq`, `sampling_eps_min/max` load as buffers and are not read: the rotary
frequencies are computed at every call).

Numerics: BD3-LM runs its backbone under `autocast(dtype=float32)` (`DITBackbone.precision`, and
`Diffusion.forward`), i.e. in float32 whatever the weights' dtype. This module does the same: weights
may be stored in bfloat16 (`dtype: bfloat16` halves their memory) and every matmul runs on float32
activations with the weights cast to float32; the logits are float32. Its numbers are then the
reference's with the same bf16-rounded weights held in float32 (up to float32 rounding: the
matmuls run on fresh float32 copies). The reference file itself does not run with bf16 weights on
CPU: its float32 LayerNorm output meets a bf16 weight ("mat1 and mat2 must have the same dtype").

Attention (harness/models/block_attention.py): a plain forward attends block-causally (the x_0–x_0
part of `block_diff_mask`, which the reference's `sample_mode` uses); the scoring pass lays
[x_t ; x_0] side by side with the same positions (the reference's training forward) and returns the
x_t half. Positions count a row's real tokens and each group of rows with the same real columns
attends over those columns only, so a left-padded row computes on the very shapes it has alone.
The logits are the backbone's raw output (the mask column included); BD3-LM's `subs`
parameterisation (mask logit −1e6) is applied by the adapter (harness/models/bd3lm.py).

KV cache (block decoding): `forward_with_cache` keeps the keys/values (after rotary) of a prefix of
finished blocks, `forward_cached` runs the columns right after it against the cache (and with
`store` appends them: BD3-LM's store_kv pass). Exact up to float32 rounding of the other matmul
shapes (measured max|diff| 3e-8 on the tiny preset); a prefix that ends inside some row's block is
refused (that block's tokens would miss their later block-mates).

Config keys read (BD3LMConfig's): block_size, vocab_size, model_length, hidden_dim, cond_dim,
n_blocks, n_heads, adaln, var_min, cross_attn, causal, time_conditioning. `attn_backend` ('flex' in the
released configs) is not read: flex and sdpa compute the same masked attention (diffusion.py itself
switches an hf_dit backbone to sdpa); `dropout` is off in evaluation. `cross_attn: false`, `causal:
true` and `time_conditioning: true` are refused with the key named (use impl: remote).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.block_attention import block_ids, decode_mask, dual_stream_mask, positions
from harness.models.native.common import Output, check_config, must
from harness.models.standins.standin_layers import attend
from harness.types import HarnessError

MODEL_TYPES = ("bd3lm",)
FREQ_DIM = 256  # TimestepEmbedder's frequency_embedding_size
ROPE_BASE = 10000.0

SUPPORTED = {
    "cross_attn": (True, (True,)),
    "causal": (False, (False,)),
    "time_conditioning": (False, (False,)),
}


@dataclass(frozen=True)
class BD3LMConfig:
    block_size: int
    vocab_size: int
    model_length: int
    hidden_dim: int
    cond_dim: int
    n_blocks: int
    n_heads: int
    adaln: bool = True
    var_min: bool = True  # the checkpoint holds the sampling_eps_min/max buffers
    mlp_ratio: int = 4
    sampling_eps_min: float = 1e-3
    sampling_eps_max: float = 0.999
    initializer_range: float = 0.02

    def get_text_config(self):
        return self

    @classmethod
    def from_json(cls, cfg: dict, where: str) -> "BD3LMConfig":
        check_config(cfg, SUPPORTED, where, "BD3-LM", MODEL_TYPES)
        out = cls(block_size=int(must(cfg, "block_size", where)), vocab_size=int(must(cfg, "vocab_size", where)),
                  model_length=int(must(cfg, "model_length", where)), hidden_dim=int(must(cfg, "hidden_dim", where)),
                  cond_dim=int(must(cfg, "cond_dim", where)), n_blocks=int(must(cfg, "n_blocks", where)),
                  n_heads=int(must(cfg, "n_heads", where)), adaln=bool(cfg.get("adaln", True)),
                  var_min=bool(cfg.get("var_min", True)),
                  sampling_eps_min=float(cfg.get("sampling_eps_min", 1e-3)),
                  sampling_eps_max=float(cfg.get("sampling_eps_max", 0.999)),
                  initializer_range=float(cfg.get("initializer_range", 0.02)))
        if out.block_size < 1 or out.hidden_dim % out.n_heads or (out.hidden_dim // out.n_heads) % 2:
            raise HarnessError(f"{where}: block_size {out.block_size} must be >= 1 and hidden_dim {out.hidden_dim} "
                               f"a multiple of n_heads {out.n_heads} with an even head dimension")
        return out

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("mlp_ratio", "initializer_range")}
        out.update(model_type="bd3lm", architectures=["BD3LM"], cross_attn=True, causal=False,
                   time_conditioning=False, attn_backend="sdpa")
        return out


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` in float32 (BD3-LM's float32 autocast): weights of any dtype, float32 activations."""
    b = None if layer.bias is None else layer.bias.float()
    return F.linear(x, layer.weight.float(), b)


class LayerNorm(nn.Module):
    """BD3-LM's LayerNorm: float32 statistics, no bias, times `weight`."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), [self.dim]) * self.weight.float()[None, None, :]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary(pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pos [B, S] -> cos, sin [B, 1, S, Dh] in float32 (Rotary: inv_freq from float32 exponents)."""
    inv = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim))
    freqs = pos.float()[..., None] * inv  # [B, S, Dh/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, Dh]
    return emb.cos(), emb.sin()


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, hidden, bias=True), nn.SiLU(),
                                 nn.Linear(hidden, hidden, bias=True))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 256]
        return linear(F.silu(linear(emb, self.mlp[0])), self.mlp[2])


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids].float()


class DDiTBlock(nn.Module):
    def __init__(self, cfg: BD3LMConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.n_heads, self.adaln = cfg.n_heads, cfg.adaln
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d, bias=True), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d, bias=True))
        if cfg.adaln:
            self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d, bias=True)

    def forward(self, x, cos, sin, c, plan, impl: str, past=None):
        """-> (x, k, v): k/v [B, H, S, Dh] of x's columns after rotary (what a KV cache keeps); with
        `past` (cached k, v of the columns before x's) the queries attend to past + own columns."""
        B, S, D = x.shape
        if self.adaln:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = linear(c, self.adaLN_modulation)[:, None].chunk(6, 2)
            # [1, 1, D] each: broadcast over the batch
            h = modulate(self.norm1(x), shift_a, scale_a)
        else:
            h = self.norm1(x)
        qkv = linear(h, self.attn_qkv).view(B, S, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, S, Dh]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        ka, va = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        a = attend_grouped(q, ka, va, plan, impl).transpose(1, 2).reshape(B, S, D)
        if self.adaln:
            x = x + gate_a * linear(a, self.attn_out)
            m = modulate(self.norm2(x), shift_m, scale_m)
            return x + gate_m * linear(F.gelu(linear(m, self.mlp[0]), approximate="tanh"), self.mlp[2]), k, v
        x = x + linear(a, self.attn_out)
        return x + linear(F.gelu(linear(self.norm2(x), self.mlp[0]), approximate="tanh"), self.mlp[2]), k, v


class DDitFinalLayer(nn.Module):
    def __init__(self, cfg: BD3LMConfig):
        super().__init__()
        self.adaln = cfg.adaln
        self.norm_final = LayerNorm(cfg.hidden_dim)
        self.linear = nn.Linear(cfg.hidden_dim, cfg.vocab_size)
        if cfg.adaln:
            self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.hidden_dim, bias=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.adaln:
            shift, scale = linear(c, self.adaLN_modulation)[:, None].chunk(2, dim=2)
            x = modulate(self.norm_final(x), shift, scale)
        else:
            x = self.norm_final(x)
        return linear(x, self.linear)


class Rotary(nn.Module):
    """Holds the checkpoint's `inv_freq` buffer so it loads by name; the frequencies used are
    recomputed at every call (`rotary`)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.register_buffer("inv_freq", torch.zeros(head_dim // 2))


class DITBackbone(nn.Module):
    def __init__(self, cfg: BD3LMConfig):
        super().__init__()
        self.vocab_embed = EmbeddingLayer(cfg.hidden_dim, cfg.vocab_size)
        if cfg.adaln:
            self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary_emb = Rotary(cfg.hidden_dim // cfg.n_heads)
        self.blocks = nn.ModuleList([DDiTBlock(cfg) for _ in range(cfg.n_blocks)])
        self.output_layer = DDitFinalLayer(cfg)


def grouping(real: torch.Tensor | None):
    """Rows with the same real (non-pad) columns attend together over those columns only.

    real [B, S] bool or None -> None (no padding: one pass over every column) or a list of
    (rows [g], query columns [c], key columns [c]) groups."""
    if real is None or bool(real.all()):
        return None
    patterns, inverse = torch.unique(real, dim=0, return_inverse=True)
    out = []
    for i in range(len(patterns)):
        cols = patterns[i].nonzero().squeeze(1)
        out.append(((inverse == i).nonzero().squeeze(1), cols, cols))
    return out


def attend_grouped(q, k, v, plan, impl: str) -> torch.Tensor:
    """q [B, H, Sq, Dh], k/v [B, H, Sk, Dh]; plan = (allowed [B, 1, Sq, Sk] bool, groups: None or
    (rows, query columns or None for all, key columns)) -> [B, H, Sq, Dh] (pad query columns zero)."""
    allowed, groups = plan
    if groups is None:
        return attend(q, k, v, allowed, impl)
    out = torch.zeros_like(q)
    for rows, qc, kc in groups:
        r = rows[:, None]
        sub = allowed[rows] if qc is None else allowed[rows][:, :, qc]
        kk, vv = k[r, :, kc].transpose(1, 2), v[r, :, kc].transpose(1, 2)
        if qc is None:
            out[rows] = attend(q[rows], kk, vv, sub[..., kc], impl)
        else:
            out[r, :, qc] = attend(q[r, :, qc].transpose(1, 2), kk, vv, sub[..., kc], impl).transpose(1, 2)
    return out


@dataclass
class BlockKVCache:
    """Per-layer keys/values [B, H, Tc, Dh] (after rotary) of the canvas columns [0, Tc): finished
    blocks, exact under block-causal attention (no later column is ever visible to them).
    `length` and `take` are what the samplers use (harness/samplers/_cache.py)."""

    keys: list
    values: list

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def take(self, rows: torch.Tensor) -> "BlockKVCache":
        return BlockKVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


class BD3LM(nn.Module):
    """BD3-LM's DiT: ids [B, T] -> logits [B, T, V] (float32), block-causal or dual-stream."""

    def __init__(self, cfg: BD3LMConfig, attn: str = "sdpa"):
        super().__init__()
        self.config, self.impl = cfg, attn
        self.backbone = DITBackbone(cfg)
        if cfg.var_min:  # loaded by name, not read
            self.register_buffer("sampling_eps_min", torch.tensor(cfg.sampling_eps_min))
            self.register_buffer("sampling_eps_max", torch.tensor(cfg.sampling_eps_max))

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.output_layer.linear

    def _check_length(self, T: int) -> None:
        if T > self.config.model_length:
            raise HarnessError(f"BD3-LM: a sequence of {T} tokens exceeds the checkpoint's model_length "
                               f"{self.config.model_length} (its positions were trained up to there)")

    def run(self, ids: torch.Tensor, allowed: torch.Tensor, pos: torch.Tensor, groups, keep: int | None = None,
            cache: BlockKVCache | None = None, want_kv: bool = False):
        """The backbone over ids [B, S] with the attention pattern `allowed` [B, 1, S, Sk] bool, position
        ids pos [B, S] and the padding groups (`grouping`) -> logits [B, keep or S, V], and with
        `want_kv` the per-layer k/v of the S columns. With `cache`, keys are the cache's then ids'."""
        cfg = self.config
        bb = self.backbone
        x = bb.vocab_embed(ids)  # [B, S, D] float32
        c = None
        if cfg.adaln:  # time_conditioning off: sigma = 0, the same c for every row (computed on one row, so
            c = F.silu(bb.sigma_map(torch.zeros(1, device=ids.device)))  # batch-invariant to the last bit)
        cos, sin = rotary(pos, cfg.hidden_dim // cfg.n_heads)
        plan = (allowed, groups)
        ks, vs = [], []
        for i, block in enumerate(bb.blocks):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, k, v = block(x, cos, sin, c, plan, self.impl, past)
            if want_kv:
                ks.append(k)
                vs.append(v)
        if keep is not None:
            x = x[:, :keep]
        logits = bb.output_layer(x, c)
        return (logits, ks, vs) if want_kv else logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> Output:
        """A plain forward: block-causal attention (blocks from each row's first real token)."""
        B, T = input_ids.shape
        self._check_length(T)
        allowed = decode_mask(attention_mask, B, T, self.config.block_size, input_ids.device)
        pos = positions(attention_mask, B, T, input_ids.device)
        real = None if attention_mask is None else attention_mask.bool()
        return Output(self.run(input_ids, allowed, pos, grouping(real)))

    def forward_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> Output:
        """The scoring pass over [x_t ; x_0] (BD3-LM's training forward) -> the x_t half's logits [B, T, V]."""
        B, T = xt.shape
        self._check_length(T)
        allowed = dual_stream_mask(attention_mask, B, T, self.config.block_size, xt.device)
        pos = positions(attention_mask, B, T, xt.device)
        real = None if attention_mask is None else attention_mask.bool().repeat(1, 2)
        return Output(self.run(torch.cat([xt, x0], 1), allowed, pos.repeat(1, 2), grouping(real), keep=T))

    def forward_pattern(self, input_ids: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> Output:
        """A forward with an explicit attention pattern [B, 1, S, S] bool (True: attend) and position ids
        [B, S]; a query column that sees nothing must not be read (it attends to itself)."""
        eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        allowed = allowed | (~allowed.any(-1, keepdim=True) & eye)
        return Output(self.run(input_ids, allowed, position_ids, None))

    # -- the exact cache of finished blocks (block decoding) ------------------------------------------
    def forward_with_cache(self, input_ids, attention_mask=None, keep: torch.Tensor | None = None):
        """A plain pass -> (logits [B, T, V], the cache of the columns `keep` = [0, n), or None);
        `attention_mask` may cover a longer canvas (its first T columns are read)."""
        B, T = input_ids.shape
        self._check_length(T)
        attention_mask = None if attention_mask is None else attention_mask[:, :T]
        allowed = decode_mask(attention_mask, B, T, self.config.block_size, input_ids.device)
        pos = positions(attention_mask, B, T, input_ids.device)
        real = None if attention_mask is None else attention_mask.bool()
        if keep is None:
            return self.run(input_ids, allowed, pos, grouping(real)), None
        n = int(keep.numel())
        if not torch.equal(keep.cpu(), torch.arange(n)):
            raise HarnessError("BD3-LM: a KV cache keeps a prefix of the canvas (the finished blocks) only")
        real = torch.full((B,), n) if attention_mask is None else attention_mask[:, :n].long().sum(1).cpu()
        if bool((real % self.config.block_size).any()):
            raise HarnessError(f"BD3-LM: the cached columns [0, {n}) end inside a block of some row (real tokens "
                               f"{real.tolist()}, block_size {self.config.block_size}); only finished blocks are "
                               "exact in a cache")
        logits, ks, vs = self.run(input_ids, allowed, pos, grouping(real), want_kv=True)
        return logits, BlockKVCache([k[:, :, :n] for k in ks], [v[:, :, :n] for v in vs])

    def forward_cached(self, input_ids, cache: BlockKVCache, columns: torch.Tensor, attention_mask=None,
                       store: bool = False):
        """Logits [B, Tq, V] of the canvas columns `columns` (contiguous, right after the cache), attending
        to the cache and themselves block-causally; `attention_mask` covers the canvas up to the last
        query column at least. With `store`, -> (logits, the cache extended by these columns): the
        reference's store_kv pass (`DDiTBlock.get_qkv`)."""
        B, Tq = input_ids.shape
        Tc = cache.length
        dev = input_ids.device
        if not torch.equal(columns.cpu(), torch.arange(Tc, Tc + Tq)):
            raise HarnessError(f"BD3-LM: a cached pass runs the columns right after the cache ({Tc}...), got "
                               f"{columns.tolist()}")
        T = Tc + Tq
        self._check_length(T)
        am = None if attention_mask is None else attention_mask[:, :T].bool()
        if am is not None and not bool(am[:, Tc:].all()):
            raise HarnessError("BD3-LM: a cached pass over padding columns (left padding belongs in the cache)")
        blk = block_ids(am, B, T, self.config.block_size, dev)  # [B, T], pads -1
        allowed = ((blk[:, None, :] <= blk[:, Tc:, None]) & (blk[:, None, :] >= 0))[:, None]  # [B, 1, Tq, T]
        groups = None
        if am is not None and not bool(am.all()):
            patterns, inverse = torch.unique(am, dim=0, return_inverse=True)
            groups = [((inverse == i).nonzero().squeeze(1), None, patterns[i].nonzero().squeeze(1))
                      for i in range(len(patterns))]
        pos = positions(am, B, T, dev)[:, Tc:]
        if not store:
            return self.run(input_ids, allowed, pos, groups, cache=cache)
        logits, ks, vs = self.run(input_ids, allowed, pos, groups, cache=cache, want_kv=True)
        return logits, BlockKVCache([torch.cat([a, b], 2) for a, b in zip(cache.keys, ks)],
                                    [torch.cat([a, b], 2) for a, b in zip(cache.values, vs)])
