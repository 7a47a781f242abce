"""`llada`: LLaDA (Nie et al. 2025, arXiv 2502.09992), a masked diffusion LM with Llama blocks.

`impl: native` (the default) runs the harness's own torch implementation
(harness/models/native/llada.py): `path` reads an official checkpoint directory or hub id
(GSAI-ML/LLaDA-8B-Base, -8B-Instruct, GSAI-ML/LLaDA-1.5: config.json + safetensors, sharded or
not) by parameter name, with no remote code and no transformers in the forward pass (torch only;
transformers loads the tokenizer: tested with 4.57.1 and the pinned 5.24.0). Its logits equal the
public `modeling_llada.py`'s on the same weights (fp32 and bf16: tolerance 0; under 4.57.1 against
the unpatched file, under 5.24 against the file patched to load). Left padding
is masked (the public file leaks it) and positions count real tokens, so batching never changes a
number. It has Fast-dLLM prefix/dual KV caches (`cache:` of the block samplers), an explicit
attention pattern with position ids (`logits_pattern`: WINO's shadow block), a layer-by-layer view
(`logits_layerwise`: the approximate caches `cache: dkv`, `cache: dkv_greedy`, `cache: dllm_cache`
and, with its attention weights (`attention_weights`), `cache: d2cache`), SDPA or eager
attention, and runs in bf16 (rotary in float32, as the public file). `preset` builds it randomly
initialised: "tiny" for CPU tests, "llada-8b" for GPU throughput suites (32 layers, d 4096, FFN
12288, vocab 126464, 32 heads). `config` overrides take config.json keys.

`impl: remote` loads the checkpoint's own code through transformers' trust_remote_code (for a
variant the native code refuses: it names the config key); presets then build the stand-in
(harness/models/standins/llada_standin.py). LLaDA's public file runs under transformers 4.x
(tested: 4.57.1) and does not load under 5.x: the error says so and points to `impl: native`.
The public file ignores padding (it builds a mask and calls attention with `attn_mask=None`), so a
padded batch runs one forward per distinct padding, each group unpadded as its rows run alone
(`DiffusionDenoiser.padding_by_rows`): batching never changes a number, at the cost of one pass per
padding length. The public file takes no position ids or attention pattern and has no layer view,
so `impl: remote` provides neither `logits_pattern` nor `logits_layerwise` (`capabilities()`: the
plan refuses wino and the approximate caches there). A directory whose config.json names another
architecture is refused.

Mask id 126336 (also when a config.json lacks `mask_token_id`: the public config class would
silently use 50256), no logit shift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.models._family import declare
from harness.models._hf_common import CachedDiffusionDenoiser, ChatTokenizer, DiffusionDenoiser
from harness.models.native.adapter import NativeOrRemote
from harness.registry import MODELS

MASK_ID = 126336  # LLaDA's <|mdm_mask|>

# LLaDA's decoding/prompting defaults (harness/models/_family.py): linear step counts, EOT 126348 stops, BOS first
FAMILY = dict(decode_defaults={"schedule": "linear"}, stop_tokens=("<|eot_id|>",), add_bos=True)

PRESETS = {
    "tiny": dict(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=128, max_sequence_length=256,
                 mask_token_id=127, eos_token_id=126, pad_token_id=125),
    "llada-8b": dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
                     max_sequence_length=4096, rope_theta=500000.0, mask_token_id=MASK_ID, eos_token_id=126081,
                     pad_token_id=126081),
}


class NativeLLaDADenoiser(CachedDiffusionDenoiser):
    """The native module's denoiser: the KV caches plus an explicit attention pattern
    (`logits_pattern`) and the layer-by-layer view of the approximate caches (`logits_layerwise`)."""

    def logits_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] under an explicit pattern [B, 1, S, S] (True: attend) and position ids [B, S]
        (harness/models/block_attention.py, "An explicit pattern")."""
        with self._autocast():
            return self.module.forward_pattern(x, allowed, position_ids).logits

    def logits_layerwise(self, run, **work):
        """Run `run(layers)` on the model's layer-by-layer view (native/llada.py `LLaDALayers`) and return
        what it returns (logits first). `work` describes the pass for the meter (harness/budget.py)."""
        from harness.models.native.llada import LLaDALayers

        with self._autocast():
            return run(LLaDALayers(self.module))


@MODELS.register("llada")
@dataclass(frozen=True, kw_only=True)
class LLaDA(NativeOrRemote):
    """LLaDA-8B/1.5 masked diffusion LM (impl native: checkpoint or preset tiny, llada-8b; impl remote: own code)."""

    presets: ClassVar[dict] = PRESETS
    noise: ClassVar[str] = "masked"
    # denoiser capabilities components may require: the native code's (the default impl); `capabilities()`
    # answers for a spec, whose impl may be remote
    provides: ClassVar[tuple[str, ...]] = ("full_attention", "logits_pattern", "logits_layerwise", "attention_weights")
    preset_base: ClassVar[dict] = dict(model_type="llada", block_type="llama", activation_type="silu",
                                       layer_norm_type="rms", rope=True, weight_tying=False, rope_theta=500000.0)
    known_mask: ClassVar[int] = MASK_ID
    model_types: ClassVar[tuple[str, ...]] = ("llada",)

    def capabilities(self) -> tuple[str, ...]:
        """What this spec's denoiser provides: the public file (impl remote) takes no attention pattern
        and has no layer view."""
        return self.provides if self.impl == "native" else ("full_attention",)

    def native_classes(self):
        from harness.models.native import llada as native

        return native.LLaDA, native.LLaDAConfig

    def config_class(self):
        from harness.models.standins.llada_standin import LLaDAConfig

        return LLaDAConfig

    def model_class(self):
        from harness.models.standins.llada_standin import LLaDAModelLM

        return LLaDAModelLM

    def load(self) -> DiffusionDenoiser:
        module, tok = self.build_module()
        mask, eos, pad = self.special_ids(module, tok, MASK_ID)
        cls = (NativeLLaDADenoiser if hasattr(module, "forward_pattern") else
               CachedDiffusionDenoiser if hasattr(module, "forward_with_cache") else DiffusionDenoiser)
        den = cls(module, ChatTokenizer(tok, eos), mask_id=mask, eos_id=eos, pad_id=pad, shift_logits=False,
                   mask_style="2d", compile=self.compile)
        # The checkpoint's own code (not the harness's stand-ins, which mask padding as the native code
        # does): a padded batch runs one forward per distinct padding, so batching never changes a number.
        den.padding_by_rows = self.impl == "remote" and cls is DiffusionDenoiser
        return declare(den, tok, path=self.path, chat=self.chat, add_special_tokens=self.add_special_tokens,
                       **FAMILY)
