"""The built-in tiny masked diffusion LM (MDLM) and its character tokenizer.

A bidirectional pre-norm transformer: token + learned position embeddings, `n_layers` blocks of
full self-attention (PyTorch SDPA) and a GELU MLP, a final LayerNorm and an untied output head.
It is trained with the MDLM objective (docs/methods.md §1, `mc_elbo`) by `harness.models.train`.
A checkpoint is a directory: config.json, tokenizer.json, model.pt (state dict), CARD.md.

With an integer `TinyConfig.block_size` the same network is a block-diffusion model (BD3-LM,
arXiv 2503.09573): every forward method applies the block-causal mask of
harness/models/block_attention.py (bidirectional inside a block of `block_size` positions, causal
across blocks, blocks counted from a row's first real token), so keys of finished blocks never
depend on later columns and a KV cache of them is exact; `forward_denoise` is the one-pass
[x_t ; x_0] scoring/training forward (each noised block sees itself and the clean earlier blocks);
`forward_pattern` applies an explicit pattern and position ids (TraceRL's training rows).
`block_size` None (every checkpoint without the key) is the full-attention model, unchanged.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.block_attention import block_ids, decode_mask, dual_stream_mask, positions
from harness.registry import MODELS
from harness.types import ArchInfo, HarnessError

SPECIALS = ("<pad>", "<mask>", "<eos>")
DEFAULT_CHARS = "0123456789+-*/=(),:;|. "
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


class CharTokenizer:
    """One token per character, plus <pad>, <mask> and <eos>. Unknown characters are errors."""

    def __init__(self, chars: str = DEFAULT_CHARS):
        self.chars = chars
        self.itos = list(SPECIALS) + list(chars)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.mask_id, self.eos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            raise HarnessError(
                f"character {exc.args[0]!r} in {text!r} is not in the tiny tokenizer's "
                f"vocabulary {self.chars!r}"
            ) from None

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        out = []
        for i in (int(v) for v in ids):
            if i == self.eos_id and stop_at_eos:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return "".join(out)

    def to_json(self) -> dict:
        return {"type": "char", "chars": self.chars, "specials": list(SPECIALS)}

    @classmethod
    def from_json(cls, data: dict) -> "CharTokenizer":
        if data.get("type") != "char" or tuple(data.get("specials", ())) != SPECIALS:
            raise HarnessError(f"tokenizer.json: expected a char tokenizer with {SPECIALS}")
        return cls(data["chars"])


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int
    max_len: int = 32
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    block_size: int | None = None  # None: full bidirectional attention; an int: block diffusion

    def __post_init__(self):
        if self.block_size is not None and (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                                            or self.block_size < 1):
            raise HarnessError(f"tiny model config block_size: expected null or an integer >= 1, "
                               f"got {self.block_size!r}")


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        return self.forward_kv(h, attn_mask)[0]

    def _qkv(self, h: torch.Tensor):
        B, T, D = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        return tuple(z.transpose(1, 2) for z in (q, k, v))  # [B, H, T, Dh]

    def _out(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))

    def forward_kv(self, h: torch.Tensor, attn_mask: torch.Tensor | None):
        """The block, also returning its keys and values [B, H, T, Dh] (for KV caches)."""
        q, k, v = self._qkv(h)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # full (bidirectional)
        return self._out(h, a), k, v

    def forward_cached(self, h: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       order, key_mask: torch.Tensor | None) -> torch.Tensor:
        """The block for some columns only: their queries attend to the cached keys/values plus
        their own, put back in canvas-column order so the sum runs as in a full pass. `order` is
        an int j (the new columns go between cached columns j-1 and j) or a permutation of
        cat(cached, new)."""
        q, k, v = self._qkv(h)
        if isinstance(order, int):
            k = torch.cat([k_cache[:, :, :order], k, k_cache[:, :, order:]], 2)  # [B, H, Tc + Tq, Dh]
            v = torch.cat([v_cache[:, :, :order], v, v_cache[:, :, order:]], 2)
        else:
            k = torch.cat([k_cache, k], 2)[:, :, order]
            v = torch.cat([v_cache, v], 2)[:, :, order]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self._out(h, a)


class TinyMDLM(nn.Module):
    def __init__(self, cfg: TinyConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        # PyTorch's layer constructors draw their default init from the global RNG; fork it so
        # building a model leaves global state untouched (our own init below is what counts).
        with torch.random.fork_rng(devices=[]):
            self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.ln_f = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """GPT-2 style init from an explicit generator (never the global RNG)."""
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_f"):
                p.fill_(1.0)
            else:
                std = residual_std if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std, generator=generator)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = x.shape
        if T > self.cfg.max_len:
            raise HarnessError(f"sequence length {T} exceeds the tiny model's max_len {self.cfg.max_len}")
        if attention_mask is None:
            h = self.tok(x) + self.pos.weight[:T]  # [B, T, D]
        else:
            # Positions count real tokens only, so a left-padded row sits at the same positions
            # as it would alone: batch composition never changes a row's numbers.
            pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # [B, T]
            h = self.tok(x) + self.pos(pos)
        attn = self._full_mask(attention_mask, B, T, x.device)
        for block in self.blocks:
            h = block(h, attn)
        return self.head(self.ln_f(h))  # [B, T, V]

    def _full_mask(self, attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor | None:
        """The attention mask of a pass over all T columns: key padding (full attention) or the
        block-causal mask (block model); True = attend."""
        if self.cfg.block_size is not None:
            return decode_mask(attention_mask, B, T, self.cfg.block_size, device)  # [B, 1, T, T]
        return None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # key padding

    def forward_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] of the noised canvas xt [B, T], each block conditioned on itself and on
        the clean earlier blocks of x0 [B, T]: one pass over [x_t ; x_0] with the same position ids
        in both halves (BD3-LM's and SDAR's training forward). A full-attention model ignores x0."""
        if self.cfg.block_size is None:
            return self.forward(xt, attention_mask)
        B, T = xt.shape
        if x0.shape != xt.shape:
            raise HarnessError(f"forward_denoise: x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} differ in shape")
        if T > self.cfg.max_len:
            raise HarnessError(f"sequence length {T} exceeds the tiny model's max_len {self.cfg.max_len}")
        pos = positions(attention_mask, B, T, xt.device)  # [B, T]
        h = self.tok(torch.cat([xt, x0], 1)) + self.pos(torch.cat([pos, pos], 1))  # [B, 2T, D]
        attn = dual_stream_mask(attention_mask, B, T, self.cfg.block_size, xt.device)  # [B, 1, 2T, 2T]
        for block in self.blocks:
            h = block(h, attn)
        return self.head(self.ln_f(h[:, :T]))  # the x_t half

    def forward_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] of a pass with an explicit attention pattern `allowed` [B, 1, S, S] bool (True:
        attend) and position ids [B, S], applied as given (TraceRL's [prompt ; clean ; noisy] training
        rows, harness/algorithms/trace_rl.py). A query that sees nothing attends to itself; it must not
        be read. The position ids index the learned position table, so they must be < max_len."""
        B, S = x.shape
        if tuple(allowed.shape) != (B, 1, S, S) or tuple(position_ids.shape) != (B, S):
            raise HarnessError(f"forward_pattern: expected allowed [{B}, 1, {S}, {S}] and position_ids [{B}, {S}], "
                               f"got {tuple(allowed.shape)} and {tuple(position_ids.shape)}")
        if S and int(position_ids.max()) >= self.cfg.max_len:
            raise HarnessError(f"position {int(position_ids.max())} exceeds the tiny model's max_len "
                               f"{self.cfg.max_len}")
        eye = torch.eye(S, dtype=torch.bool, device=allowed.device)
        attn = allowed.bool() | (~allowed.bool().any(-1, keepdim=True) & eye)
        h = self.tok(x) + self.pos(position_ids)
        for block in self.blocks:
            h = block(h, attn)
        return self.head(self.ln_f(h))

    def _embed(self, x: torch.Tensor, attention_mask: torch.Tensor | None, columns: torch.Tensor):
        """Embeddings of the canvas columns `columns` (x holds exactly those columns), with the
        same positions a full pass gives them; the key-padding mask of the whole canvas."""
        width = int(columns.max()) + 1 if attention_mask is None else attention_mask.shape[1]
        if width > self.cfg.max_len:
            raise HarnessError(f"sequence length {width} exceeds the tiny model's max_len {self.cfg.max_len}")
        if attention_mask is None:
            return self.tok(x) + self.pos.weight[columns], None
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, columns]  # [B, Tq]
        return self.tok(x) + self.pos(pos), attention_mask.bool()

    def forward_with_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
                           keep: torch.Tensor) -> tuple[torch.Tensor, "TinyKVCache"]:
        """A full pass (the same numbers as `forward`) that also keeps the keys/values of the
        canvas columns `keep` [Tc] in every layer: Fast-dLLM's cache-building pass."""
        columns = torch.arange(x.shape[1], device=x.device)
        h, _ = self._embed(x, attention_mask, columns)
        attn = self._full_mask(attention_mask, x.shape[0], x.shape[1], x.device)
        keys, values = [], []
        for block in self.blocks:
            h, k, v = block.forward_kv(h, attn)
            keys.append(k[:, :, keep])
            values.append(v[:, :, keep])
        return self.head(self.ln_f(h)), TinyKVCache(keys=keys, values=values, columns=keep)

    def forward_cached(self, x: torch.Tensor, cache: "TinyKVCache", columns: torch.Tensor,
                       attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, Tq, V] of the canvas columns `columns` [Tq] (x: [B, Tq] their tokens),
        attending to the cached columns' keys/values and their own. `attention_mask` is the whole
        canvas's [B, T] mask (positions and key padding), or None."""
        h, key_mask = self._embed(x, attention_mask, columns)
        all_cols = torch.cat([cache.columns, columns])
        order = torch.argsort(all_cols, stable=True)  # keys in canvas order, as in a full pass
        key_cols = all_cols[order]
        if self.cfg.block_size is not None:
            attn = self._cached_block_mask(attention_mask, columns, key_cols, x.shape[0])
        else:
            attn = None if key_mask is None else key_mask[:, key_cols][:, None, None, :]
        j = int((cache.columns < columns[0]).sum())
        if torch.equal(key_cols, torch.cat([cache.columns[:j], columns, cache.columns[j:]])):
            order = j  # the new columns form one run between cached ones: slice instead of gather
        for block, k, v in zip(self.blocks, cache.keys, cache.values):
            h = block.forward_cached(h, k, v, order, attn)
        return self.head(self.ln_f(h))

    def _cached_block_mask(self, attention_mask: torch.Tensor | None, columns: torch.Tensor,
                           key_cols: torch.Tensor, B: int) -> torch.Tensor:
        """[B, 1, Tq, Tk] block-causal mask of the query columns `columns` over the key columns
        `key_cols` (canvas order): the rows of `decode_mask` a full pass would use."""
        width = attention_mask.shape[1] if attention_mask is not None else int(key_cols.max()) + 1
        blk = block_ids(attention_mask, 1 if attention_mask is None else B, width, self.cfg.block_size,
                        key_cols.device)  # [B or 1, W]
        qb, kb = blk[:, columns], blk[:, key_cols]  # [B, Tq], [B, Tk]
        allowed = (kb[:, None, :] <= qb[:, :, None]) & (kb >= 0)[:, None, :] & (qb >= 0)[:, :, None]
        # A pad query (sees no key) attends to itself, as in decode_mask; its output is never read.
        own = key_cols[None, None, :] == columns[None, :, None]  # [1, Tq, Tk]
        allowed = allowed | (own & ~allowed.any(-1, keepdim=True))
        return allowed.expand(B, -1, -1)[:, None]


