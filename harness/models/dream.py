"""`dream`: Dream (Ye et al. 2025, arXiv 2508.15487), a masked diffusion LM initialised from Qwen2.5.

`path` loads a saved Dream (Dream-org/Dream-v0-Instruct-7B or a local copy) through transformers
with trust_remote_code; `preset` builds a randomly initialised model of the same architecture from
the harness's stand-in (harness/models/standins/dream_standin.py): "tiny" for CPU tests, "dream-7b"
for GPU suites. Mask id 151666. Dream keeps its AR parent's alignment: the logits at k-1 predict
the token at k, so the adapter sets `shift_logits=True` and the estimators read position k at k-1.
Padding goes in as Dream's own generate passes it: a boolean 4-D mask plus position ids.
The stand-in also has Fast-dLLM prefix/dual KV caches (`cache:` of the block samplers, which read
the block's predictions one column earlier); the real remote code has none, so `cache` needs a
preset (or a stand-in directory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.models._hf_common import CachedDiffusionDenoiser, ChatTokenizer, DiffusionDenoiser, DiffusionModel
from harness.registry import MODELS

MASK_ID = 151666  # Dream's <|mask|>

PRESETS = {
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, mask_token_id=127, eos_token_id=126,
                 pad_token_id=126, bos_token_id=126),
    "dream-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0, mask_token_id=MASK_ID,
                     eos_token_id=151643, pad_token_id=151643, bos_token_id=151643),
}


@MODELS.register("dream")
@dataclass(frozen=True, kw_only=True)
class Dream(DiffusionModel):
    """Dream masked diffusion LM, shifted logits (remote code from a path, or a stand-in preset: tiny, dream-7b)."""

    presets: ClassVar[dict] = PRESETS
    noise: ClassVar[str] = "masked"

    def config_class(self):
        from harness.models.standins.dream_standin import DreamConfig

        return DreamConfig

    def model_class(self):
        from harness.models.standins.dream_standin import DreamModel

        return DreamModel

    def load(self) -> DiffusionDenoiser:
        module, tok = self.build_module()
        mask, eos, pad = self.special_ids(module, tok, MASK_ID)
        cls = CachedDiffusionDenoiser if hasattr(module, "forward_with_cache") else DiffusionDenoiser
        return cls(module, ChatTokenizer(tok, eos), mask_id=mask, eos_id=eos, pad_id=pad, shift_logits=True,
                   mask_style="4d", compile=self.compile)
