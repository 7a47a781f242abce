"""`diffusion_gemma`: transformers' DiffusionGemma, a uniform-noise block diffusion LM.

The model has an encoder over the clean context (prompt and earlier canvases) whose KV cache a
denoiser reads while refining a canvas of `canvas_length` tokens. Its noise is uniform, not
masking: a noisy canvas holds random vocabulary tokens, there is no mask token (`mask_id` is
None), and the logits of every canvas position predict its clean token (no shift).

How it meets the harness's interfaces:
- `logits(x, attention_mask)`: the last `width` columns of x are the canvas and the columns
  before them the context (the encoder's input); `width` is the model's canvas_length unless a
  caller sets it with `with denoiser.canvas(width): ...`. Context columns get zero logits (the
  model makes no prediction there). One call is one encoder pass plus one denoiser pass, with no
  self-conditioning input (as at a canvas's first step).
- The context cache, used the way `DiffusionGemmaForBlockDiffusion.generate` uses it
  (transformers models/diffusion_gemma/generation_diffusion_gemma.py: `_prepare_encoder_inputs`,
  the encoder call, `_prepare_denoiser_inputs`, `_denoising_step`, `_prepare_kwargs_for_next_canvas`):
  `logits_build_cache(x, mask, keep=slice(0, P))` encodes the context x[:, :P] into a KV cache
  and denoises the canvas x[:, P:] (a FULL pass: every column is processed);
  `logits_cached(x, cache, context=C, self_conditioning=...)` first appends x[:, :C] (clean tokens,
  the previous canvas) to the cache, then denoises the canvas x[:, C:] reading the cache (a CACHED
  pass). Positions, 2-D padding masks and the 4-D masks are built with the model's own functions
  as generate builds them, so the logits are generate's bit for bit. The meter counts both.
- Self-conditioning: `self_conditioning` logits [B, W, V] of the previous step go to the decoder's
  self-conditioning block as generate feeds them (cast to the embedding dtype). DiffusionGemma's
  config has no switch for it: every checkpoint has the block and generate always uses it, so
  `self_conditioning` is True for this model and the sampler and `uniform_x0` follow it by default.
- Estimators: the masked ones (mc_elbo, one_step, ...) do NOT apply (they insert mask tokens the
  model never saw); `uniform_x0` does (harness/estimators/uniform_x0.py). `list models` says so.
- Sampler: `uniform_entropy_bound` (harness/samplers/uniform_entropy_bound.py) is the model's own
  entropy-bound generate loop with the harness's explicit generators and meter. Its knobs default
  to what generate reads: the checkpoint's generation_config.json (`generation_defaults`: steps,
  entropy bound, t_min/t_max, confidence, stability), then generate's global defaults; generation
  stops on the generation config's EOS ids (one or a list: `stop_ids`), else the tokenizer's EOS.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness.models._family import resolve_chat_option
from harness.models._hf_common import ChatTokenizer, DiffusionModel, char_tokenizer
from harness.models.hf import HFDenoiser
from harness.registry import MODELS
from harness.types import HarnessError

PRESETS = {
    "tiny": dict(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=32,
                         max_position_embeddings=256, sliding_window=64, num_experts=2, top_k_experts=1,
                         moe_intermediate_size=64, layer_types=["sliding_attention", "full_attention"],
                         pad_token_id=125, eos_token_id=126, bos_token_id=124),
        vision_config=dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=16),
        canvas_length=8),
}


@dataclass
class ContextCache:
    """The encoder's KV cache of the context plus what generate keeps beside it.

    kv: the transformers DynamicCache (rows = the batch rows it was built for); mask: [B, length]
    bool, False at left padding of the prompt; length: context positions encoded so far (the next
    canvas's positions start there, as generate's `cur_len`)."""

    kv: Any
    mask: torch.Tensor
    length: int

    def take(self, rows: torch.Tensor) -> "ContextCache":
        """The cache of some batch rows (a copy: the original keeps all its rows)."""
        kv = copy.copy(self.kv)
        kv.layers = [copy.copy(layer) for layer in self.kv.layers]
        kv.batch_select_indices(rows)  # re-assigns each copied layer's keys/values
        return ContextCache(kv=kv, mask=self.mask[rows], length=self.length)


class DiffusionGemmaDenoiser(HFDenoiser):
    """DiffusionGemma as a (uniform-noise) Denoiser: context columns -> encoder, canvas -> denoiser."""

    noise: ClassVar[str] = "uniform"

    def __init__(self, module, tokenizer: ChatTokenizer, *, eos_id: int, pad_id: int):
        super().__init__(module, tokenizer, mask_id=None, eos_id=eos_id, pad_id=pad_id, position_ids=False)
        self.canvas_length = int(module.config.canvas_length)
        self.width: int | None = None  # canvas width of the next calls; None: canvas_length
        # generate feeds the previous step's logits to this block (modeling_diffusion_gemma.py,
        # DiffusionGemmaDecoderModel.forward); a module without it could not take them
        self.self_conditioning = getattr(module.model.decoder, "self_conditioning", None) is not None

    @property
    def arch(self):
        # The encoder and the denoiser share their layers: each processed token costs the same.
        from harness.types import ArchInfo

        embed = {id(p) for m in self.module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        vision = {id(p) for p in self.module.model.encoder.vision_tower.parameters()} \
            if getattr(self.module.model.encoder, "vision_tower", None) is not None else set()
        n = sum(p.numel() for p in self.module.parameters() if id(p) not in embed | vision)
        cfg = self.module.config.text_config
        return ArchInfo(n_params=n, n_layers=int(cfg.num_hidden_layers), d_model=int(cfg.hidden_size))

    @contextlib.contextmanager
    def canvas(self, width: int):
        """Treat the last `width` columns of x as the canvas inside the block."""
        old, self.width = self.width, int(width)
        try:
            yield self
        finally:
            self.width = old

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = x.shape
        W = self.width or self.canvas_length
        P = T - W
        if P < 1:
            raise HarnessError(f"diffusion_gemma: a call needs at least one context column before the canvas of "
                               f"{W} (got {T} columns); its encoder reads the prompt")
        kw = {}
        if attention_mask is not None:
            am = attention_mask.long()
            kw = {"attention_mask": am[:, :P], "decoder_attention_mask": am}
        out = self.module(input_ids=x[:, :P], decoder_input_ids=x[:, P:], **kw).logits  # [B, W, V]
        return torch.cat([out.new_zeros(B, P, out.shape[-1]), out], 1)  # [B, T, V]

    # -- the context cache, as generate uses it ----------------------------------------------------
    def _encode(self, ids: torch.Tensor, cache: ContextCache) -> None:
        """Append the clean columns ids [B, C] to the cache (generate's steps 1.a and 1.f)."""
        B, C = ids.shape
        enc = self.module.model.encoder
        pos = torch.arange(cache.length, cache.length + C, dtype=torch.int32, device=ids.device)[None]  # [1, C]
        # a new cache already holds the prompt's padding mask; later columns (canvases) are all real
        new = C - (cache.mask.shape[1] - cache.length)
        mask = torch.cat([cache.mask, cache.mask.new_ones(B, new)], 1)  # [B, length + C]
        dummy = torch.empty((B, C, 0), dtype=self.module.dtype, device=ids.device)
        mapping = enc.create_masks_for_generate(config=self.module.config, inputs_embeds=dummy, attention_mask=mask,
                                                cache=cache.kv, position_ids=pos)
        enc(input_ids=ids.clone(memory_format=torch.contiguous_format), attention_mask=mapping, cache=cache.kv,
            position_ids=pos)
        cache.mask, cache.length = mask, cache.length + C

    def _denoise(self, canvas: torch.Tensor, cache: ContextCache, sc: torch.Tensor | None) -> torch.Tensor:
        """canvas [B, W] (+ self-conditioning logits [B, W, V]) -> logits [B, W, V] (generate's 1.c.i)."""
        W = canvas.shape[1]
        dec_mask = torch.nn.functional.pad(cache.mask, (0, W), value=True)  # [B, length + W]
        pos = torch.arange(cache.length, cache.length + W, dtype=torch.int32, device=canvas.device)[None]
        mapping = self.module.model.decoder.create_diffusion_decoder_attention_mask(
            config=self.module.config, inputs_embeds=canvas.unsqueeze(-1), cache=cache.kv,
            decoder_attention_mask=dec_mask)
        if sc is not None:
            if not self.self_conditioning:
                raise HarnessError("diffusion_gemma: this module has no self-conditioning block")
            sc = sc.to(self.module.model.decoder.embed_tokens.weight.dtype)
        return self.module(decoder_input_ids=canvas, self_conditioning_logits=sc, decoder_attention_mask=mapping,
                           cache=cache.kv, decoder_position_ids=pos).logits

    def new_cache(self, mask: torch.Tensor) -> ContextCache:
        """An empty context cache for rows whose prompt columns carry `mask` [B, P] (not yet encoded)."""
        from transformers import DynamicCache

        kv = DynamicCache(config=self.module.config.get_text_config(decoder=True))  # generate's default cache
        return ContextCache(kv=kv, mask=mask.bool(), length=0)

    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, keep):
        """x [B, P + W]: encode the context x[:, :P] (keep must be those columns) into a new cache,
        then denoise the canvas x[:, P:] with no self-conditioning -> (logits [B, T, V], cache)."""
        B, T = x.shape
        P = T - (self.width or self.canvas_length)
        cols = torch.arange(T)[keep] if isinstance(keep, slice) else torch.as_tensor(keep).cpu()
        if P < 1 or not torch.equal(cols, torch.arange(P)):
            raise HarnessError(f"diffusion_gemma: the cache holds the context columns 0..{P - 1} exactly "
                               f"(before a canvas of {T - P}); got keep={keep!r} for {T} columns")
        mask = torch.ones(B, P, dtype=torch.bool, device=x.device) if attention_mask is None \
            else attention_mask[:, :P].bool()
        cache = self.new_cache(mask)
        self._encode(x[:, :P], cache)
        out = self._denoise(x[:, P:], cache, None)  # [B, W, V]
        return torch.cat([out.new_zeros(B, P, out.shape[-1]), out], 1), cache

    def logits_cached(self, x: torch.Tensor, cache: ContextCache, *, context: int = 0,
                      self_conditioning: torch.Tensor | None = None, **_) -> torch.Tensor:
        """x [B, C + W]: append the clean columns x[:, :C] to `cache` (in place), then denoise the
        canvas x[:, C:] reading it -> logits [B, C + W, V] (zero at the C context columns)."""
        B, T = x.shape
        if cache.mask.shape[0] != B:
            raise HarnessError(f"diffusion_gemma: a cache of {cache.mask.shape[0]} rows got {B} rows (use cache.take)")
        if context:
            self._encode(x[:, :context], cache)
        out = self._denoise(x[:, context:], cache, self_conditioning)  # [B, W, V]
        return torch.cat([out.new_zeros(B, context, out.shape[-1]), out], 1) if context else out


