"""A small stand-in for LLaDA's remote code (GSAI-ML/LLaDA-8B-*, `modeling_llada.py`).

Same interface and parameter names as the public code: `LLaDAModelLM(config)` whose forward takes
`input_ids` and an optional `attention_mask` [B, T] and returns an output with `.logits` [B, T, V];
the weights sit under `model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj, v_proj,
attn_out, ff_norm, ff_proj, up_proj, ff_out}, ln_f, ff_out}`; config keys d_model, n_heads,
n_kv_heads, n_layers, mlp_hidden_size, vocab_size, embedding_size, rope_theta, rms_norm_eps,
mask_token_id (126336 in LLaDA-8B). Llama-style blocks (RMSNorm, rotary, SwiGLU, no biases) with
full bidirectional attention; the logits at k predict the token at k (no shift). Positions are
0..T-1 as in the real code (it takes no position ids; rotary attention is shift-invariant).

Written for the harness (not copied); adds `forward_with_cache` / `forward_cached` for the
Fast-dLLM prefix/dual caches of the block samplers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .standin_layers import KVCache, LLaDABlock, LLaDANames, RMSNorm, decoder_stack, key_order, padding_mask, rotary


class LLaDAConfig(LLaDANames, PretrainedConfig):
    model_type = "llada"

    def __init__(self, d_model: int = 4096, n_heads: int = 32, n_kv_heads: int | None = None, n_layers: int = 32,
                 mlp_hidden_size: int = 12288, vocab_size: int = 126464, embedding_size: int | None = None,
                 max_sequence_length: int = 4096, rope_theta: float = 500000.0, rms_norm_eps: float = 1e-5,
                 mask_token_id: int = 126336, eos_token_id: int = 126081, pad_token_id: int = 126081,
                 weight_tying: bool = False, init_std: float = 0.02, **kwargs):
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.n_kv_heads = n_kv_heads or n_heads
        self.mlp_hidden_size, self.vocab_size = mlp_hidden_size, vocab_size
        self.embedding_size = embedding_size or vocab_size
        self.max_sequence_length, self.rope_theta, self.rms_norm_eps = max_sequence_length, rope_theta, rms_norm_eps
        self.mask_token_id, self.weight_tying, self.init_std = mask_token_id, weight_tying, init_std
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)


class LLaDAModel(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.embedding_size, cfg.d_model),
            blocks=nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
        ))
        if not cfg.weight_tying:
            self.transformer["ff_out"] = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.transformer.ln_f(h)
        if self.cfg.weight_tying:
            return h @ self.transformer.wte.weight.T
        return self.transformer.ff_out(h)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        return rotary(positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_theta, dtype)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, self.config.init_std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def get_output_embeddings(self):
        return self.model.transformer.wte if self.config.weight_tying else self.model.transformer.ff_out

    @property
    def _impl(self) -> str:
        return "eager" if getattr(self.config, "_attn_implementation", None) == "eager" else "sdpa"

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs):
        m = self.model
        h = m.transformer.wte(input_ids)  # [B, T, D]
        cos, sin = m.rope(torch.arange(input_ids.shape[1], device=input_ids.device), h.dtype)
        h, _ = decoder_stack(m.transformer.blocks, h, cos, sin, padding_mask(attention_mask), self._impl)
        return CausalLMOutputWithPast(logits=m.head(h))

    # -- KV caches for the harness's block samplers (Fast-dLLM prefix / dual cache) --------------
    def forward_with_cache(self, input_ids, attention_mask, keep: torch.Tensor):
        """A full pass (the same numbers as forward) that keeps the keys/values of columns `keep`."""
        m = self.model
        h = m.transformer.wte(input_ids)
        cos, sin = m.rope(torch.arange(input_ids.shape[1], device=input_ids.device), h.dtype)
        h, (k, v) = decoder_stack(m.transformer.blocks, h, cos, sin, padding_mask(attention_mask), self._impl,
                                  keep=keep)
        return m.head(h), KVCache(k, v, keep)

    def forward_cached(self, input_ids, cache: KVCache, columns: torch.Tensor, attention_mask):
        """Logits [B, Tq, V] of the canvas columns `columns` (input_ids [B, Tq] their tokens),
        attending to the cached columns and themselves, keys in canvas order."""
        m = self.model
        h = m.transformer.wte(input_ids)
        cos, sin = m.rope(columns, h.dtype)
        order = key_order(cache.columns, columns)
        key_cols = torch.cat([cache.columns, columns])[order]
        h, _ = decoder_stack(m.transformer.blocks, h, cos, sin, padding_mask(attention_mask, key_cols), self._impl,
                             cache=cache, order=order)
        return m.head(h)
