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

from harness.models.standins.standin_layers import RMSNorm, attend, decoder_stack, rotary
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