@dataclass
class TinyKVCache:
    """Keys/values of some canvas columns in every layer (Fast-dLLM prefix and dual caches).

    `length` is the number of cached key positions (the meter's attention FLOPs use it); `take`
    keeps some rows, for samplers that drop finished rows from later passes."""

    keys: list  # per layer [B, H, Tc, Dh]
    values: list  # per layer [B, H, Tc, Dh]
    columns: torch.Tensor  # [Tc] canvas columns of the cached keys

    @property
    def length(self) -> int:
        return int(self.columns.numel())

    def take(self, rows: torch.Tensor) -> "TinyKVCache":
        return TinyKVCache(keys=[k[rows] for k in self.keys], values=[v[rows] for v in self.values],
                           columns=self.columns)


class TinyLayers:
    """A full-attention TinyMDLM layer by layer: the view the approximate caches run on
    (harness/samplers/_approx_cache.py: dKV-Cache, dLLM-Cache), which recompute some columns of
    some layers and reuse cached keys/values or layer outputs for the rest. Running every layer
    over every column with these pieces is exactly `TinyMDLM.forward` (the same operations in the
    same order)."""

    def __init__(self, module: "TinyMDLM"):
        if module.cfg.block_size is not None:
            raise HarnessError("approximate KV caches need a full-attention model; this tiny model is a "
                               f"block-diffusion model (block_size {module.cfg.block_size})")
        self.module = module
        self.n_layers = len(module.blocks)

    def embed(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        """The canvas x [B, T] -> (h [B, T, D], key mask [B, 1, 1, T] or None), as `forward`."""
        B, T = x.shape
        if T > self.module.cfg.max_len:
            raise HarnessError(f"sequence length {T} exceeds the tiny model's max_len {self.module.cfg.max_len}")
        if attention_mask is None:
            return self.module.tok(x) + self.module.pos.weight[:T], None
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.module.tok(x) + self.module.pos(pos), attention_mask.bool()[:, None, None, :]

    def qkv(self, i: int, h: torch.Tensor):
        """h [B, n, D] -> q, k, v [B, H, n, Dh] of layer i."""
        return self.module.blocks[i]._qkv(h)

    def qkv_at(self, i: int, h: torch.Tensor, columns: torch.Tensor):
        """q, k, v of the canvas columns `columns` ([n] or [B, n]) whose hidden states are h [B, n, D]:
        `qkv`, since this model's positions enter at `embed` (a rotary model's view rotates q and k
        at the columns' positions here)."""
        return self.qkv(i, h)

    def value(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """h [B, n, D] -> v [B, H, n, Dh] of layer i alone (the value slice of its fused projection)."""
        blk = self.module.blocks[i]
        B, n, D = h.shape
        v = F.linear(blk.ln1(h), blk.qkv.weight[2 * D:], blk.qkv.bias[2 * D:])
        return v.view(B, n, blk.n_heads, D // blk.n_heads).transpose(1, 2)

    def attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask) -> torch.Tensor:
        """Layer i's attention branch: queries [B, H, n, Dh] over keys/values [B, H, m, Dh] ->
        [B, n, D], the output projection applied (what the residual adds)."""
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        B, H, n, Dh = a.shape
        return self.module.blocks[i].proj(a.transpose(1, 2).reshape(B, n, H * Dh))

    def attention_weights(self, i: int, q: torch.Tensor, k: torch.Tensor, key_mask) -> torch.Tensor:
        """Layer i's attention probabilities [B, H, n, m] of queries [B, H, n, Dh] over keys [B, H, m, Dh]
        (0 on masked keys): what `attend` weighs the values by (d2Cache's attention rollout)."""
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, -torch.inf)
        return scores.softmax(-1)

    def mlp(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's MLP branch on h [B, n, D] (what the residual adds)."""
        blk = self.module.blocks[i]
        return blk.fc2(F.gelu(blk.fc1(blk.ln2(h))))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.module.head(self.module.ln_f(h))


class TinyDenoiser:
    """The Denoiser adapter of a TinyMDLM (no logit shift; mask id from the tokenizer)."""

    shift_logits = False

    def __init__(self, module: TinyMDLM, tokenizer: CharTokenizer, *, card: dict | None = None):
        self.module = module
        self.tokenizer = tokenizer
        self.mask_id = tokenizer.mask_id
        self.eos_id = tokenizer.eos_id
        self.pad_id = tokenizer.pad_id
        self.vocab_size = module.cfg.vocab_size
        self.card = card or {}

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def block_size(self) -> int | None:
        """Block-diffusion block size (None: full attention); see harness/models/block_attention.py."""
        return self.module.cfg.block_size

    def logits_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] of xt, each block given the clean earlier blocks of x0 (one pass over [x_t ; x_0])."""
        return self.module.forward_denoise(xt, x0, attention_mask)

    def logits_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] under an explicit pattern [B, 1, S, S] (True: attend) and position ids [B, S]
        (harness/models/block_attention.py, "An explicit pattern")."""
        return self.module.forward_pattern(x, allowed, position_ids)

    @property
    def arch(self) -> ArchInfo:
        cfg = self.module.cfg
        n_embed = self.module.tok.weight.numel() + self.module.pos.weight.numel()
        n = sum(p.numel() for p in self.module.parameters()) - n_embed
        return ArchInfo(n_params=n, n_layers=cfg.n_layers, d_model=cfg.d_model)

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(x, attention_mask)

    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                           keep) -> tuple[torch.Tensor, TinyKVCache]:
        """A full pass over x [B, T] that also returns a KV cache of the columns `keep` (a slice,
        or a 1-D tensor of column indices)."""
        if isinstance(keep, slice):
            keep = torch.arange(x.shape[1], device=x.device)[keep]
        return self.module.forward_with_cache(x, attention_mask, keep.to(x.device))

    def logits_cached(self, x: torch.Tensor, cache: TinyKVCache, *, positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, Tq, V] of the canvas columns `positions` [Tq] whose tokens are x [B, Tq],
        reusing `cache` for the cached columns. attention_mask: the whole canvas's [B, T] mask."""
        return self.module.forward_cached(x, cache, positions.to(x.device), attention_mask)

    def logits_layerwise(self, run, **work):
        """Run `run(layers)` on the model's layer-by-layer view (`TinyLayers`) and return what it
        returns (logits first). `work` describes the pass for the meter (harness/budget.py)."""
        return run(TinyLayers(self.module))


