"""`llada`: LLaDA (Nie et al. 2025, arXiv 2502.09992), a masked diffusion LM with Llama blocks.

`path` loads a saved LLaDA (GSAI-ML/LLaDA-8B-Instruct or a local copy) through transformers with
trust_remote_code; `preset` builds a randomly initialised model of the same architecture from the
harness's stand-in (harness/models/standins/llada_standin.py): "tiny" for CPU tests, "llada-8b"
for GPU throughput suites (32 layers, d 4096, FFN 12288, vocab 126464, 32 heads). Mask id 126336,
no logit shift. The stand-in also has Fast-dLLM prefix/dual KV caches (`cache:` of the block
samplers); the real remote code has none, so `cache` needs a preset (or a stand-in directory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.models._hf_common import CachedDiffusionDenoiser, ChatTokenizer, DiffusionDenoiser, DiffusionModel
from harness.registry import MODELS

MASK_ID = 126336  # LLaDA's <|mdm_mask|>

PRESETS = {
    "tiny": dict(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=128, max_sequence_length=256,
                 mask_token_id=127, eos_token_id=126, pad_token_id=125),
    "llada-8b": dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
                     max_sequence_length=4096, rope_theta=500000.0, mask_token_id=MASK_ID, eos_token_id=126081,
                     pad_token_id=126081),
}


@MODELS.register("llada")
@dataclass(frozen=True, kw_only=True)
class LLaDA(DiffusionModel):
    """LLaDA masked diffusion LM (remote code from a path, or a random stand-in preset: tiny, llada-8b)."""

    presets: ClassVar[dict] = PRESETS
    noise: ClassVar[str] = "masked"

    def config_class(self):
        from harness.models.standins.llada_standin import LLaDAConfig

        return LLaDAConfig

    def model_class(self):
        from harness.models.standins.llada_standin import LLaDAModelLM

        return LLaDAModelLM

    def load(self) -> DiffusionDenoiser:
        module, tok = self.build_module()
        mask, eos, pad = self.special_ids(module, tok, MASK_ID)
        cls = CachedDiffusionDenoiser if hasattr(module, "forward_with_cache") else DiffusionDenoiser
        return cls(module, ChatTokenizer(tok, eos), mask_id=mask, eos_id=eos, pad_id=pad, shift_logits=False,
                   mask_style="2d", compile=self.compile)
