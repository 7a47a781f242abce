"""Native LLaDA (GSAI-ML/LLaDA-8B-Base, -8B-Instruct, LLaDA-1.5): torch only, no remote code.

Architecture as the public `modeling_llada.py` with `block_type: llama` computes it: pre-norm
blocks of RMSNorm (float32 statistics) -> q/k/v projections -> rotary (float32 when
`rope_full_precision`, the default) -> full bidirectional attention -> `attn_out`, then RMSNorm ->
SiLU(ff_proj)·up_proj -> ff_out (`LLaDABlock` of standin_layers.py, which the stand-in builds
from too); final `ln_f` and the `ff_out` head (or the tied `wte`). Tensor names are the
checkpoint's (`model.transformer.{wte, blocks.N.*, ln_f, ff_out}`), so the official safetensors
load by name. With the same weights and unpadded input, the logits equal the reference
file's exactly (tests/models/test_native_parity.py).

Besides the plain forward and the Fast-dLLM KV caches, two views the harness's decoders use:
`forward_pattern` applies an explicit [B, 1, S, S] attention pattern and position ids as given
(harness/models/block_attention.py, "An explicit pattern": WINO's shadow block), and
`LLaDALayers` runs the model layer by layer (embed, q/k/v of chosen columns at their rotary
positions, attention, MLP, head) for the approximate caches (harness/samplers/_approx_cache.py).
With the full-attention pattern and the plain positions, `forward_pattern` gives the forward's
numbers exactly, and every layer over every column of `LLaDALayers` gives the forward's logits at
the real columns exactly (tests/models/test_llada_views.py).

Deliberate differences from the reference file, both for padded batches only: the reference builds
a padding mask but calls attention with `attn_mask=None` (left padding leaks into every row) and
numbers positions 0..T-1 over the padding. Here padded keys are masked and positions count real
tokens, so a left-padded row gives the logits it has alone.

Config keys read (config.json, the reference's defaults when absent): d_model, n_heads, n_kv_heads,
multi_query_attention, n_layers, mlp_hidden_size (else mlp_ratio·d_model), vocab_size,
embedding_size, rope_theta, rope_full_precision, rms_norm_eps, weight_tying, input_emb_norm,
scale_logits, mask/eos/pad ids. An absent key that changes the logits but not the tensor shapes
(rope_theta, rms_norm_eps, rope_full_precision, input_emb_norm, scale_logits) takes the default
with a `DefaultedKeyWarning` naming it. Other block types, ALiBi, q/k norms or biases are refused with the
key named (use `impl: remote`). A config without `mask_token_id` gets LLaDA's 126336 when the
vocabulary holds it (the reference code would silently use 50256), else an error naming the key.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.native.common import (
    Output,
    RotaryLayers,
    check_config,
    key_padding,
    left_padding,
    must,
    one,
    padded_stack,
    positions,
    rotation,
    warn_defaults,
)
from harness.models.standins.standin_layers import (
    KVCache,
    LLaDABlock,
    LLaDANames,
    RMSNorm,
    heads,
    key_order,
    padding_mask,
    swiglu,
)
from harness.types import HarnessError

MASK_ID = 126336  # <|mdm_mask|> of every LLaDA-8B checkpoint
MODEL_TYPES = ("llada",)

# keys that change the logits but not the tensor shapes: (the reference ModelConfig's default), warned about when absent
NUMERIC_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "rope_full_precision": True, "input_emb_norm": False,
                    "scale_logits": False}

# key: (the reference ModelConfig's default, the values the native code implements)
SUPPORTED = {
    "block_type": ("sequential", ("llama",)),
    "activation_type": ("swiglu", ("silu",)),
    "layer_norm_type": ("default", ("rms",)),
    "layer_norm_with_affine": (True, (True,)),
    "bias_for_layer_norm": (None, (None, False)),
    "rope": (False, (True,)),
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (False, None)),
    "block_group_size": (1, (1,)),
}


@dataclass(frozen=True)
class LLaDAConfig(LLaDANames):
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    max_sequence_length: int = 4096
    rope_theta: float = 10000.0
    rope_full_precision: bool = True
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    input_emb_norm: bool = False
    scale_logits: bool = False
    init_std: float = 0.02
    bos_token_id: int | None = None

    def get_text_config(self):
        return self

    @classmethod
    def from_json(cls, cfg: dict, where: str) -> "LLaDAConfig":
        """config.json (the official keys) -> LLaDAConfig; unsupported variants are errors."""
        check_config(cfg, SUPPORTED, where, "LLaDA", MODEL_TYPES)
        warn_defaults(cfg, NUMERIC_DEFAULTS, where)
        d, h = must(cfg, "d_model", where), must(cfg, "n_heads", where)
        kv = 1 if cfg.get("multi_query_attention") else (cfg.get("n_kv_heads") or h)
        vocab = must(cfg, "vocab_size", where)
        emb = cfg.get("embedding_size") or vocab
        mask = cfg.get("mask_token_id")
        if mask is None:
            if emb <= MASK_ID:
                raise HarnessError(f"{where}: config.json has no 'mask_token_id' and the vocabulary ({emb}) does not "
                                   f"hold LLaDA's mask id {MASK_ID}: add the key")
            mask = MASK_ID
        eos = one(cfg.get("eos_token_id", 50256))
        return cls(d_model=d, n_heads=h, n_kv_heads=kv, n_layers=must(cfg, "n_layers", where),
                   mlp_hidden_size=cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d, vocab_size=vocab,
                   embedding_size=emb, mask_token_id=mask, eos_token_id=eos,
                   pad_token_id=cfg.get("pad_token_id", eos), max_sequence_length=cfg.get("max_sequence_length", 1024),
                   rope_theta=float(cfg.get("rope_theta", NUMERIC_DEFAULTS["rope_theta"])),
                   rope_full_precision=bool(cfg.get("rope_full_precision", NUMERIC_DEFAULTS["rope_full_precision"])),
                   rms_norm_eps=float(cfg.get("rms_norm_eps", NUMERIC_DEFAULTS["rms_norm_eps"])),
                   weight_tying=bool(cfg.get("weight_tying", True)),
                   input_emb_norm=bool(cfg.get("input_emb_norm", NUMERIC_DEFAULTS["input_emb_norm"])),
                   scale_logits=bool(cfg.get("scale_logits", NUMERIC_DEFAULTS["scale_logits"])),
                   init_std=float(cfg.get("init_std", 0.02)),
                   bos_token_id=cfg.get("bos_token_id"))

    def to_json(self) -> dict:
        """The official config.json keys (a checkpoint written from a preset loads like a real one)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out.update(model_type="llada", architectures=["LLaDAModelLM"], block_type="llama", activation_type="silu",
                   layer_norm_type="rms", rope=True, alibi=False, include_bias=False, include_qkv_bias=False,
                   attention_layer_norm=False, layer_norm_with_affine=True, block_group_size=1)
        return out


class LLaDATransformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        parts = dict(wte=nn.Embedding(cfg.embedding_size, cfg.d_model),
                     blocks=nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
                     ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps))
        if not cfg.weight_tying:
            parts["ff_out"] = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)
        self.transformer = nn.ModuleDict(parts)


class LLaDA(nn.Module):
    """LLaDA's masked denoiser: ids [B, T] (+ a [B, T] padding mask) -> logits [B, T, V], no shift."""

    def __init__(self, cfg: LLaDAConfig, attn: str = "sdpa"):
        super().__init__()
        self.config, self.impl = cfg, attn
        self.model = LLaDATransformer(cfg)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        t = self.model.transformer
        return t.wte if self.config.weight_tying else t.ff_out

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.model.transformer.wte(ids)  # [B, T, D]
        return h * self.config.d_model ** 0.5 if self.config.input_emb_norm else h

    def _rotation(self, pos: torch.Tensor, dtype: torch.dtype):
        cfg = self.config
        return rotation(pos, cfg.d_model // cfg.n_heads, cfg.rope_theta,
                        torch.float32 if cfg.rope_full_precision else dtype)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        t, cfg = self.model.transformer, self.config
        h = t.ln_f(h)
        logits = F.linear(h, t.wte.weight) if cfg.weight_tying else t.ff_out(h)  # [B, T, V]
        return logits * (1 / math.sqrt(cfg.d_model)) if cfg.scale_logits else logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> Output:
        logits, _cache = self.forward_with_cache(input_ids, attention_mask)
        return Output(logits)

    # -- Fast-dLLM prefix / dual KV caches (harness/samplers/_cache.py) --------------------------
    def forward_with_cache(self, input_ids, attention_mask=None, keep: torch.Tensor | None = None):
        """A full pass -> (logits [B, T, V], KVCache of the columns `keep` [Tc], None without keep)."""
        m = key_padding(attention_mask)
        h = self._embed(input_ids)
        pos = positions(m, input_ids.shape[1], input_ids.device)
        cos, sin = self._rotation(pos, h.dtype)
        h, (k, v) = padded_stack(self.model.transformer.blocks, h, cos, sin, padding_mask(m), self.impl, keep=keep)
        return self._head(h), None if keep is None else KVCache(k, v, keep)

    def forward_cached(self, input_ids, cache: KVCache, columns: torch.Tensor, attention_mask=None):
        """Logits [B, Tq, V] of the canvas columns `columns` [Tq] (input_ids [B, Tq] their tokens),
        attending to the cached columns and themselves, keys in canvas order. `attention_mask` is
        the whole canvas's [B, T]."""
        m = key_padding(attention_mask)
        h = self._embed(input_ids)
        pos = columns if m is None else positions(m, m.shape[1], m.device)[:, columns]  # [Tq] or [B, Tq]
        order = key_order(cache.columns, columns)
        key_cols = torch.cat([cache.columns, columns])[order]  # [Tk] in canvas order
        cos, sin = self._rotation(pos, h.dtype)
        h, _ = padded_stack(self.model.transformer.blocks, h, cos, sin, padding_mask(m, key_cols), self.impl,
                             cache=cache, order=order)
        return self._head(h)

    # -- an explicit attention pattern (WINO's shadow block) -------------------------------------
    def forward_pattern(self, input_ids: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> Output:
        """Logits [B, S, V] of a pass with the attention pattern `allowed` [B, 1, S, S] bool (True:
        attend) and the rotary positions `position_ids` [B, S], applied as given. A query that sees
        nothing attends to itself (it must not be read). A pattern that is key padding alone (every
        query of a row sees the same keys; left padding) runs as `forward` runs it, so the plain
        pattern with the plain positions gives `forward`'s numbers exactly."""
        B, S = input_ids.shape
        if tuple(allowed.shape) != (B, 1, S, S) or tuple(position_ids.shape) != (B, S):
            raise HarnessError(f"LLaDA forward_pattern: expected allowed [{B}, 1, {S}, {S}] and position_ids "
                               f"[{B}, {S}], got {tuple(allowed.shape)} and {tuple(position_ids.shape)}")
        allowed = allowed.to(device=input_ids.device, dtype=torch.bool)
        eye = torch.eye(S, dtype=torch.bool, device=allowed.device)
        mask = allowed | (~allowed.any(-1, keepdim=True) & eye)
        h = self._embed(input_ids)
        cos, sin = self._rotation(position_ids.to(input_ids.device), h.dtype)
        h, _ = padded_stack(self.model.transformer.blocks, h, cos, sin, None if bool(mask.all()) else mask, self.impl)
        return Output(self._head(h))


class LLaDALayers(RotaryLayers):
    """A native LLaDA layer by layer: the view the approximate caches run on
    (harness/samplers/_approx_cache.py: dKV-Cache, dLLM-Cache; harness/samplers/_d2cache.py: d2Cache,
    which also reads each layer's attention weights, `attention_weights`), which recompute some
    columns of some layers and reuse cached keys/values or layer outputs for the rest.

    `embed` reads the canvas and its padding once per pass: the rotary positions count real tokens
    (as `forward`), and left-padded rows attend, group by group, over their real keys only. `qkv`
    takes the whole canvas, `qkv_at` any columns of it (q and k rotated at those columns'
    positions). Running every layer over every column with these pieces gives `forward`'s logits at
    every real column exactly; a left-padding column's own output differs (`forward` leaves its
    attention output zero, here it attends to the real keys) and is never read."""

    def __init__(self, module: LLaDA):
        self.module = module
        self.blocks = module.model.transformer.blocks
        self.n_layers = len(self.blocks)
        self._cos = self._sin = None

    def embed(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        """The canvas x [B, T] -> (h [B, T, D], the pass's key-padding plan, which `attend` takes)."""
        m = key_padding(attention_mask)
        h = self.module._embed(x)
        self._cos, self._sin = self.module._rotation(positions(m, x.shape[1], x.device), h.dtype)  # [1|B, 1, T, Dh]
        return h, left_padding(padding_mask(m))

    def value(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """h [B, n, D] -> v [B, Hkv, n, Dh] of layer i alone (no rotary on values)."""
        blk = self.blocks[i]
        return heads(blk.v_proj(blk.attn_norm(h)), blk.n_kv)

    def out_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].attn_out(a)

    def mlp(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's MLP branch on h [B, n, D] (what the residual adds)."""
        blk = self.blocks[i]
        return swiglu(blk.ff_norm(h), blk.ff_proj, blk.up_proj, blk.ff_out)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.module._head(h)
