"""KV caches for the block samplers (Fast-dLLM, arXiv 2505.22618; docs/methods.md §3 "cache variants").

A denoiser that supports caching has two methods besides `logits`:

    logits_build_cache(x [B, T], attention_mask=None, *, keep) -> (logits [B, T, V], cache)
        a full pass that also keeps the keys/values of the canvas columns `keep` (1-D LongTensor)
    logits_cached(x_part [B, Tq], cache, *, positions [Tq], attention_mask=None) -> logits [B, Tq, V]
        a pass over the columns `positions` only, attending to the cache plus themselves

and its cache object has `.length` (the number of cached key positions, which the meter's FLOPs
use) and `.take(rows)` (keep some batch rows). Layouts, with the current block [lo, hi):

    prefix: at the block start one full pass caches columns [0, lo) (prompt + earlier blocks);
            later steps recompute the query columns [lo, T) (the block and the masked suffix).
    dual:   the block-start pass caches [0, lo) and [hi, T); later steps recompute [lo, hi) only.

A shifted-logit model (Dream, `shift_logits`) predicts column k at position k - 1, so the block's
predictions sit at [lo - 1, hi - 1) and every query set starts one column earlier: prefix caches
[0, lo - 1) and recomputes [lo - 1, T); dual caches [0, lo - 1) and [hi, T) and recomputes
[lo - 1, hi) (column hi - 1 is queried, its prediction for hi is not read). Column lo - 1 is
committed (the prompt's end or the previous block), so recomputing it changes nothing.

The cache is stale, not exact, in a bidirectional model: the cached columns' keys/values were
computed before this block's commits, while a full pass would let them attend to those commits.
It is exact for a one-layer model (layer-1 keys/values depend on a column's own token only, and
nothing outside the current block changes during the block), and whenever a block takes one step.
The meter counts a cached pass over its Tq query columns (hi - lo + 1 for a shifted dual cache).

Block models (harness/models/block_attention.py) keep an EXACT cache of finished blocks: their
mask hides later blocks in every pass, so nothing outside the current block can change a cached
column. Their `logits_cached` may take `store=True` and then returns (logits, the cache extended
by the pass's columns): SDAR's `store_kv=True` forward after a block is finished (`store_pass`).

Counting: the block-start pass is a FULL pass and the later ones are CACHED passes. The meter
counts `logits_cached` as cached; the cache-building pass must be counted as full, so it goes
through the meter's `logits_build_cache` (see `full_pass_with_cache`).
"""
from __future__ import annotations

import torch

from harness.types import HarnessError


def supports_cache(denoiser) -> bool:
    """Whether the (possibly metered) denoiser's model implements both cache methods."""
    model = getattr(denoiser, "inner", denoiser)
    return callable(getattr(type(model), "logits_build_cache", None)) and \
        callable(getattr(type(model), "logits_cached", None))


def check_cache_support(denoiser, cache: str) -> None:
    if cache != "none" and not supports_cache(denoiser):
        model = getattr(denoiser, "inner", denoiser)
        raise HarnessError(
            f"cache={cache!r} needs a model with KV-cache support (logits_build_cache and logits_cached); "
            f"{type(model).__name__} has none: use cache: none"
        )


def full_pass_with_cache(denoiser, x: torch.Tensor, attention_mask: torch.Tensor | None,
                         keep: torch.Tensor):
    """One full pass over x that also returns a KV cache of the columns `keep`.

    `denoiser` is a model or the meter wrapping it; the meter counts this as a full pass (it
    refuses to forward any uncounted `logits*` method, so no pass can slip past it)."""
    if not hasattr(denoiser, "logits_build_cache"):
        raise HarnessError(f"{type(denoiser).__name__} cannot build a KV cache (no logits_build_cache)")
    return denoiser.logits_build_cache(x, attention_mask, keep=keep)


def supports_store(denoiser) -> bool:
    """Whether the (possibly metered) model's `logits_cached` takes `store` (block models: extend
    the cache by the pass's columns, SDAR's store_kv pass)."""
    import inspect

    model = getattr(denoiser, "inner", denoiser)
    fn = getattr(type(model), "logits_cached", None)
    try:
        return fn is not None and "store" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def store_pass(denoiser, x: torch.Tensor, attention_mask: torch.Tensor | None, lo: int, cache):
    """A block model's finished block [lo, hi) (x: the canvas up to hi) enters the cache of [0, lo):
    -> the cache of [0, hi). One pass over the block attending to the cache (counted as cached), as
    SDAR's `store_kv=True` forward; with no cache yet (no prefill), or a model whose `logits_cached`
    has no `store`, one full pass over [0, hi) that builds the cache (counted as full)."""
    hi = x.shape[1]
    if cache is None or not supports_store(denoiser):
        _, new = full_pass_with_cache(denoiser, x, attention_mask, torch.arange(hi, device=x.device))
        return new
    _, new = denoiser.logits_cached(x[:, lo:], cache, positions=torch.arange(lo, hi, device=x.device),
                                    attention_mask=attention_mask, store=True)
    return new
