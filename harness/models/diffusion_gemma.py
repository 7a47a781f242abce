"""`diffusion_gemma`: transformers' DiffusionGemma, a uniform-noise block diffusion LM.

The model has an encoder over the clean context (prompt and earlier canvases) whose KV cache a
denoiser reads while refining a canvas of `canvas_length` tokens. Its noise is uniform, not
masking: a noisy canvas holds random vocabulary tokens, there is no mask token (`mask_id` is
None), and the logits of every canvas position predict its clean token (no shift).

How it meets the harness's interfaces:
- `logits(x, attention_mask)`: the last `width` columns of x are the canvas and the columns
  before them the context (the encoder's input); `width` is the model's canvas_length unless a
  caller sets it with `with denoiser.canvas(width): ...`. Context columns get zero logits (the
  model makes no prediction there). One call is one encoder pass plus one denoiser pass.
- Estimators: the masked ones (mc_elbo, one_step, ...) do NOT apply (they insert mask tokens the
  model never saw); `uniform_x0` does (harness/estimators/uniform_x0.py). `list models` says so.
- Sampler: `uniform_entropy_bound` (harness/samplers/uniform_entropy_bound.py) re-implements the
  model's own entropy-bound generate loop with the harness's explicit generators and meter
  (transformers' generate draws from the global RNG and its passes would bypass the meter).
The decoder's self-conditioning input is not used (zero, as at a canvas's first step).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch

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


class DiffusionGemmaDenoiser(HFDenoiser):
    """DiffusionGemma as a (uniform-noise) Denoiser: context columns -> encoder, canvas -> denoiser."""

    noise: ClassVar[str] = "uniform"

    def __init__(self, module, tokenizer: ChatTokenizer, *, eos_id: int, pad_id: int):
        super().__init__(module, tokenizer, mask_id=None, eos_id=eos_id, pad_id=pad_id, position_ids=False)
        self.canvas_length = int(module.config.canvas_length)
        self.width: int | None = None  # canvas width of the next calls; None: canvas_length

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


@MODELS.register("diffusion_gemma")
@dataclass(frozen=True, kw_only=True)
class DiffusionGemma(DiffusionModel):
    """DiffusionGemma uniform-noise block diffusion (transformers-native; a path, or the random preset tiny)."""

    presets: ClassVar[dict] = PRESETS
    trust_remote_code: ClassVar[bool] = False
    noise: ClassVar[str] = "uniform"
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
        return DiffusionGemmaDenoiser(module, ChatTokenizer(tok, eos), eos_id=eos, pad_id=pad)
