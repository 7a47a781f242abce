"""`bd3lm`: BD3-LM block diffusion (Arriola et al. 2025, arXiv 2503.09573; kuleshov-group/bd3lms).

A DiT whose attention is bidirectional inside a block of `block_size` tokens and causal across
blocks (harness/models/block_attention.py), trained with each block noised given the clean
earlier blocks (the `bd3_elbo` estimator computes that loss).

`impl: native` (the default) runs the harness's own torch implementation
(harness/models/native/bd3lm.py): `path` reads a released checkpoint directory or hub id
(kuleshov-group/bd3lm-owt-block_size4, -8, -16: config.json + model.safetensors) by tensor name,
with no remote code; `block_size` comes from the config. Its logits equal the public
`modeling_bd3lm.py`'s on the same weights: the plain forward against the file's `sample_mode`,
the scoring pass against its training forward over [x_t ; x_0] (tests/models/test_bd3lm_parity.py
measures both, fp32 and bf16 weights). BD3-LM computes in float32 whatever its weights' dtype
(its backbone runs under autocast(float32)); `dtype: bfloat16` stores the weights in bf16 and
computes in float32 as the reference does. Left-padded rows give the numbers they give alone.
`preset` builds it randomly initialised: "tiny" for CPU tests (vocab 128, block 4), "bd3lm-owt" for
GPU throughput (the released 12 x 768 dims, vocab 50258, model_length 1024).

`impl: remote` runs the checkpoint's own `modeling_bd3lm.py` through trust_remote_code
(AutoModelForMaskedLM; checkpoints only). That file was written for transformers 4.x: under 5.x it
does not load unpatched (the error says so and points to impl: native). The reference takes no
padding mask, so rows are run per padding group with their pads cut off; its training forward has
a fixed [2·model_length]² mask, so the scoring pass right-pads each row with MASK to model_length,
which is exact only when a row's length is a multiple of block_size (other lengths are refused).

Special ids, as BD3-LM sets up GPT-2 (bd3lms `dataloader.get_tokenizer`, `diffusion.py`): GPT-2
has no mask token, so MASK = tokenizer.vocab_size = 50257, the id of the [PAD] token BD3-LM adds
(PAD == MASK); <|endoftext|> 50256 is BOS and EOS (BD3-LM wraps every sequence in it, so prompts
start with it: `prompting.add_bos`). The head has 50258 columns, the MASK column included; the
denoiser applies BD3-LM's `subs` parameterisation to it (mask logit −1e6, `_subs_parameterization`),
so no distribution the harness reads puts mass on MASK. Logits are not shifted.

Tokenizer: the released checkpoints ship none (bd3lms `push_to_hf.py` pushes the model only; BD3-LM
tokenizes with the hub's `gpt2`). `tokenizer:` names a
directory or hub id; without it, the checkpoint directory's own tokenizer files are used when
present (the test fixtures ship a small character-level stand-in with GPT-2's special ids), else
`gpt2` from the hub, with [PAD] added as BD3-LM does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from harness.models._family import declare
from harness.models._hf_common import ChatTokenizer, _Where, char_tokenizer, resolve_device, resolve_dtype
from harness.models.hf import _pretrained
from harness.models.native.adapter import NativeOrRemote, config_block_size
from harness.registry import MODELS
from harness.types import ArchInfo, HarnessError

MASK_ID = 50257  # GPT-2's vocab_size: BD3-LM's MASK (= its added [PAD])
EOS_ID = 50256  # <|endoftext|>: BOS and EOS
NEG = -1000000.0  # BD3-LM's neg_infinity (the subs parameterisation's mask logit offset)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")

# BD3-LM's decoding/prompting defaults (harness/models/_family.py): sequences start with <|endoftext|>
FAMILY = dict(decode_defaults={"schedule": "linear"}, stop_tokens=(), add_bos=True)

PRESETS = {
    "tiny": dict(block_size=4, vocab_size=128, model_length=128, hidden_dim=64, cond_dim=32, n_blocks=2, n_heads=4),
    "bd3lm-owt": dict(block_size=4, vocab_size=50258, model_length=1024, hidden_dim=768, cond_dim=128, n_blocks=12,
                      n_heads=12),
}


class BD3LMDenoiser:
    """A BD3-LM module (native or the reference's) as a block-diffusion Denoiser.

    `logits` is the plain block-causal forward, `logits_denoise` the [x_t ; x_0] scoring pass
    (harness/models/block_attention.py), `logits_pattern` a forward with an explicit attention
    pattern and position ids (TraceRL's training layout), `logits_build_cache` / `logits_cached`
    the exact KV cache of finished blocks for block decoding (the last three: native only)."""

    noise: ClassVar[str] = "masked"
    shift_logits = False

    def __init__(self, module, tokenizer: ChatTokenizer, *, mask_id: int, eos_id: int, pad_id: int,
                 block_size: int, model_length: int, remote: bool):
        self.module, self.tokenizer = module, tokenizer
        self.mask_id, self.eos_id, self.pad_id = mask_id, eos_id, pad_id
        self.block_size, self.model_length, self.remote = int(block_size), int(model_length), remote
        self.vocab_size = int(module.config.vocab_size)  # the head's width (MASK column included)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def arch(self) -> ArchInfo:
        cfg = self.module.config
        embed = self.module.backbone.vocab_embed.embedding
        n = sum(p.numel() for p in self.module.parameters() if p is not embed)
        return ArchInfo(n_params=n, n_layers=int(cfg.n_blocks), d_model=int(cfg.hidden_dim))

    def subs(self, logits: torch.Tensor) -> torch.Tensor:
        """BD3-LM's subs parameterisation of the mask column: logit + (−1e6), in place."""
        logits[..., self.mask_id] += NEG
        return logits

    # -- native and remote forwards ----------------------------------------------------------------
    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.remote:
            return self.subs(self.module(x, attention_mask).logits)
        return self.subs(self._remote(x, attention_mask, dual=False))

    def logits_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.remote:
            return self.subs(self.module.forward_denoise(xt, x0, attention_mask).logits)
        return self.subs(self._remote(torch.cat([xt, x0], 1), attention_mask, dual=True))

    def logits_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] of a forward with attention pattern `allowed` [B, 1, S, S] (True: attend)
        and position ids [B, S] (block_attention.py, "An explicit pattern")."""
        if self.remote:
            raise HarnessError("model bd3lm impl remote: the reference code takes no attention pattern or position "
                               "ids (it builds its own mask); use impl: native")
        return self.subs(self.module.forward_pattern(x, allowed, position_ids).logits)

    # -- the exact cache of finished blocks (native) ------------------------------------------------
    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, keep):
        """A plain pass -> (logits, the KV cache of the prefix columns `keep`: finished blocks)."""
        self._native_only("a KV cache")
        if isinstance(keep, slice):
            keep = torch.arange(x.shape[1], device=x.device)[keep]
        logits, cache = self.module.forward_with_cache(x, attention_mask, keep=keep.to(x.device))
        return self.subs(logits), cache

    def logits_cached(self, x: torch.Tensor, cache, *, positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, store: bool = False):
        """Logits of the columns `positions` right after the cache; with `store`, also the extended cache."""
        self._native_only("a KV cache")
        out = self.module.forward_cached(x, cache, positions.to(x.device), attention_mask, store=store)
        return (self.subs(out[0]), out[1]) if store else self.subs(out)

    def _native_only(self, what: str) -> None:
        if self.remote:
            raise HarnessError(f"model bd3lm impl remote: {what} needs impl: native (the reference's own cache "
                               "is allocated on CUDA in bf16 by reset_kv_cache)")

    # -- the reference module (impl remote) --------------------------------------------------------
    def _remote(self, x: torch.Tensor, attention_mask: torch.Tensor | None, dual: bool) -> torch.Tensor:
        """The reference on each group of rows with the same number of left pads, pads cut off; x is
        [B, T] or, `dual`, [B, 2T] (both halves cut)."""
        B, W = x.shape
        T = W // 2 if dual else W
        run = self._remote_dual if dual else self._remote_plain
        n_pad = (torch.zeros(B, dtype=torch.long) if attention_mask is None
                 else (~attention_mask.bool()).sum(1).cpu())
        out = None
        for n in n_pad.unique().tolist():
            rows = (n_pad == n).nonzero().squeeze(1).to(x.device)
            cols = torch.cat([torch.arange(n, T), torch.arange(T + n, W)]) if dual else torch.arange(n, T)
            logits = run(x[rows][:, cols.to(x.device)])  # [g, T - n, V]
            if out is None:
                out = logits.new_zeros(B, T, logits.shape[-1])
            out[rows, n:] = logits
        return out

    def _call(self, ids: torch.Tensor, sample_mode: bool) -> torch.Tensor:
        sigma = torch.zeros(ids.shape[0], device=ids.device)
        return self.module(input_ids=ids, timesteps=sigma, sample_mode=sample_mode, return_dict=True).logits

    def _remote_plain(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.model_length:
            raise HarnessError(f"BD3-LM: a sequence of {x.shape[1]} tokens exceeds model_length {self.model_length}")
        return self._call(x, sample_mode=True).float()

    def _remote_dual(self, x: torch.Tensor) -> torch.Tensor:
        T, n = x.shape[1] // 2, self.model_length
        if T > n or (T < n and T % self.block_size):
            raise HarnessError(f"model bd3lm impl remote: the reference's scoring pass takes exactly model_length {n} "
                               f"tokens per stream; a row of {T} real tokens can be right-padded exactly only when "
                               f"it is a multiple of block_size {self.block_size} (use impl: native)")
        pad = x.new_full((x.shape[0], n - T), self.mask_id)  # later blocks: never seen by the real ones
        ids = torch.cat([x[:, :T], pad, x[:, T:], pad], 1)
        return self._call(ids, sample_mode=False)[:, :T].float()


@MODELS.register("bd3lm")
@dataclass(frozen=True, kw_only=True)
class BD3LM(NativeOrRemote):
    """BD3-LM block diffusion (impl native: checkpoint or preset tiny, bd3lm-owt; impl remote: its own code)."""

    presets: ClassVar[dict] = PRESETS
    noise: ClassVar[str] = "masked"
    provides: ClassVar[tuple[str, ...]] = ("logits_pattern",)  # denoiser capabilities components may require
    preset_base: ClassVar[dict] = dict(model_type="bd3lm", adaln=True, cross_attn=True, causal=False,
                                       time_conditioning=False)
    known_mask: ClassVar[int] = MASK_ID
    applies: ClassVar[str] = ("noise: masked; block diffusion (block_size from the config); estimators: bd3_elbo and "
                              "the masked ones, block-wise; samplers: the masked ones")

    def __post_init__(self):
        super().__post_init__()
        if self.impl == "remote" and self.preset is not None:
            raise HarnessError(f"model bd3lm: preset {self.preset!r} builds the native module only; impl remote "
                               "needs a checkpoint path")
        if self.compile:
            raise HarnessError("model bd3lm: compile: true is not implemented (its float32 forward runs eagerly); "
                               "use compile: false")

    def native_classes(self):
        from harness.models.native import bd3lm as native

        return native.BD3LM, native.BD3LMConfig

    def config_class(self):  # impl remote loads checkpoints only (__post_init__)
        raise HarnessError("model bd3lm: impl remote has no preset")

    def model_class(self):
        raise HarnessError("model bd3lm: impl remote has no preset")

    def auto_class(self):
        import transformers

        return transformers.AutoModelForMaskedLM

    def planned_block_size(self) -> int | None:
        return config_block_size(self)

    # -- building ------------------------------------------------------------------------------------
    def remote_head(self, module):
        """BD3-LM's head is the DiT backbone's final adaLN layer (modeling_bd3lm.py DITBackbone.output_layer),
        which transformers does not know as output embeddings."""
        return getattr(getattr(module, "backbone", None), "output_layer", None)

    def build_module(self):
        if self.impl == "native" and self.preset is not None:
            return self._build_preset()
        return super().build_module()

    def _build_preset(self):
        from harness.models.native.bd3lm import BD3LM as Module
        from harness.models.native.bd3lm import BD3LMConfig
        from harness.models.native.common import meta_build

        dev = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, dev)
        cfg = BD3LMConfig.from_json(self.native_config_dict(), f"model preset {self.preset!r}")
        module = meta_build(Module, cfg, self.attn).to_empty(device=dev).to(dtype)
        std = cfg.initializer_range
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(self.seed)  # a seeded init that leaves the global RNG as it was
            for name, p in sorted(module.named_parameters()):
                if "norm" in name:
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                elif "vocab_embed" in name:
                    p.normal_(0.0, 1.0)
                else:
                    p.normal_(0.0, std if "adaLN" not in name else 0.02)
            for block in module.backbone.blocks:  # gates of 1: each block contributes (zero-init gates would not)
                d = cfg.hidden_dim
                block.adaLN_modulation.bias[2 * d:3 * d] = 1.0
                block.adaLN_modulation.bias[5 * d:6 * d] = 1.0
            head_dim = cfg.hidden_dim // cfg.n_heads
            inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
            module.backbone.rotary_emb.inv_freq.copy_(inv)
            if cfg.var_min:
                module.sampling_eps_min.fill_(cfg.sampling_eps_min)
                module.sampling_eps_max.fill_(cfg.sampling_eps_max)
        vocab = cfg.vocab_size
        tok = self._load_tokenizer() if self.tokenizer else char_tokenizer(eos_id=vocab - 2, pad_id=vocab - 2,
                                                                            mask_id=vocab - 1)
        return module.eval(), tok

    # -- tokenizer -------------------------------------------------------------------------------------
    def _bd3_tokenizer(self, where: Path | None):
        import transformers

        if self.tokenizer is not None:
            name = self.tokenizer
        elif where is not None and any((where / f).is_file() for f in TOKENIZER_FILES):
            name = str(where)
        else:
            name = "gpt2"  # what BD3-LM tokenizes OpenWebText with; its checkpoints ship no tokenizer
        tok = _pretrained(transformers.AutoTokenizer, _Where(path=name, revision=None, trust_remote_code=False))
        if tok.pad_token is None:  # bd3lms dataloader.get_tokenizer: GPT-2 gets a [PAD] token
            tok.add_special_tokens({"pad_token": "[PAD]"})
        return tok

    def _native_tokenizer(self, where: Path):
        return self._bd3_tokenizer(where)

    def _load_tokenizer(self):
        if self.path is None:
            return self._bd3_tokenizer(None)
        p = Path(self.path).expanduser()
        return self._bd3_tokenizer(p if p.is_dir() else self.checkpoint_dir())

    # -- the denoiser ----------------------------------------------------------------------------------
    def load(self) -> BD3LMDenoiser:
        module, tok = self.build_module()
        cfg = module.config
        vocab = int(cfg.vocab_size)
        if self.preset is not None and not self.tokenizer:
            mask, eos = vocab - 1, vocab - 2  # the character tokenizer's ids
        else:
            # diffusion.py: a tokenizer without a mask token (GPT-2) gets MASK = tokenizer.vocab_size
            mask = tok.vocab_size if getattr(tok, "mask_token", None) is None else tok.mask_token_id
            eos = tok.eos_token_id
            where = self.path or self.preset
            if eos is None:
                raise HarnessError(f"model bd3lm {where!r}: the tokenizer has no eos token (GPT-2's <|endoftext|>)")
            if not 0 <= mask < vocab:
                raise HarnessError(f"model bd3lm {where!r}: the mask id {mask} (the tokenizer's vocab_size, as "
                                   f"BD3-LM sets it) is outside the model's {vocab} logits: the tokenizer does not "
                                   "belong to this checkpoint")
        den = BD3LMDenoiser(module, ChatTokenizer(tok, eos), mask_id=int(mask), eos_id=int(eos), pad_id=int(mask),
                            block_size=int(cfg.block_size), model_length=int(cfg.model_length),
                            remote=self.impl == "remote")
        return declare(den, tok, path=self.path, add_special_tokens=self.add_special_tokens, **FAMILY)

