"""What the transformers-based diffusion adapters (llada, dream, diffusion_gemma) share.

- `DiffusionModel`: the component fields (`path` or `preset`, `config` overrides, dtype, device,
  attention kernel, torch.compile, init seed, tokenizer) and the two loading routes: `path` loads
  a saved model through transformers (trust_remote_code for LLaDA/Dream), `preset` builds a
  randomly initialised model from a named config (the stand-in module for LLaDA/Dream).
- `DiffusionDenoiser`: the Denoiser both routes return (mask id, logit alignment, pad/eos, chat
  template, autocast), with KV-cache methods when the module has them (`CachedDiffusionDenoiser`).
- `char_tokenizer`: a self-built character tokenizer for random presets (no download), and
  `save_pretrained_dir`: a saved model directory whose config.json `auto_map` points at the
  stand-in files copied beside it, loadable with trust_remote_code like the real checkpoints.

transformers is imported inside functions only (docs/architecture.md, convention 5).
"""
from __future__ import annotations

import abc
import contextlib
import json
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from harness.models.hf import HFDenoiser, HFTokenizer, _pretrained, positions_from_mask, weights_sha256
from harness.types import HarnessError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STANDINS = Path(__file__).parent / "standins"
CHARS = string.printable[:95] + "\n"  # digits, letters, punctuation, space, newline: one token each
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("model device 'cuda': no CUDA device is available here (use device: cpu or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else torch.float32
    return DTYPES[dtype]


class ChatTokenizer(HFTokenizer):
    """HFTokenizer plus the chat template: `apply_chat_template(prompt)` wraps a user prompt as the
    model's chat format expects (the tokenizer's own template), or returns it unchanged if none."""

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def apply_chat_template(self, prompt: str) -> str:
        if not self.has_chat_template:
            return prompt
        return self.hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)


def char_tokenizer(*, eos_id: int, pad_id: int, mask_id: int | None):
    """A transformers fast tokenizer with one token per printable character (ids 0..94) and
    special tokens at the model's ids (they may be sparse: LLaDA's mask is 126336)."""
    import tokenizers
    import transformers

    specials = {"<|eos|>": eos_id, "<|pad|>": pad_id}
    if mask_id is not None:
        specials["<|mask|>"] = mask_id
    ids = {c: i for i, c in enumerate(CHARS)}
    for name, i in specials.items():
        if i < len(CHARS):
            raise HarnessError(f"special token {name} id {i} collides with the character ids 0..{len(CHARS) - 1}")
    if pad_id == eos_id:
        del specials["<|pad|>"]
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab={**ids, **specials}, unk_token=" "))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    backend.decoder = tokenizers.decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|eos|>", pad_token="<|pad|>" if pad_id != eos_id else "<|eos|>",
        mask_token="<|mask|>" if mask_id is not None else None)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_pretrained_dir(module, tokenizer, path: Path, standin: str | None = None) -> Path:
    """Save a model (transformers or native) and its tokenizer like a hub checkpoint. With `standin`
    ("llada_standin"), copy the stand-in files beside the weights and point config.json's auto_map
    at them, so the directory also loads with trust_remote_code (`impl: remote`) as LLaDA/Dream do."""
    path = Path(path)
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(path)
    else:  # a native module (harness/models/native): the official config.json keys + safetensors
        from harness.models.native.checkpoint import save_checkpoint

        save_checkpoint(module, module.config.to_json(), path)
    tokenizer.save_pretrained(path)
    if standin is not None:
        for name in (f"{standin}.py", "standin_layers.py"):
            shutil.copy(STANDINS / name, path / name)
        cfg = json.loads((path / "config.json").read_text())
        cls_model = {"llada_standin": "LLaDAModelLM", "dream_standin": "DreamModel"}.get(standin, type(module).__name__)
        cls_config = {"llada_standin": "LLaDAConfig", "dream_standin": "DreamConfig"}.get(standin,
                                                                                          type(module.config).__name__)
        cfg["auto_map"] = {"AutoConfig": f"{standin}.{cls_config}", "AutoModel": f"{standin}.{cls_model}"}
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path


