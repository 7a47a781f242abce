"""What only the native LLaDA and Dream modules need: their output type, config checks, seeded
init, padding helpers, rotary embeddings at a chosen precision, and the attention that makes a
left-padded row compute exactly what it computes alone (`padded_stack`).

The layers themselves (norm, rotary, SwiGLU, attention kernel, KV cache, the decoder loop and
the LLaDA and Dream blocks with the checkpoints' parameter names) live in
`harness/models/standins/standin_layers.py` (torch only), shared with the stand-ins, which carry
that file with them as remote code.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.models.standins.standin_layers import RMSNorm, attend, decoder_stack, merge_heads, rotary
from harness.types import HarnessError


@dataclass
class Output:
    """What a forward pass returns (the `.logits` the adapters read, as transformers outputs have)."""

    logits: torch.Tensor  # [B, T, V]


def check_config(cfg: dict, supported: dict, where: str, family: str, model_types: tuple) -> None:
    """config.json must be one of `family`'s (`model_type` in `model_types`) and every key of
    `supported` must hold an accepted value (a tuple of them); the error names the key, its value
    (or its default when absent) and what the native code implements."""
    if cfg.get("model_type") not in model_types:
        raise HarnessError(f"{where}: model_type {cfg.get('model_type')!r} is not {family}'s {model_types[0]!r}")
    for key, (default, ok) in supported.items():
        value = cfg.get(key, default)
        if value not in ok:
            got = f"{value!r}" + (" (absent: the default)" if key not in cfg else "")
            raise HarnessError(f"{where}: {key} = {got} is not implemented by the native code (it implements "
                               f"{' or '.join(map(repr, ok))}); use impl: remote to run the checkpoint's own code")


class DefaultedKeyWarning(UserWarning):
    """A config.json key that changes the logits was absent and its default was used."""


def warn_defaults(cfg: dict, defaults: dict, where: str, nested: dict | None = None) -> None:
    """Warn when keys that change the numbers but not the tensor shapes (rope_theta, rms_norm_eps, ...)
    are absent from config.json and take the reference code's default: a checkpoint trained with
    another value would load without error and compute different logits. Shape keys need no warning:
    a wrong default there fails the tensor-shape check. `nested` holds keys found elsewhere (Dream's
    rope_parameters)."""
    absent = [k for k in defaults if k not in cfg and k not in (nested or {})]
    if absent:
        used = ", ".join(f"{k} = {defaults[k]!r}" for k in absent)
        warnings.warn(f"{where}: config.json has no {', '.join(map(repr, absent))}; using the default {used}, which "
                      "changes the logits if the checkpoint was trained with another value (add the key to silence "
                      "this)", DefaultedKeyWarning, stacklevel=3)


def one(value):
    """A config's eos may be a list of ids: the first one."""
    return value[0] if isinstance(value, (list, tuple)) else value


def key_padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] (1 = real token) -> the same as bool, or None when nothing is padded (so attention
    runs unmasked, as the reference code does on unpadded input)."""
    if attention_mask is None:
        return None
    m = attention_mask.bool()
    return None if bool(m.all()) else m


def positions(attention_mask: torch.Tensor | None, T: int, device) -> torch.Tensor:
    """Position ids counting real tokens ([B, T], 0 on left padding), or 0..T-1 ([T]) unpadded:
    a left-padded row then sees the positions it has alone."""
    if attention_mask is None:
        return torch.arange(T, device=device)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def rotation(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of the rotary embedding at positions pos ([T] or [B, T]) in `dtype`: float32 for
    LLaDA's rope_full_precision, the activations' dtype for Llama/Qwen2/Dream. The inverse
    frequencies theta^(-2i/Dh) are computed here at every call: never read from a buffer."""
    return rotary(pos, head_dim, theta, dtype)


