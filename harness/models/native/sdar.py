"""Native SDAR / TraDo (JetLM/SDAR-*-Chat, Gen-Verse/TraDo-*): torch only, no remote code.

Architecture as the public `modeling_sdar.py` computes it (JetAstra/SDAR
`training/model/SDAR-4B-Chat/modeling_sdar.py`; Gen-Verse/dLLM-RL `models/sdar/modeling_sdar.py`,
the code TraDo checkpoints ship): Qwen3 decoder layers -- RMSNorm -> q/k/v projections (optional
bias) -> per-head RMSNorm of q and k -> rotary (theta from config.json, cos/sin computed in float32
and cast to the activations' dtype) -> grouped-query attention -> o_proj, then RMSNorm -> SwiGLU;
final `model.norm` and an untied `lm_head` (or the tied embedding when `tie_word_embeddings`).
Every RMSNorm computes as flash-attn's `rms_norm_fn`, which the public file calls: x in float32,
times rsqrt(mean(x^2) + eps), times the float32 weight, then cast (Qwen3's own norm multiplies the
weight after the cast: identical in float32, not in bf16). Tensor names are the checkpoint's
(`model.{embed_tokens, layers.N.{self_attn,mlp,input_layernorm,post_attention_layernorm}.*, norm}`,
`lm_head`), so the official safetensors load by name.

The logits are not shifted: position i predicts token i. The public file applies no mask of its
own (callers pass the block mask); here every forward applies the block-causal convention of
harness/models/block_attention.py with `block_size` from config.json:

- `forward` (a plain pass): query i sees key j iff block(j) <= block(i) (`decode_mask`);
- `forward_denoise`: one pass over [x_t ; x_0] (`dual_stream_mask`), logits of the x_t half;
- `forward_pattern`: an explicit [B, 1, S, S] pattern and position ids, applied as given (TraceRL's
  [prompt ; clean ; noisy] training rows, harness/algorithms/trace_rl.py);
- `forward_with_cache` / `forward_cached`: the KV cache of finished blocks that SDAR's
  `block_diffusion_generate` keeps (keys after q/k norm and rotary); a cached pass runs the query
  columns only, attending to the cache and themselves, and with `store=True` also returns the cache
  extended by those columns (the reference's `store_kv=True` pass). Since later blocks are never
  visible, the cache is exact.

Attention is SDPA with the block mask made additive in the activations' dtype (0 / finfo.min), as
dLLM-RL's file does, or an eager softmax (`attn: eager`). A left-padded row is computed on its own
real columns only (rows grouped by their pad count), with the mask it has alone, so batching never
changes a number.

Config keys read (SDAR's config.json): vocab_size, hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, rope_theta (or
rope_parameters), attention_bias, tie_word_embeddings, block_size, mask_token_id, eos/pad/bos ids.
RoPE scaling, sliding windows and activations other than SiLU are refused with the key named (use
`impl: remote`); a config without `block_size` or `mask_token_id` is an error naming the key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.block_attention import decode_mask, dual_stream_mask
from harness.models.native.common import Output, check_config, must, one, warn_defaults
from harness.models.standins import standin_layers
from harness.types import HarnessError

MASK_ID = 151669  # <|MASK|> of SDAR-*-Chat and TraDo
MODEL_TYPES = ("sdar",)
# keys that change the logits but not the tensor shapes (configuration_sdar.py's defaults), warned about when absent
NUMERIC_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6}

SUPPORTED = {
    "hidden_act": ("silu", ("silu",)),
    "rope_scaling": (None, (None,)),
    "use_sliding_window": (False, (False,)),
}


@dataclass(frozen=True)
class SDARConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    block_size: int
    mask_token_id: int = MASK_ID
    eos_token_id: int = 151643
    pad_token_id: int | None = None
    bos_token_id: int | None = 151643
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def get_text_config(self):
        return self

    @classmethod
    def from_json(cls, cfg: dict, where: str) -> "SDARConfig":
        check_config(cfg, SUPPORTED, where, "SDAR", MODEL_TYPES)
        rp = cfg.get("rope_parameters") or {}
        if rp.get("rope_type", "default") != "default":
            raise HarnessError(f"{where}: rope_parameters.rope_type = {rp['rope_type']!r} is not implemented by the "
                               "native code (it implements 'default'); use impl: remote")
        warn_defaults(cfg, NUMERIC_DEFAULTS, where, nested=rp)
        if cfg.get("sliding_window") not in (None, False) and cfg.get("use_sliding_window"):
            raise HarnessError(f"{where}: sliding_window is not implemented by the native code; use impl: remote")
        h = must(cfg, "num_attention_heads", where)
        d = must(cfg, "hidden_size", where)
        block = must(cfg, "block_size", where)
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise HarnessError(f"{where}: block_size = {block!r}, expected an integer >= 1")
        mask = must(cfg, "mask_token_id", where)
        eos = one(cfg.get("eos_token_id", 151643))
        return cls(vocab_size=must(cfg, "vocab_size", where), hidden_size=d,
                   intermediate_size=must(cfg, "intermediate_size", where),
                   num_hidden_layers=must(cfg, "num_hidden_layers", where), num_attention_heads=h,
                   num_key_value_heads=cfg.get("num_key_value_heads") or h,
                   head_dim=cfg.get("head_dim") or d // h, block_size=block, mask_token_id=int(mask),
                   eos_token_id=eos, pad_token_id=cfg.get("pad_token_id"), bos_token_id=cfg.get("bos_token_id"),
                   max_position_embeddings=cfg.get("max_position_embeddings", 32768),
                   rope_theta=float(cfg.get("rope_theta", rp.get("rope_theta", NUMERIC_DEFAULTS["rope_theta"]))),
                   rms_norm_eps=float(cfg.get("rms_norm_eps", NUMERIC_DEFAULTS["rms_norm_eps"])),
                   attention_bias=bool(cfg.get("attention_bias", False)),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   initializer_range=float(cfg.get("initializer_range", 0.02)))

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out.update(model_type="sdar", architectures=["SDARForCausalLM"], hidden_act="silu", rope_scaling=None,
                   use_sliding_window=False)
        return out


class RMSNorm(standin_layers.RMSNorm):
    """flash-attn's rms_norm_fn semantics (what the public file calls): float32 x and weight, then
    cast. (A subclass of the shared RMSNorm, so presets initialise it as the other native models'.)"""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        return (x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()).to(h.dtype)


def rotation(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """[B, T] positions -> cos, sin [B, 1, T, Dh] in `dtype` (computed in float32, as the public file;
    the inverse frequencies are computed here at every call, never read from a buffer)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=pos.device).float() / head_dim))
    ang = pos.float()[..., None] * inv  # [B, T, Dh/2]
    emb = torch.cat([ang, ang], -1)[:, None]  # [B, 1, T, Dh]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (_rotate_half(x) * sin)


class SDARAttention(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def qkv(self, x: torch.Tensor, cos, sin):
        """x [B, T, D] (normed) -> q [B, H, T, Dh], k/v [B, Hkv, T, Dh] (q/k normed per head, rotated)."""
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        return _rope(q, cos, sin), _rope(k, cos, sin), v


class SDARMLP(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SDARDecoderLayer(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.self_attn = SDARAttention(cfg)
        self.mlp = SDARMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class SDARBase(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(SDARDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class BlockKVCache:
    """Per-layer keys/values [B, Hkv, Tc, Dh] (after q/k norm and rotary) of the canvas columns
    [0, Tc): the finished blocks. `length` and `take` are what the samplers use (_cache.py)."""

    keys: list
    values: list

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def take(self, rows: torch.Tensor) -> "BlockKVCache":
        return BlockKVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


def _pads(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """[B] left-pad counts (a mask that is not left padding is refused)."""
    if attention_mask is None:
        return torch.zeros(B, dtype=torch.long, device=device)
    m = attention_mask.bool()
    n = (~m).sum(-1)
    suffix = torch.arange(T, device=m.device)[None, :] >= n[:, None]
    if not torch.equal(m, suffix):
        raise HarnessError("SDAR: the attention mask must be left padding (real tokens a suffix of every row)")
    return n.to(device)


class SDAR(nn.Module):
    """SDAR/TraDo block-diffusion denoiser: ids [B, T] (+ a left-padding mask) -> logits [B, T, V], no shift."""

    def __init__(self, cfg: SDARConfig, attn: str = "sdpa"):
        super().__init__()
        if attn not in ("sdpa", "eager"):
            raise HarnessError(f"SDAR attn: expected 'sdpa' or 'eager', got {attn!r}")
        self.config, self.impl = cfg, attn
        self.block_size = cfg.block_size
        self.model = SDARBase(cfg)
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
        return self.lm_head(h)

    # -- attention ---------------------------------------------------------------------------------
    def _attend(self, q, k, v, allowed: torch.Tensor) -> torch.Tensor:
        """q [g, H, Tq, Dh], k/v [g, Hkv, Tk, Dh], allowed [1, 1, Tq, Tk] bool -> [g, H, Tq, Dh]."""
        rep = q.shape[1] // k.shape[1]
        if rep > 1:  # the public file's repeat_kv: expand + reshape
            g, hkv, tk, dh = k.shape
            k = k[:, :, None].expand(g, hkv, rep, tk, dh).reshape(g, hkv * rep, tk, dh)
            v = v[:, :, None].expand(g, hkv, rep, tk, dh).reshape(g, hkv * rep, tk, dh)
        scale = self.config.head_dim ** -0.5
        add = torch.where(allowed, torch.zeros((), dtype=q.dtype, device=q.device),
                          torch.full((), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device))
        if self.impl == "eager":
            w = torch.matmul(q, k.transpose(2, 3)) * scale + add
            return torch.matmul(F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=add, is_causal=False, scale=scale)

    def _run(self, h, pos, groups, cache: BlockKVCache | None = None, want_kv: bool = False):
        """The decoder over h [B, T, D] at positions pos [B, T]. `groups`: [(rows, q_cols, k_cols,
        allowed)] -- each group of rows attends from its query columns q_cols (of h) to its key
        columns k_cols (of cat(cache, h) along the key axis) under `allowed` [1, 1, Tq, Tk]; other
        query columns (left pads) get zero attention output. Returns h and, with want_kv, the
        per-layer keys/values of h's columns."""
        cos, sin = rotation(pos, self.config.head_dim, self.config.rope_theta, h.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.model.layers):
            a = layer.self_attn
            q, k, v = a.qkv(layer.input_layernorm(h), cos, sin)
            if want_kv:
                keys.append(k)
                values.append(v)
            if cache is not None:
                k = torch.cat([cache.keys[i], k], 2)
                v = torch.cat([cache.values[i], v], 2)
            out = q.new_zeros(q.shape)
            for rows, qc, kc, allowed in groups:
                if len(groups) == 1 and qc is None:  # every row, every column: no gather
                    out = self._attend(q, k, v, allowed)
                    break
                res = self._attend(q[rows][:, :, qc], k[rows][:, :, kc], v[rows][:, :, kc], allowed)
                sub = out[rows]
                sub[:, :, qc] = res
                out[rows] = sub
            B, H, T, Dh = out.shape
            h = h + a.o_proj(out.transpose(1, 2).reshape(B, T, H * Dh))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, (keys, values)

    def _plain_groups(self, pads: torch.Tensor, T: int, dual: bool = False):
        """Row groups of a plain (or [x_t ; x_0]) pass: each row on its real columns with its own mask."""
        groups = []
        for n in pads.unique().tolist():
            rows = (pads == n).nonzero().squeeze(1)
            R = T - n
            if dual:
                allowed = dual_stream_mask(None, 1, R, self.block_size, pads.device)
                dev = pads.device
                cols = torch.cat([torch.arange(n, T, device=dev), torch.arange(T + n, 2 * T, device=dev)])
            else:
                allowed = decode_mask(None, 1, R, self.block_size, pads.device)
                cols = torch.arange(n, T, device=pads.device)
            full = n == 0 and len(pads.unique()) == 1
            groups.append((rows, None if full else cols, None if full else cols, allowed))
        return groups

    # -- passes ------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> Output:
        logits, _cache = self.forward_with_cache(input_ids, attention_mask)
        return Output(logits)

    def forward_with_cache(self, input_ids, attention_mask=None, keep: torch.Tensor | None = None):
        """A plain block-causal pass -> (logits [B, T, V], the cache of the columns [0, len(keep)) or
        None). `keep` must be a prefix of the columns: only finished blocks can be cached exactly."""
        B, T = input_ids.shape
        pads = _pads(attention_mask, B, T, input_ids.device)
        pos = (torch.arange(T, device=input_ids.device)[None, :] - pads[:, None]).clamp_min(0)
        h, (k, v) = self._run(self.model.embed_tokens(input_ids), pos, self._plain_groups(pads, T),
                              want_kv=keep is not None)
        if keep is None:
            return self._head(h), None
        n = int(keep.numel())
        if not torch.equal(keep.cpu(), torch.arange(n)):
            raise HarnessError("SDAR: a KV cache keeps a prefix of the canvas (the finished blocks) only")
        return self._head(h), BlockKVCache([x[:, :, :n] for x in k], [x[:, :, :n] for x in v])

    def forward_cached(self, input_ids, cache: BlockKVCache, columns: torch.Tensor, attention_mask=None,
                       store: bool = False):
        """Logits [B, Tq, V] of the canvas columns `columns` (contiguous, starting right after the
        cache), attending to the cache and themselves under the block-causal mask; `attention_mask`
        covers the canvas up to the last query column at least. With `store`, -> (logits, the cache
        extended by these columns)."""
        B, Tq = input_ids.shape
        Tc = cache.length
        dev = input_ids.device
        if int(columns[0]) != Tc or not torch.equal(columns.cpu(), torch.arange(Tc, Tc + Tq)):
            raise HarnessError(f"SDAR: a cached pass runs the columns right after the cache ({Tc}...), got "
                               f"{columns.tolist()}")
        T = Tc + Tq
        am = None if attention_mask is None else attention_mask[:, :T]
        pads = _pads(am, B, T, dev)
        if bool((pads > Tc).any()):
            raise HarnessError("SDAR: a cached pass over left-padding columns")
        groups = []
        for n in pads.unique().tolist():
            rows = (pads == n).nonzero().squeeze(1)
            kpos = torch.arange(T - n, device=dev)  # the real keys' positions
            qpos = kpos[Tc - n:]
            bs = self.block_size
            allowed = ((kpos[None, :] // bs) <= (qpos[:, None] // bs))[None, None]  # [1, 1, Tq, T - n]
            groups.append((rows, torch.arange(Tq, device=dev), torch.arange(n, T, device=dev), allowed))
        if len(groups) == 1 and int(pads[0]) == 0:
            groups = [(groups[0][0], None, None, groups[0][3])]
        pos = (torch.arange(Tc, T, device=dev)[None, :] - pads[:, None]).clamp_min(0)
        h, (k, v) = self._run(self.model.embed_tokens(input_ids), pos, groups, cache=cache, want_kv=store)
        logits = self._head(h)
        if not store:
            return logits
        return logits, BlockKVCache([torch.cat([a, b], 2) for a, b in zip(cache.keys, k)],
                                    [torch.cat([a, b], 2) for a, b in zip(cache.values, v)])

    def forward_pattern(self, input_ids: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> Output:
        """A forward with an explicit attention pattern `allowed` [B, 1, S, S] bool (True: attend) and
        position ids [B, S], applied as given (as dLLM-RL's rl_trado.py passes its 4-D mask and
        position ids to the public file); a query column that sees nothing attends to itself and
        must not be read."""
        B, S = input_ids.shape
        if tuple(allowed.shape) != (B, 1, S, S) or tuple(position_ids.shape) != (B, S):
            raise HarnessError(f"SDAR forward_pattern: expected allowed [{B}, 1, {S}, {S}] and position_ids "
                               f"[{B}, {S}], got {tuple(allowed.shape)} and {tuple(position_ids.shape)}")
        eye = torch.eye(S, dtype=torch.bool, device=allowed.device)
        allowed = allowed.bool() | (~allowed.bool().any(-1, keepdim=True) & eye)
        h, _ = self._run(self.model.embed_tokens(input_ids), position_ids, [(None, None, None, allowed)])
        return Output(self._head(h))

    def forward_denoise(self, xt: torch.Tensor, x0: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Logits [B, T, V] of x_t from one pass over [x_t ; x_0] (block_attention.dual_stream_mask):
        each noised block given the clean earlier blocks, as BD3-LM's and SDAR's training compute."""
        B, T = xt.shape
        pads = _pads(attention_mask, B, T, xt.device)
        pos = (torch.arange(T, device=xt.device)[None, :] - pads[:, None]).clamp_min(0)
        h, _ = self._run(self.model.embed_tokens(torch.cat([xt, x0], 1)), torch.cat([pos, pos], 1),
                         self._plain_groups(pads, T, dual=True))
        return self._head(h[:, :T])