class DiffusionDenoiser(HFDenoiser):
    """A transformers diffusion LM as a Denoiser: ids [B, T] (+ padding mask) -> logits [B, T, V].

    `mask_style` says how the model takes padding: "2d" (LLaDA: a [B, T] mask, positions 0..T-1)
    or "4d" (Dream: a boolean [B, 1, T, T] mask plus position ids counting real tokens, as Dream's
    own generate passes them). On a GPU with a 16-bit dtype the forward runs under autocast.
    """

    noise: ClassVar[str] = "masked"
    # Remote code whose padding handling is not verified (LLaDA's public file builds a padding mask
    # but calls attention with attn_mask=None, so left padding leaks into every row): a padded batch
    # runs one forward per distinct span of real tokens, unpadded, as each row runs alone.
    padding_by_rows: bool = False

    def __init__(self, module: Any, tokenizer: ChatTokenizer, *, mask_id: int, eos_id: int, pad_id: int,
                 shift_logits: bool, mask_style: Literal["2d", "4d"], compile: bool = False):
        super().__init__(module, tokenizer, mask_id=mask_id, eos_id=eos_id, pad_id=pad_id, position_ids=False)
        self.shift_logits = shift_logits
        self.mask_style = mask_style
        self.forward = torch.compile(module) if compile else module

    def _kwargs(self, attention_mask: torch.Tensor | None) -> dict:
        if attention_mask is None:
            return {}
        if self.mask_style == "2d":
            return {"attention_mask": attention_mask.long()}
        B, T = attention_mask.shape
        m = attention_mask.bool()[:, None, None, :].expand(B, 1, T, T)  # keys only: pad queries stay finite
        return {"attention_mask": m, "position_ids": positions_from_mask(attention_mask)}

    def _autocast(self):
        dtype = next(self.module.parameters()).dtype
        on = self.device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
        return torch.autocast("cuda", dtype=dtype, enabled=on) if on else contextlib.nullcontext()

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.padding_by_rows and attention_mask is not None and not bool(attention_mask.bool().all()):
            return self._logits_by_span(x, attention_mask)
        with self._autocast():
            return self.forward(input_ids=x, **self._kwargs(attention_mask)).logits  # [B, T, V]

    def _logits_by_span(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rows grouped by their real span [s, e) (left or right padding), each group run on x[:, s:e]
        with no mask; the padded positions' logits are 0 (nothing reads them)."""
        out = None
        for (s, e), rows in real_spans(attention_mask):
            with self._autocast():
                part = self.forward(input_ids=x[rows, s:e]).logits
            if out is None:
                out = part.new_zeros(*x.shape, part.shape[-1])
            out[rows, s:e] = part
        return out


def real_spans(attention_mask: torch.Tensor) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """[B, T] padding mask -> [((s, e), rows)]: rows grouped by the span [s, e) of their real tokens.
    A row whose real tokens are not one contiguous span (padding inside it) is an error."""
    m = attention_mask.bool()
    T = m.shape[1]
    count = m.sum(-1)
    start = torch.where(count > 0, m.long().argmax(-1), torch.zeros_like(count))
    end = start + count
    cols = torch.arange(T, device=m.device)[None, :]
    if not torch.equal(m, (cols >= start[:, None]) & (cols < end[:, None])) or bool((count == 0).any()):
        raise HarnessError("a padded batch for remote code whose padding is not verified: every row's real tokens must "
                           "be one non-empty contiguous span (left or right padding); got padding inside a row")
    keys = torch.stack([start, end], -1).tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(tuple(k), []).append(i)
    return [(k, torch.tensor(rows, device=m.device)) for k, rows in groups.items()]


class CachedDiffusionDenoiser(DiffusionDenoiser):
    """A DiffusionDenoiser whose module implements `forward_with_cache` / `forward_cached` (the
    stand-ins): the prefix/dual KV caches of the block samplers (harness/samplers/_cache.py).
    Padding goes in as in `logits`: LLaDA's [B, T] mask as given, Dream's 4-D mask plus position ids
    (of the whole canvas; a cached pass slices them to its columns)."""

    def _padding(self, attention_mask: torch.Tensor | None) -> dict:
        return {"attention_mask": attention_mask} if self.mask_style == "2d" else self._kwargs(attention_mask)

    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, keep):
        if isinstance(keep, slice):
            keep = torch.arange(x.shape[1], device=x.device)[keep]
        with self._autocast():
            return self.module.forward_with_cache(x, keep=keep.to(x.device), **self._padding(attention_mask))

    def logits_cached(self, x: torch.Tensor, cache, *, positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        with self._autocast():
            return self.module.forward_cached(x, cache, positions.to(x.device), **self._padding(attention_mask))


@dataclass(frozen=True, kw_only=True)
class DiffusionModel(abc.ABC):
    """Fields and loading routes shared by llada, dream and diffusion_gemma (subclasses set the
    presets and how to build the module and the denoiser)."""

    path: str | None = None  # a local directory or a hub id
    preset: str | None = None  # random init from a named config (no weights)
    config: dict = field(default_factory=dict)  # overrides of the preset's config keys
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attn: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False
    seed: int = 0  # random init of a preset
    tokenizer: str | None = None  # a tokenizer directory; presets default to a character tokenizer
    # apply the chat template to prompts in every study, the RL loop and eval (harness/models/_family.py):
    # auto = read from the checkpoint (its tokenizer's template, its own name), off for presets
    chat: Literal["auto"] | bool = "auto"
    # encode prompts as `tokenizer(text)` does, with the tokenizer's special tokens (after the chat template:
    # LLaDA then starts with two BOS tokens, as its OpenCompass and Fast-dLLM evaluations feed it;
    # harness/prompting.py)
    add_special_tokens: bool = False

    presets: ClassVar[dict[str, dict]] = {}
    trust_remote_code: ClassVar[bool] = True
    noise: ClassVar[str] = "masked"
    applies: ClassVar[str] = ("noise: masked; estimators: the masked ones (mc_elbo, one_step, ...; not uniform_x0 "
                              "or autoregressive); samplers: the masked block samplers")

    def __post_init__(self):
        name = getattr(type(self), "registry_name", type(self).__name__)
        if (self.path is None) == (self.preset is None):
            raise HarnessError(f"model {name}: give exactly one of path (a saved model) or preset "
                               f"(random init; known: {', '.join(self.presets)})")
        if self.preset is not None and self.preset not in self.presets:
            raise HarnessError(f"model {name}: unknown preset {self.preset!r} (known: {', '.join(self.presets)})")
        if self.path is not None and self.config:
            raise HarnessError(f"model {name}: config overrides apply to presets only, not to path {self.path!r}")

    # -- what subclasses define ------------------------------------------------------------------
    @abc.abstractmethod
    def config_class(self):
        """The transformers config class of a preset (random init)."""

    @abc.abstractmethod
    def model_class(self):
        """The module class a preset instantiates."""

    def auto_class(self):
        import transformers

        return transformers.AutoModel

    # -- loading -----------------------------------------------------------------------------------
    def resolved_config(self) -> dict:
        return {**self.presets[self.preset], **self.config}

    def build_module(self):
        """(module, hf tokenizer) on the resolved device and dtype, in eval mode."""
        dev = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, dev)
        if self.preset is not None:
            cfg = self.config_class()(**self.resolved_config())
            # Seeded init that leaves the global RNG as it was (docs/architecture.md, convention 3).
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), dev:
                torch.manual_seed(self.seed)
                module = self.model_class()._from_config(cfg, dtype=dtype, attn_implementation=self.attn)
            tok = self._load_tokenizer() if self.tokenizer else self.preset_tokenizer(cfg)
        else:
            tok = self._load_tokenizer()
            kwargs = {"dtype": dtype}
            if self.attn == "eager":  # sdpa: the model's default (remote code may not declare support)
                kwargs["attn_implementation"] = "eager"
            module = _pretrained(self.auto_class(), self, **kwargs).to(dev)
        return module.eval(), tok

    def _load_tokenizer(self):
        import transformers

        if self.tokenizer is None:
            return _pretrained(transformers.AutoTokenizer, self)
        spec = _Where(path=self.tokenizer, revision=None, trust_remote_code=self.trust_remote_code)
        return _pretrained(transformers.AutoTokenizer, spec)

    def preset_tokenizer(self, cfg):
        return char_tokenizer(eos_id=_first(cfg.eos_token_id), pad_id=cfg.pad_token_id,
                              mask_id=getattr(cfg, "mask_token_id", None))

    def special_ids(self, module, tok, default_mask: int | None) -> tuple[int | None, int, int]:
        """(mask, eos, pad): the config's mask id (the tokenizer's, or the model's known default),
        the tokenizer's eos (else the config's), pad (else eos)."""
        cfg = module.config
        mask = getattr(cfg, "mask_token_id", None)
        if mask is None:
            mask = tok.mask_token_id if tok.mask_token_id is not None else default_mask
        eos = tok.eos_token_id if tok.eos_token_id is not None else _first(getattr(cfg, "eos_token_id", None))
        if eos is None:
            raise HarnessError(f"model {self.path or self.preset!r}: no eos id in the tokenizer or the config")
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        return mask, eos, pad

    def chat_record(self, hf_tokenizer=None) -> dict:
        """The manifest's account of the chat option: the option, whether prompts get the chat
        template, and why (the tokenizer is loaded to read its template when not given)."""
        from harness.models._family import resolve_chat_option

        if self.preset is not None and self.chat == "auto":
            on, why = False, "a random-init preset: plain prompts"
        else:
            tok = hf_tokenizer if hf_tokenizer is not None else (
                self._load_tokenizer() if self.path is not None or self.tokenizer else None)
            if tok is None:  # a preset forced on: its character tokenizer has a template
                on, why = bool(self.chat), f"chat: {str(bool(self.chat)).lower()} (the model option)"
            else:
                on, why = resolve_chat_option(self.chat, self.path, tok)
        return {"option": self.chat, "on": on, "source": why}

    def provenance(self) -> dict:
        if self.preset is not None:
            return {"preset": self.preset, "config": self.resolved_config(), "seed": self.seed,
                    "weights": "random init", "chat": self.chat_record()}
        import transformers

        config = _pretrained(transformers.AutoConfig, self)
        out = {"path": self.path, "revision": self.revision, "commit": getattr(config, "_commit_hash", None),
               "weights_sha256": None, "chat": self.chat_record()}
        path = Path(self.path).expanduser()
        if path.is_dir():
            out["weights_sha256"], out["weights_files"] = weights_sha256(path)
        return out


@dataclass(frozen=True)
class _Where:
    """The fields `hf._pretrained` reads, for a tokenizer loaded from its own path."""

    path: str
    revision: str | None
    trust_remote_code: bool


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) else v
