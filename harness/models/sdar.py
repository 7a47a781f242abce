"""`sdar`: SDAR (JetAstra/SDAR, arXiv 2510.06303) and TraDo (Gen-Verse/dLLM-RL, TraceRL, arXiv
2509.06949), block-diffusion LMs on Qwen3 layers: attention is bidirectional inside a block of
`block_size` tokens and causal across blocks (harness/models/block_attention.py), so finished
blocks sit in an exact KV cache while the current block is denoised.

`impl: native` (the default) runs the harness's own torch implementation
(harness/models/native/sdar.py): `path` reads an official checkpoint directory or hub id
(JetLM/SDAR-1.7B-Chat, -4B-Chat, -8B-Chat; Gen-Verse/TraDo-4B-Instruct, -8B-Instruct, ...:
config.json + safetensors, sharded or not) by parameter name, with no remote code. Its logits equal
the public `modeling_sdar.py`'s (both dLLM-RL's and SDAR's copy) given the same block mask, in
float32 and bf16 (tests/models/test_sdar_parity.py). It has the exact KV cache of finished blocks
(`cache: prefix` of the samplers), the [x_t ; x_0] scoring pass (`logits_denoise`), an explicit
attention pattern with position ids (`logits_pattern`: TraceRL's training rows), SDPA or eager
attention, bf16; left-padded rows give the numbers they give alone. `preset` builds it randomly
initialised: "tiny" for CPU tests, "sdar-1.7b" / "sdar-4b" (the released dimensions) for GPU
throughput suites; `config` overrides take config.json keys.

`impl: remote` loads the checkpoint's own modeling file through transformers' trust_remote_code
and passes the block mask and position ids explicitly (the public file applies no mask of its
own: without one it would attend bidirectionally over everything). The public file is written for
transformers 4.52 and needs flash-attn at import; where it does not load the error says so and
points to `impl: native`. The KV cache of finished blocks (`cache: prefix`) is then the file's own
(`store_kv` passes into a transformers DynamicCache, as `block_diffusion_generate` drives it).

Ids from the checkpoint: `block_size` and `mask_token_id` from config.json (<|MASK|> 151669),
EOS `<|endoftext|>` 151643 from the tokenizer, stop ids from generation_config.json
(`eos_token_id` [151645 <|im_end|>, 151643]) plus <|im_end|>. No BOS is prepended (the tokenizer
has none); Chat/Instruct checkpoints apply their (Qwen3) chat template. `block_size` (a field)
decodes with another attention block than the config's, as `block_diffusion_generate`'s
`block_length` argument does. Decoding follows SDAR's `block_diffusion_generate` through the
shared samplers (harness/samplers/_base.py, "Block models"): the family declares SDAR's sampling
(`torch.multinomial` after temperature / top-k / top-p), torch.topk's order among equal
confidences and the linear per-block schedule.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from harness.models import block_attention as ba
from harness.models._family import declare
from harness.models._hf_common import ChatTokenizer, DiffusionDenoiser
from harness.models.native.adapter import NativeOrRemote, config_block_size
from harness.registry import MODELS
from harness.types import HarnessError

MASK_ID = 151669  # <|MASK|>

# SDAR's decoding/prompting defaults (harness/models/_family.py): block_diffusion_generate's per-block linear
# schedule, torch.multinomial sampling and torch.topk's choice among equal confidences; <|im_end|> stops, and a
# row stops decoding after the block that holds a stop id (stopping_criteria_idx, as dLLM-RL's evaluation); no BOS.
FAMILY = dict(decode_defaults={"schedule": "linear", "sampling": "multinomial", "tie_break": "topk",
                               "stop_after_block": True},
              stop_tokens=("<|im_end|>",), add_bos=False)

_QWEN3 = dict(vocab_size=151936, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6, block_size=4,
              mask_token_id=MASK_ID, eos_token_id=151643, pad_token_id=151643, bos_token_id=151643,
              max_position_embeddings=32768)
PRESETS = {
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, block_size=4, max_position_embeddings=512, mask_token_id=127,
                 eos_token_id=126, pad_token_id=126, bos_token_id=126),
    "sdar-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                      num_key_value_heads=8, tie_word_embeddings=True),
    "sdar-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8),
}


class BlockDenoiser(DiffusionDenoiser):
    """A block-diffusion LM as a Denoiser (block_attention.py's protocol): `logits` (block-causal),
    `logits_denoise` ([x_t ; x_0]), `logits_pattern` (an explicit pattern and position ids), and the
    exact cache of finished blocks (`logits_build_cache`, `logits_cached` with `store`). No autocast:
    the module runs in its own dtype, as SDAR's code."""

    def __init__(self, module, tokenizer, *, block_size: int, **kw):
        super().__init__(module, tokenizer, shift_logits=False, mask_style="2d", **kw)
        self.block_size = int(block_size)
        module.block_size = self.block_size

    def _autocast(self):
        return contextlib.nullcontext()

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(x, attention_mask).logits

    def logits_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.module.forward_denoise(xt, x0, attention_mask)

    def logits_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] under an explicit pattern [B, 1, S, S] (True: attend) and position ids [B, S]
        (block_attention.py, "An explicit pattern")."""
        return self.module.forward_pattern(x, allowed, position_ids).logits

    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, keep):
        if isinstance(keep, slice):
            keep = torch.arange(x.shape[1], device=x.device)[keep]
        return self.module.forward_with_cache(x, attention_mask, keep=keep.to(x.device))

    def logits_cached(self, x: torch.Tensor, cache, *, positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, store: bool = False):
        return self.module.forward_cached(x, cache, positions.to(x.device), attention_mask, store=store)


class RemoteCache:
    """A transformers DynamicCache of the canvas columns [0, length) as the samplers see it
    (`length`, `take`); SDAR's own file fills it in `store_kv=True` passes."""

    def __init__(self, pkv, length: int):
        self.pkv, self.length = pkv, int(length)

    def take(self, rows: torch.Tensor) -> "RemoteCache":
        from transformers.cache_utils import DynamicCache

        new = DynamicCache()
        for i, layer in enumerate(self.pkv.layers):
            new.update(layer.keys[rows], layer.values[rows], i)
        return RemoteCache(new, self.length)


