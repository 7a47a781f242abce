"""Native Dream (Dream-org/Dream-v0-Base-7B, -Instruct-7B; apple/DiffuCoder-7B-*, same architecture):
torch only, no remote code.

Architecture as the public `modeling_dream.py` computes it: Qwen2 blocks (RMSNorm with float32
statistics, biased q/k/v, grouped key/value heads, rotary with cos/sin in the activations' dtype,
SiLU-gated MLP; `DreamBaseModel` of standin_layers.py, which the stand-in builds from too)
with full bidirectional attention; `model.norm` and `lm_head` (or the tied `embed_tokens`).
Tensor names are the checkpoint's (`model.{embed_tokens, layers.N.*, norm}`,
`lm_head`), so the official safetensors load by name. The rotary inverse frequencies are computed
at every call (transformers 5 leaves the reference file's `inv_freq` buffer uninitialised after
loading: silently wrong logits that change per load; there is no such buffer here). With the same
weights the logits equal the reference file's exactly (tests/models/test_native_parity.py).

Dream keeps its AR parent's alignment: the logits at k-1 predict the token at k; the adapter reads
them shifted (`shift_logits=True`). Padding goes in as Dream's own generate passes it (a [B, T]
mask, or a boolean [B, 1, T, T] mask plus position ids counting real tokens), so a left-padded
row gives the logits it has alone.

Besides the plain forward and the Fast-dLLM KV caches, `DreamLayers` runs the model layer by layer
(embed, q/k/v of chosen columns at their rotary positions, attention, MLP, head) for the approximate
caches (harness/samplers/_approx_cache.py); every layer over every column gives the forward's
logits at the real columns exactly (tests/models/test_dream_views.py).

Config keys read (Qwen2's): vocab_size, hidden_size, intermediate_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta (or rope_parameters),
tie_word_embeddings, mask/eos/pad/bos ids; an absent rope_theta or rms_norm_eps takes the default
with a `DefaultedKeyWarning`. RoPE scaling, sliding windows and activations other
than SiLU are refused with the key named (use `impl: remote`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.native.common import (
    Output,
    RotaryLayers,
    check_config,
    left_padding,
    must,
    one,
    padded_stack,
    rotation,
    warn_defaults,
)
from harness.models.standins.standin_layers import (
    DreamBaseModel,
    KVCache,
    heads,
    key_order,
    swiglu,
)
from harness.types import HarnessError

MASK_ID = 151666  # Dream's <|mask|>
MODEL_TYPES = ("Dream", "dream")

# keys that change the logits but not the tensor shapes (the reference defaults), warned about when absent
NUMERIC_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6}

SUPPORTED = {
    "hidden_act": ("silu", ("silu",)),
    "rope_scaling": (None, (None,)),
    "use_sliding_window": (False, (False,)),
}


@dataclass(frozen=True)
class DreamConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mask_token_id: int = MASK_ID
    eos_token_id: int = 151643
    pad_token_id: int = 151643
    bos_token_id: int | None = 151643
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def get_text_config(self):
        return self

    @classmethod
    def from_json(cls, cfg: dict, where: str) -> "DreamConfig":
        check_config(cfg, SUPPORTED, where, "Dream", MODEL_TYPES)
        rp = cfg.get("rope_parameters") or {}
        if rp.get("rope_type", "default") != "default":
            raise HarnessError(f"{where}: rope_parameters.rope_type = {rp['rope_type']!r} is not implemented by the "
                               "native code (it implements 'default'); use impl: remote")
        warn_defaults(cfg, NUMERIC_DEFAULTS, where, nested=rp)
        h = must(cfg, "num_attention_heads", where)
        eos = one(cfg.get("eos_token_id", 151643))
        return cls(vocab_size=must(cfg, "vocab_size", where), hidden_size=must(cfg, "hidden_size", where),
                   intermediate_size=must(cfg, "intermediate_size", where),
                   num_hidden_layers=must(cfg, "num_hidden_layers", where), num_attention_heads=h,
                   num_key_value_heads=cfg.get("num_key_value_heads") or h,
                   mask_token_id=cfg.get("mask_token_id", MASK_ID), eos_token_id=eos,
                   pad_token_id=cfg.get("pad_token_id", 151643), bos_token_id=cfg.get("bos_token_id"),
                   max_position_embeddings=cfg.get("max_position_embeddings", 32768),
                   rope_theta=float(cfg.get("rope_theta", rp.get("rope_theta", NUMERIC_DEFAULTS["rope_theta"]))),
                   rms_norm_eps=float(cfg.get("rms_norm_eps", NUMERIC_DEFAULTS["rms_norm_eps"])),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   initializer_range=float(cfg.get("initializer_range", 0.02)))

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out.update(model_type="Dream", architectures=["DreamModel"], hidden_act="silu",
                   use_sliding_window=False)
        return out


def _padding(attention_mask, position_ids):
    """Dream's accepted masks -> (a boolean key mask broadcastable to [B, 1, T, T] or None when
    nothing is padded, position ids or None for 0..T-1). A [B, T] mask gets positions counting real
    tokens; a 4-D mask comes with the caller's position ids (as Dream's generate passes them)."""
    if attention_mask is None or isinstance(attention_mask, str):  # "full": no padding
        return None, position_ids
    m = attention_mask.bool()
    if m.dim() == 4 and m.shape[2] > 1 and m.stride(2) == 0:  # keys-only, expanded over queries
        m = m[:, :, :1]
    if m.dim() == 2:
        if position_ids is None:
            position_ids = (m.long().cumsum(-1) - 1).clamp_min(0)  # [B, T]
        m = m[:, None, None, :]
    return (None if bool(m.all()) else m), position_ids  # unpadded: unmasked attention, as the reference


class Dream(nn.Module):
    """Dream's masked denoiser: ids [B, T] (+ padding) -> logits [B, T, V], read shifted by the adapter."""

    def __init__(self, cfg: DreamConfig, attn: str = "sdpa"):
        super().__init__()
        self.config, self.impl = cfg, attn
        self.model = DreamBaseModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.model.embed_tokens if self.config.tie_word_embeddings else self.lm_head

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.model.norm(h)
        if self.config.tie_word_embeddings:
            return F.linear(h, self.model.embed_tokens.weight)
        return self.lm_head(h)  # [B, T, V]

    def _rotation(self, pos: torch.Tensor, dtype: torch.dtype):
        cfg = self.config
        return rotation(pos, cfg.hidden_size // cfg.num_attention_heads, cfg.rope_theta, dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None, **_) -> Output:
        logits, _cache = self.forward_with_cache(input_ids, attention_mask, position_ids)
        return Output(logits)

    # -- Fast-dLLM prefix / dual KV caches (harness/samplers/_cache.py) --------------------------
    def forward_with_cache(self, input_ids, attention_mask=None, position_ids=None, *, keep=None):
        """A full pass -> (logits [B, T, V], KVCache of the columns `keep` [Tc], None without keep)."""
        m, pos = _padding(attention_mask, position_ids)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) if pos is None else pos
        h = self.model.embed_tokens(input_ids)  # [B, T, D]
        cos, sin = self._rotation(pos, h.dtype)
        h, (k, v) = padded_stack(self.model.layers, h, cos, sin, m, self.impl, keep=keep)
        return self._head(h), None if keep is None else KVCache(k, v, keep)

    def forward_cached(self, input_ids, cache: KVCache, columns: torch.Tensor, attention_mask=None,
                       position_ids=None):
        """Logits [B, Tq, V] of the canvas columns `columns` [Tq] (input_ids [B, Tq] their tokens),
        attending to the cached columns and themselves, keys in canvas order. `attention_mask` and
        `position_ids` are the whole canvas's (sliced here)."""
        m, pos = _padding(attention_mask, position_ids)
        pos = columns if pos is None else pos[..., columns]  # [Tq] or [B, Tq]
        order = key_order(cache.columns, columns)
        key_cols = torch.cat([cache.columns, columns])[order]  # [Tk] in canvas order
        if m is not None:
            m = m[:, :, columns if m.shape[2] > 1 else slice(None)][..., key_cols]  # [B, 1, Tq|1, Tk]
        h = self.model.embed_tokens(input_ids)  # [B, Tq, D]
        cos, sin = self._rotation(pos, h.dtype)
        h, _ = padded_stack(self.model.layers, h, cos, sin, m, self.impl, cache=cache, order=order)
        return self._head(h)