# the checkpoint's generation_config.json keys -> uniform_entropy_bound's knobs
GENERATION_KEYS = {"max_denoising_steps": "max_steps", "t_min": "t_min", "t_max": "t_max",
                   "confidence_threshold": "confidence", "stability_threshold": "stability"}


def generation_defaults(module) -> tuple[dict, tuple[int, ...]]:
    """(the sampler knobs the checkpoint's generation_config.json sets, its EOS ids): what generate
    reads before its global defaults. A preset has none (generate's defaults then apply)."""
    cfg = getattr(module, "generation_config", None)
    if cfg is None:
        return {}, ()
    out = {knob: getattr(cfg, key) for key, knob in GENERATION_KEYS.items() if getattr(cfg, key, None) is not None}
    sampler = getattr(cfg, "sampler_config", None)
    bound = sampler.get("entropy_bound") if isinstance(sampler, dict) else getattr(sampler, "entropy_bound", None)
    if bound is not None:
        out["bound"] = bound
    eos = getattr(cfg, "eos_token_id", None)
    eos = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return out, eos


@MODELS.register("diffusion_gemma")
@dataclass(frozen=True, kw_only=True)
class DiffusionGemma(DiffusionModel):
    """DiffusionGemma uniform-noise block diffusion (transformers-native; a path, or the random preset tiny)."""

    presets: ClassVar[dict] = PRESETS
    trust_remote_code: ClassVar[bool] = False
    noise: ClassVar[str] = "uniform"
    provides: ClassVar[tuple[str, ...]] = ("full_attention",)  # denoiser capabilities components may require
    applies: ClassVar[str] = ("noise: uniform; estimators: uniform_x0 only (no mask token: the masked "
                              "estimators do not apply); samplers: uniform_entropy_bound only")

    def config_class(self):
        from transformers import DiffusionGemmaConfig

        return DiffusionGemmaConfig

    def model_class(self):
        from transformers import DiffusionGemmaForBlockDiffusion

        return DiffusionGemmaForBlockDiffusion

    def auto_class(self):
        from transformers import DiffusionGemmaForBlockDiffusion

        return DiffusionGemmaForBlockDiffusion

    def preset_tokenizer(self, cfg):
        t = cfg.text_config
        return char_tokenizer(eos_id=t.eos_token_id, pad_id=t.pad_token_id, mask_id=None)

    def load(self) -> DiffusionGemmaDenoiser:
        module, tok = self.build_module()
        t = module.config.text_config
        eos = tok.eos_token_id if tok.eos_token_id is not None else t.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        den = DiffusionGemmaDenoiser(module, ChatTokenizer(tok, eos), eos_id=eos, pad_id=pad)
        den.generation_defaults, gen_eos = generation_defaults(module)
        den.stop_ids = gen_eos or (eos,)  # generate stops on the generation config's EOS ids (one or a list)
        on, why = resolve_chat_option(self.chat, self.path, tok)  # the model option chat (harness/models/_family.py)
        den.prompting = {"chat": on, "chat_source": why, "add_bos": False, "bos_id": None,
                         "add_special_tokens": self.add_special_tokens}
        return den