class RemoteBlockDenoiser(DiffusionDenoiser):
    """The checkpoint's own modeling file, given the block mask (bool [B, 1, Tq, Tk]) and position ids
    counting real tokens at every call. Its KV cache is the file's own (`store_kv`, a
    transformers DynamicCache), driven as `block_diffusion_generate` drives it."""

    def __init__(self, module, tokenizer, *, block_size: int, **kw):
        super().__init__(module, tokenizer, shift_logits=False, mask_style="4d", **kw)
        self.block_size = int(block_size)

    def _autocast(self):
        return contextlib.nullcontext()

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = x.shape
        mask = ba.decode_mask(attention_mask, B, T, self.block_size, x.device)
        pos = ba.positions(attention_mask, B, T, x.device)
        return self.forward(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False).logits

    def logits_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = xt.shape
        mask = ba.dual_stream_mask(attention_mask, B, T, self.block_size, xt.device)
        pos = ba.positions(attention_mask, B, T, xt.device)
        out = self.forward(input_ids=torch.cat([xt, x0], 1), attention_mask=mask, position_ids=torch.cat([pos, pos], 1),
                           use_cache=False).logits
        return out[:, :T]

    def logits_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The checkpoint's own file under an explicit pattern [B, 1, S, S] bool and position ids [B, S],
        as rl_trado.py's forward_process calls it (a query that sees nothing attends to itself)."""
        eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        allowed = allowed.bool() | (~allowed.bool().any(-1, keepdim=True) & eye)
        return self.forward(input_ids=x, attention_mask=allowed, position_ids=position_ids, use_cache=False).logits

    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, keep):
        from transformers.cache_utils import DynamicCache

        B, T = x.shape
        keep = torch.arange(T, device=x.device)[keep] if isinstance(keep, slice) else keep
        if not torch.equal(keep.cpu(), torch.arange(T)):
            raise HarnessError("sdar (remote): a KV cache is built from a pass over exactly the columns it keeps")
        pkv = DynamicCache()
        out = self.forward(input_ids=x, attention_mask=ba.decode_mask(attention_mask, B, T, self.block_size, x.device),
                           position_ids=ba.positions(attention_mask, B, T, x.device), past_key_values=pkv,
                           use_cache=True, store_kv=True).logits
        return out, RemoteCache(pkv, T)

    def logits_cached(self, x: torch.Tensor, cache: RemoteCache, *, positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, store: bool = False):
        B, Tq = x.shape
        lo, hi = cache.length, cache.length + Tq
        if positions.numel() != Tq or int(positions[0]) != lo:
            raise HarnessError(f"sdar (remote): a cached pass runs the columns right after the cache ({lo}...)")
        am = None if attention_mask is None else attention_mask[:, :hi]
        mask = ba.decode_mask(am, B, hi, self.block_size, x.device)[:, :, lo:hi]  # [B, 1, Tq, hi]
        pos = ba.positions(am, B, hi, x.device)[:, lo:hi]
        pkv = cache.take(torch.arange(B, device=x.device)).pkv if store else cache.pkv  # store_kv extends in place
        out = self.forward(input_ids=x, attention_mask=mask, position_ids=pos, past_key_values=pkv,
                           use_cache=True, store_kv=store).logits
        return (out, RemoteCache(pkv, hi)) if store else out


