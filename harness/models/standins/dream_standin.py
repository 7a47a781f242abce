"""A small stand-in for Dream's remote code (Dream-org/Dream-v0-*-7B, `modeling_dream.py`).

Same interface and parameter names as the public code: `DreamModel(config)` whose forward takes
`input_ids`, `attention_mask` (None, "full", a [B, T] padding mask, or a boolean [B, 1, T, T]
mask as Dream's own generate builds) and `position_ids`, and returns an output with `.logits`;
weights under `model.{embed_tokens, layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, norm}` and `lm_head`; Qwen2 config keys
(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
rope_theta, rms_norm_eps) and mask_token_id (151666 in Dream-7B). Qwen2 blocks (biased q/k/v,
grouped key/value heads) with full bidirectional attention.

Dream was initialised from an autoregressive LM and keeps its alignment: the logits at position
k-1 predict the token at k ("shifted" logits). That is a property of the weights and of how the
logits are read (the harness's `shift_logits=True`), not of this code, which is a plain
bidirectional transformer. Written for the harness (not copied); adds `forward_with_cache` /
`forward_cached` for the Fast-dLLM prefix/dual caches of the block samplers (the real code has none).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .standin_layers import DreamBaseModel, KVCache, RMSNorm, decoder_stack, key_order, rotary


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(self, vocab_size: int = 152064, hidden_size: int = 3584, intermediate_size: int = 18944,
                 num_hidden_layers: int = 28, num_attention_heads: int = 28, num_key_value_heads: int = 4,
                 max_position_embeddings: int = 131072, rope_theta: float = 1000000.0, rms_norm_eps: float = 1e-6,
                 initializer_range: float = 0.02, tie_word_embeddings: bool = False, mask_token_id: int = 151666,
                 pad_token_id: int = 151643, eos_token_id: int = 151643, bos_token_id: int = 151643, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta, self.rms_norm_eps = rope_theta, rms_norm_eps
        self.initializer_range, self.mask_token_id = initializer_range, mask_token_id
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


def _attention_mask(attention_mask):
    """Dream's accepted masks -> a boolean mask broadcastable to [B, 1, T, T] (True = attend), or None."""
    if attention_mask is None or isinstance(attention_mask, str):  # "full": no padding
        return None
    m = attention_mask.bool()
    return m[:, None, None, :] if m.dim() == 2 else m


class DreamModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    @property
    def _impl(self) -> str:
        return "eager" if getattr(self.config, "_attn_implementation", None) == "eager" else "sdpa"

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype):
        cfg = self.config
        return rotary(position_ids, cfg.hidden_size // cfg.num_attention_heads, cfg.rope_theta, dtype)

    def forward(self, input_ids: torch.LongTensor, attention_mask=None, position_ids=None, **kwargs):
        logits, _ = self.forward_with_cache(input_ids, attention_mask, position_ids)
        return CausalLMOutputWithPast(logits=logits)

    # -- KV caches for the harness's block samplers (Fast-dLLM prefix / dual cache) --------------
    def forward_with_cache(self, input_ids, attention_mask=None, position_ids=None, *, keep=None):
        """A full pass -> (logits [B, T, V], KVCache of the columns `keep` [Tc], or None without
        `keep`). Masks and position ids as forward takes them."""
        T = input_ids.shape[1]
        h = self.model.embed_tokens(input_ids)  # [B, T, D]
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)
        cos, sin = self._rope(position_ids, h.dtype)
        h, (k, v) = decoder_stack(self.model.layers, h, cos, sin, _attention_mask(attention_mask), self._impl,
                                  keep=keep)
        return self.lm_head(self.model.norm(h)), None if keep is None else KVCache(k, v, keep)

    def forward_cached(self, input_ids, cache: KVCache, columns: torch.Tensor, attention_mask=None,
                       position_ids=None):
        """Logits [B, Tq, V] of the canvas columns `columns` [Tq] (input_ids [B, Tq] their tokens),
        attending to the cached columns and themselves, keys in canvas order. `attention_mask` and
        `position_ids` are the whole canvas's, as forward takes them (sliced here)."""
        h = self.model.embed_tokens(input_ids)  # [B, Tq, D]
        pos = columns if position_ids is None else position_ids[..., columns]  # [Tq] or [B, Tq]
        cos, sin = self._rope(pos, h.dtype)
        order = key_order(cache.columns, columns)
        key_cols = torch.cat([cache.columns, columns])[order]  # [Tk] in canvas order
        h, _ = decoder_stack(self.model.layers, h, cos, sin, _query_key_mask(attention_mask, columns, key_cols),
                             self._impl, cache=cache, order=order)
        return self.lm_head(self.model.norm(h))


def _query_key_mask(attention_mask, columns: torch.Tensor, key_cols: torch.Tensor):
    """A whole-canvas mask (Dream's forms) -> its rows `columns` and keys `key_cols`: a boolean
    mask broadcastable to [B, 1, Tq, Tk], or None."""
    m = _attention_mask(attention_mask)  # [B, 1, 1|T, T] or None
    if m is None:
        return None
    rows = columns if m.shape[2] > 1 else slice(None)
    return m[:, :, rows][..., key_cols]
