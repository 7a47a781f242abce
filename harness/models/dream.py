"""`dream`: Dream (Ye et al. 2025, arXiv 2508.15487), a masked diffusion LM initialised from Qwen2.5;
DiffuCoder (apple/DiffuCoder-7B-*, arXiv 2506.20639) shares its architecture and loads here too.

`impl: native` (the default) runs the harness's own torch implementation
(harness/models/native/dream.py): `path` reads an official checkpoint directory or hub id
(Dream-org/Dream-v0-Base-7B, -Instruct-7B, apple/DiffuCoder-7B-Instruct: config.json +
safetensors, sharded or not) by parameter name, with no remote code and no transformers in the
forward pass (torch only; transformers loads the tokenizer: tested with 4.57.1 and the pinned
5.24.0). Its logits equal the public `modeling_dream.py`'s on the same weights (fp32 and bf16:
tolerance 0; under 4.57.1 against the unpatched file; under 5.x the public file leaves its RoPE
frequencies uninitialised unless patched). It has Fast-dLLM prefix/dual KV caches, a
layer-by-layer view (`logits_layerwise`, with attention weights: the approximate caches `cache: dkv`,
`cache: dkv_prefill`, `cache: dkv_pd`, `cache: dllm_cache` and `cache: d2cache` as their Dream variants
read the shifted logits), SDPA or eager attention, bf16. `preset` builds it randomly initialised:
"tiny" for CPU tests, "dream-7b" for GPU suites; `config` overrides take config.json keys.

`impl: remote` loads the checkpoint's own code with trust_remote_code (presets: the stand-in,
harness/models/standins/dream_standin.py); it runs under transformers 4.x (tested: 4.57.1); under
5.x Dream's file fails to load, and a model whose rotary buffer was left uninitialised is refused:
both errors point to `impl: native`; it has no layer view (`capabilities()`). A padded batch runs one
forward per distinct padding (each group unpadded, as its rows run alone): the harness does not rely
on remote code's own masking.

Mask id 151666. Dream keeps its AR parent's alignment: the logits at k-1 predict the token at k,
so the adapter sets `shift_logits=True` and the estimators read position k at k-1. Padding goes
in as Dream's own generate passes it: a boolean 4-D mask plus position ids counting real tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.models._family import declare
from harness.models._hf_common import CachedDiffusionDenoiser, ChatTokenizer, DiffusionDenoiser
from harness.models.native.adapter import NativeOrRemote
from harness.registry import MODELS

MASK_ID = 151666  # Dream's <|mask|>

# Dream's decoding/prompting defaults (harness/models/_family.py): diffusion_generate's step counts, <|im_end|> stops
FAMILY = dict(decode_defaults={"schedule": "dream"}, stop_tokens=("<|im_end|>",), add_bos=False)

PRESETS = {
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, mask_token_id=127, eos_token_id=126,
                 pad_token_id=126, bos_token_id=126),
    "dream-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0, mask_token_id=MASK_ID,
                     eos_token_id=151643, pad_token_id=151643, bos_token_id=151643),
}


class NativeDreamDenoiser(CachedDiffusionDenoiser):
    """The native module's denoiser: the KV caches plus the layer-by-layer view of the approximate
    caches (`logits_layerwise`)."""

    def logits_layerwise(self, run, **work):
        """Run `run(layers)` on the model's layer-by-layer view (native/dream.py `DreamLayers`, whose head
        gives Dream's unshifted logits: column k predicts k + 1) and return what it returns (logits
        first). `work` describes the pass for the meter (harness/budget.py)."""
        from harness.models.native.dream import DreamLayers

        with self._autocast():
            return run(DreamLayers(self.module))


@MODELS.register("dream")
@dataclass(frozen=True, kw_only=True)
class Dream(NativeOrRemote):
    """Dream-7B/DiffuCoder masked diffusion LM, shifted logits (impl native: checkpoint or preset; impl remote)."""

    presets: ClassVar[dict] = PRESETS
    noise: ClassVar[str] = "masked"
    # denoiser capabilities components may require: the native code's (the default impl); `capabilities()`
    # answers for a spec, whose impl may be remote
    provides: ClassVar[tuple[str, ...]] = ("full_attention", "logits_layerwise", "attention_weights", "shifted_logits")
    preset_base: ClassVar[dict] = dict(model_type="Dream", rope_theta=1000000.0)
    known_mask: ClassVar[int] = MASK_ID
    model_types: ClassVar[tuple[str, ...]] = ("Dream", "dream")

    def capabilities(self) -> tuple[str, ...]:
        """What this spec's denoiser provides: the public file (impl remote) has no layer view."""
        return self.provides if self.impl == "native" else ("full_attention", "shifted_logits")

    def native_classes(self):
        from harness.models.native import dream as native

        return native.Dream, native.DreamConfig

    def config_class(self):
        from harness.models.standins.dream_standin import DreamConfig

        return DreamConfig

    def model_class(self):
        from harness.models.standins.dream_standin import DreamModel

        return DreamModel

    def load(self) -> DiffusionDenoiser:
        module, tok = self.build_module()
        mask, eos, pad = self.special_ids(module, tok, MASK_ID)
        cls = (NativeDreamDenoiser if isinstance(module, self.native_classes()[0]) else
               CachedDiffusionDenoiser if hasattr(module, "forward_with_cache") else DiffusionDenoiser)
        den = cls(module, ChatTokenizer(tok, eos), mask_id=mask, eos_id=eos, pad_id=pad, shift_logits=True,
                   mask_style="4d", compile=self.compile)
        # The checkpoint's own code (not the harness's stand-ins, which mask padding as the native code
        # does): a padded batch runs one forward per distinct padding, so batching never changes a number.
        den.padding_by_rows = self.impl == "remote" and cls is DiffusionDenoiser
        return declare(den, tok, path=self.path, chat=self.chat, add_special_tokens=self.add_special_tokens,
                       **FAMILY)