@MODELS.register("sdar")
@dataclass(frozen=True, kw_only=True)
class SDAR(NativeOrRemote):
    """SDAR-*-Chat / TraDo block-diffusion LMs (impl native: checkpoint or preset tiny, sdar-1.7b, sdar-4b; remote)."""

    block_size: int | None = None  # None: config.json's block_size; else decode with this attention block

    presets: ClassVar[dict] = PRESETS
    noise: ClassVar[str] = "masked"
    provides: ClassVar[tuple[str, ...]] = ("logits_pattern",)  # denoiser capabilities components may require
    preset_base: ClassVar[dict] = dict(model_type="sdar")
    known_mask: ClassVar[int] = MASK_ID
    applies: ClassVar[str] = ("noise: masked; a block-diffusion model (block_size); estimators: the masked ones, "
                              "scored block-wise; samplers: the masked block samplers, decoding as SDAR's "
                              "block_diffusion_generate")

    def __post_init__(self):
        super().__post_init__()
        b = self.block_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise HarnessError(f"model sdar: block_size = {b!r}, expected null or an integer >= 1")
        if self.impl == "remote" and self.preset is not None:
            raise HarnessError("model sdar: impl remote loads a checkpoint's own code and needs path (presets build "
                               "the native model)")

    def native_classes(self):
        from harness.models.native import sdar as native

        return native.SDAR, native.SDARConfig

    def config_class(self):
        raise HarnessError("model sdar: no stand-in for presets under impl remote")

    def model_class(self):
        raise HarnessError("model sdar: no stand-in for presets under impl remote")

    def auto_class(self):
        import transformers

        return transformers.AutoModelForCausalLM

    def _stop_ids(self) -> tuple[int, ...]:
        from harness.models.native.checkpoint import generation_eos

        if self.path is None:
            return ()
        p = Path(self.path).expanduser()
        return generation_eos(p if p.is_dir() else self.checkpoint_dir())

    def load(self) -> DiffusionDenoiser:
        module, tok = self.build_module()
        mask, eos, pad = self.special_ids(module, tok, MASK_ID)
        block = self.block_size or getattr(module.config, "block_size", None)
        if not block:
            raise HarnessError(f"model {self.path or self.preset!r}: config.json has no 'block_size' (a "
                               "block-diffusion checkpoint declares it); set the model's block_size")
        cls = RemoteBlockDenoiser if self.impl == "remote" else BlockDenoiser
        den = cls(module, ChatTokenizer(tok, eos), block_size=block, mask_id=mask, eos_id=eos, pad_id=pad,
                  compile=self.compile)
        return declare(den, tok, path=self.path, chat=self.chat, stop_ids=self._stop_ids(),
                       add_special_tokens=self.add_special_tokens, **FAMILY)

    def planned_block_size(self) -> int | None:
        return config_block_size(self)

    def provenance(self) -> dict:
        return {**super().provenance(), "block_size": self.block_size}