def save_checkpoint(path: Path, module: TinyMDLM, tokenizer: CharTokenizer, extra: dict) -> None:
    """Write a checkpoint directory; `extra` (training config, metrics) goes into config.json."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    torch.save(state, path / "model.pt")
    (path / "tokenizer.json").write_text(json.dumps(tokenizer.to_json(), indent=1) + "\n")
    (path / "config.json").write_text(
        json.dumps({"model": asdict(module.cfg), **extra}, indent=1, sort_keys=True) + "\n"
    )


def resolve_checkpoint(name: str) -> Path:
    """A checkpoint name under harness/models/checkpoints/, or a path to a directory."""
    path = Path(name).expanduser()
    if not path.is_dir():
        path = CHECKPOINT_DIR / name
    if not (path / "config.json").is_file():
        known = sorted(p.name for p in CHECKPOINT_DIR.glob("*") if (p / "config.json").is_file())
        raise HarnessError(
            f"tiny checkpoint {name!r}: no directory with config.json there "
            f"(built-in checkpoints: {', '.join(known) or 'none'})"
        )
    return path


def checkpoint_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.pt"):
        h.update((path / name).read_bytes())
    return h.hexdigest()


def load_checkpoint(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    config = json.loads((path / "config.json").read_text())
    tokenizer = CharTokenizer.from_json(json.loads((path / "tokenizer.json").read_text()))
    module = TinyMDLM(TinyConfig(**config["model"]))
    module.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    module.to(device=device, dtype=dtype).eval()
    return module, tokenizer, config


_PLANNED: dict = {}  # (config.json, mtime) -> block_size: planning reads each checkpoint once

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


@MODELS.register("tiny")
@dataclass(frozen=True, kw_only=True)
class Tiny:
    """Built-in tiny transformer MDLM, character tokenizer (block diffusion if its config sets block_size).

    The full-attention model supports every `cache:` of the block samplers: Fast-dLLM's prefix and
    dual KV caches and, through its layer-by-layer view (`TinyLayers`, which also gives attention
    weights), the approximate dKV-Cache, dLLM-Cache (harness/samplers/_approx_cache.py) and d2Cache
    (harness/samplers/_d2cache.py)."""

    checkpoint: str = "tiny-addition"
    device: str = "cpu"
    dtype: str = "float32"

    # denoiser capabilities components may require (full_attention and the layer view: not for a block
    # checkpoint, which `planned_block_size` tells before loading)
    provides: ClassVar[tuple[str, ...]] = ("logits_pattern", "full_attention", "logits_layerwise", "attention_weights")

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def load(self) -> TinyDenoiser:
        path = resolve_checkpoint(self.checkpoint)
        module, tokenizer, config = load_checkpoint(path, self.device, DTYPES[self.dtype])
        return TinyDenoiser(module, tokenizer, card=config)

    def capabilities(self) -> tuple[str, ...]:
        """`provides`, plus `any_order_causal` when the checkpoint was trained with the any-order causal
        objective (config.json `train.objective: any_order`, harness/models/train.py), read before loading."""
        try:
            path = resolve_checkpoint(self.checkpoint) / "config.json"
            objective = json.loads(path.read_text()).get("train", {}).get("objective")
        except (HarnessError, OSError, ValueError, AttributeError):
            objective = None
        return self.provides + (("any_order_causal",) if objective == "any_order" else ())

    def planned_block_size(self) -> int | None:
        """The checkpoint's block size (config.json `model.block_size`) read before loading, for
        plan-time budgets (harness/config.py); None for a full-attention checkpoint or one not found
        (loading then says why)."""
        try:
            path = resolve_checkpoint(self.checkpoint) / "config.json"
            key = (str(path), path.stat().st_mtime_ns)
            if key not in _PLANNED:
                _PLANNED[key] = json.loads(path.read_text()).get("model", {}).get("block_size")
        except (HarnessError, OSError, ValueError, AttributeError):
            return None
        return _PLANNED[key]

    def provenance(self) -> dict:
        path = resolve_checkpoint(self.checkpoint)
        return {"checkpoint": str(path), "sha256": checkpoint_sha256(path)}