def seeded_init(module: nn.Module, std: float, seed: int, device: torch.device) -> None:
    """Random weights for a preset: normal(0, std) matrices and embeddings, unit norms, from `seed`,
    leaving the global RNG as it was (docs/architecture.md, convention 3)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()


def meta_build(cls, cfg, attn: str) -> nn.Module:
    """The module on the meta device (no memory), to be filled by `checkpoint.load_weights`."""
    with torch.device("meta"):
        return cls(cfg, attn=attn)


def must(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise HarnessError(f"{where}: config.json has no {key!r}, which the native code needs")
    return cfg[key]


def left_padding(key_mask: torch.Tensor | None):
    """A key mask [B, 1, Tq|1, Tk] bool (or None) -> how attention handles it, decided once per pass:
    None (nothing padded), [(n, rows)] groups when every row's real keys are a suffix [n, Tk) of its
    keys for every query (left padding; rows grouped by n), else the mask itself."""
    if key_mask is None:
        return None
    if key_mask.shape[2] > 1 and key_mask.stride(2) == 0:  # a keys-only mask expanded over queries
        key_mask = key_mask[:, :, :1]
    km = key_mask[:, 0, -1, :]  # [B, Tk] the last query's keys
    Tk = km.shape[-1]
    n_pad = (~km).sum(-1).clamp_max(Tk - 1)  # [B]
    suffix = torch.arange(Tk, device=km.device)[None, :] >= n_pad[:, None]  # [B, Tk]
    if not torch.equal(km, suffix) or (key_mask.shape[2] > 1 and not bool((key_mask == km[:, None, None, :]).all())):
        return key_mask
    return [(n, (n_pad == n).nonzero().squeeze(1)) for n in n_pad.unique().tolist()]


def attend_padded(q, k, v, padding, impl: str) -> torch.Tensor:
    """Full attention, q [B, H, Tq, Dh], k/v [B, Hkv, Tk, Dh], `padding` from `left_padding`.

    Left-padded rows attend, group by group, over their real keys [n, Tk) only, with no mask: a
    padded row then runs the very kernel, on the very shapes, that it runs alone, and its numbers
    are identical (a mask gives the same values up to rounding: its reductions run over Tk keys,
    not Tk - n). In a full pass (Tq = Tk: the queries are the key columns) the padded query
    columns are skipped and left zero. Any other mask is applied as a mask."""
    if padding is None or isinstance(padding, torch.Tensor):
        return attend(q, k, v, padding, impl)
    full = q.shape[2] == k.shape[2]
    out = q.new_zeros(*q.shape[:3], v.shape[-1])  # [B, H, Tq, Dh]
    for n, rows in padding:
        if full:
            out[rows, :, n:] = attend(q[rows, :, n:], k[rows, :, n:], v[rows, :, n:], None, impl)
        else:
            out[rows] = attend(q[rows], k[rows, :, n:], v[rows, :, n:], None, impl)
    return out


def padded_stack(blocks, h, cos, sin, key_mask, impl, **cache_args):
    """`decoder_stack` (standin_layers.py; `cache`, `order`, `keep` as it takes them) with the
    padding plan decided once per pass by `left_padding` and every layer attending by `attend_padded`."""
    return decoder_stack(blocks, h, cos, sin, left_padding(key_mask), impl, attention=attend_padded, **cache_args)


class RotaryLayers:
    """The layer-by-layer view shared by the native rotary models (native/llada.py `LLaDALayers`,
    native/dream.py `DreamLayers`): what the approximate caches (harness/samplers/_approx_cache.py,
    _d2cache.py) run on. A subclass sets `module`, `blocks`, `n_layers` and, in `embed`, the pass's
    rotary tables `_cos`/`_sin` [1|B, 1, T, Dh]; it gives `embed`, `value`, `out_proj`, `mlp` and
    `head`, and each block a `qkv(h, cos, sin)`."""

    module: nn.Module
    blocks: nn.ModuleList
    _cos: torch.Tensor | None = None
    _sin: torch.Tensor | None = None

    def out_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """Layer i's attention output projection of the merged heads a [B, n, H·Dh]."""
        raise NotImplementedError

    def qkv(self, i: int, h: torch.Tensor):
        """h [B, T, D] of the whole canvas -> q [B, H, T, Dh], k/v [B, Hkv, T, Dh] of layer i."""
        return self.blocks[i].qkv(h, self._cos, self._sin)

    def qkv_at(self, i: int, h: torch.Tensor, columns: torch.Tensor):
        """h [B, n, D] of the canvas columns `columns` ([n], or [B, n] per row) -> layer i's q, k, v of
        those columns, rotated at their positions."""
        B, n = h.shape[:2]
        cols = columns.to(h.device)
        cos, sin = self._cos.expand(B, -1, -1, -1), self._sin.expand(B, -1, -1, -1)
        if cols.dim() == 1:
            cos, sin = cos[:, :, cols], sin[:, :, cols]
        else:
            idx = cols[:, None, :, None].expand(B, 1, n, cos.shape[-1])
            cos, sin = cos.gather(2, idx), sin.gather(2, idx)
        return self.blocks[i].qkv(h, cos, sin)

    def attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask) -> torch.Tensor:
        """Layer i's attention branch: queries [B, H, n, Dh] (any canvas columns) over the canvas's
        keys/values [B, Hkv, T, Dh] -> [B, n, D], `out_proj` applied (what the residual adds).
        `key_mask`: `embed`'s plan (left-padded rows attend over their real keys [p, T) only; unlike
        `attend_padded`, a padded query column attends them too: its output is never read)."""
        impl = self.module.impl
        if key_mask is None or isinstance(key_mask, torch.Tensor):
            a = attend(q, k, v, key_mask, impl)
        else:
            a = q.new_zeros(*q.shape[:3], v.shape[-1])  # [B, H, n, Dh]
            for p, rows in key_mask:
                a[rows] = attend(q[rows], k[rows, :, p:], v[rows, :, p:], None, impl)
        return self.out_proj(i, merge_heads(a))

    def attention_weights(self, i: int, q: torch.Tensor, k: torch.Tensor, key_mask) -> torch.Tensor:
        """Layer i's attention probabilities [B, H, n, T] of queries [B, H, n, Dh] over the canvas's keys
        [B, Hkv, T, Dh] (grouped heads repeated; a float32 softmax cast back to q's dtype, as the public
        files' eager attention): what `attend` weighs the values by, 0 on a left-padded row's padding keys
        (d2Cache's attention rollout)."""
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k = k.repeat_interleave(rep, 1)
        scores = (q @ k.transpose(-1, -2)).float() / q.shape[-1] ** 0.5  # [B, H, n, T]
        if isinstance(key_mask, torch.Tensor):
            scores = scores.masked_fill(~key_mask, -torch.inf)
        elif key_mask is not None:  # left padding: row group by group, keys [p, T)
            for p, rows in key_mask:
                scores[rows, :, :, :p] = -torch.inf
        return scores.softmax(-1).to(q.dtype)