class DreamLayers(RotaryLayers):
    """A native Dream layer by layer: the view the approximate caches run on
    (harness/samplers/_approx_cache.py: dKV-Cache, dLLM-Cache; harness/samplers/_d2cache.py reads
    `attention_weights` too), the same interface as native/llada.py `LLaDALayers`. The head's
    logits are Dream's own, unshifted: column k's output predicts the token at k + 1.

    `embed` reads the canvas and its [B, T] padding mask once per pass: the rotary positions count
    real tokens (as Dream's generate numbers them and as `forward` does), and left-padded rows
    attend, group by group, over their real keys only. `qkv` takes the whole canvas, `qkv_at` any
    columns of it (q and k rotated at those columns' positions; grouped key/value heads as the
    checkpoint has them). Running every layer over every column with these pieces gives `forward`'s
    logits at every real column exactly; a left-padding column's own output differs (`forward`
    leaves its attention output zero, here it attends to the real keys) and is never read."""

    def __init__(self, module: Dream):
        self.module = module
        self.blocks = module.model.layers
        self.n_layers = len(self.blocks)
        self._cos = self._sin = None

    def embed(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        """The canvas x [B, T] -> (h [B, T, D], the pass's key-padding plan, which `attend` takes)."""
        m, pos = _padding(attention_mask, None)
        pos = torch.arange(x.shape[1], device=x.device) if pos is None else pos
        h = self.module.model.embed_tokens(x)  # [B, T, D]
        self._cos, self._sin = self.module._rotation(pos, h.dtype)  # [1|B, 1, T, Dh]
        return h, left_padding(m)

    def value(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """h [B, n, D] -> v [B, Hkv, n, Dh] of layer i alone (no rotary on values)."""
        blk = self.blocks[i]
        return heads(blk.self_attn.v_proj(blk.input_layernorm(h)), blk.self_attn.n_kv)

    def out_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].self_attn.o_proj(a)

    def mlp(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's MLP branch on h [B, n, D] (what the residual adds)."""
        blk = self.blocks[i]
        m = blk.mlp
        return swiglu(blk.post_attention_layernorm(h), m.gate_proj, m.up_proj, m.down_proj)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and lm_head -> unshifted logits [B, n, V] (column k's row predicts k + 1)."""
        return self.module._head(h)
