"""The built-in tiny masked diffusion LM (MDLM) and its character tokenizer.

A bidirectional pre-norm transformer: token + learned position embeddings, `n_layers` blocks of
full self-attention (PyTorch SDPA) and a GELU MLP, a final LayerNorm and an untied output head.
It is trained with the MDLM objective (METHODS.md §1, `mc_elbo`) by `harness.models.train`.
A checkpoint is a directory: config.json, tokenizer.json, model.pt (state dict), CARD.md.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        B, T, D = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, H, T, Dh]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # full (bidirectional)
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


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
        attn = None
        if attention_mask is None:
            h = self.tok(x) + self.pos.weight[:T]  # [B, T, D]
        else:
            # Positions count real tokens only, so a left-padded row sits at the same positions
            # as it would alone: batch composition never changes a row's numbers.
            pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # [B, T]
            h = self.tok(x) + self.pos(pos)
            attn = attention_mask.bool()[:, None, None, :]  # key padding: True = attend
        for block in self.blocks:
            h = block(h, attn)
        return self.head(self.ln_f(h))  # [B, T, V]


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
    def arch(self) -> ArchInfo:
        cfg = self.module.cfg
        n_embed = self.module.tok.weight.numel() + self.module.pos.weight.numel()
        n = sum(p.numel() for p in self.module.parameters()) - n_embed
        return ArchInfo(n_params=n, n_layers=cfg.n_layers, d_model=cfg.d_model)

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(x, attention_mask)


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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


@MODELS.register("tiny")
@dataclass(frozen=True, kw_only=True)
class Tiny:
    """Built-in tiny bidirectional transformer MDLM with a character tokenizer."""

    checkpoint: str = "tiny-addition"
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def load(self) -> TinyDenoiser:
        path = resolve_checkpoint(self.checkpoint)
        module, tokenizer, config = load_checkpoint(path, self.device, DTYPES[self.dtype])
        return TinyDenoiser(module, tokenizer, card=config)

    def provenance(self) -> dict:
        path = resolve_checkpoint(self.checkpoint)
        return {"checkpoint": str(path), "sha256": checkpoint_sha256(path)}
