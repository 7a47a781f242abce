"""The meter: wraps any Denoiser and measures what every call costs (docs/architecture.md, "Interfaces").

Components never count their own cost: they call `meter.logits(...)` like any denoiser, and the
meter counts NFE (sequences x forward passes; cached passes apart), tokens processed, FLOPs
(2·params·tokens for the dense layers plus 4·layers·d·T_q·T_k for attention scores and values),
wall time inside the model (CUDA-synchronised on GPU) and peak memory. When a budget is set, the
call that would take a counter past its limit raises BudgetExceeded before running.

The meter is also the boundary where a broken model is caught: logits with a NaN or +inf (a NaN
weight, an overflow in half precision) raise NonFiniteError naming the pass and the first offending
position, so the units of that batch are recorded as errors instead of scoring 0 silently. -inf is
allowed: a model may rule a vocabulary entry out (its probability is exactly 0).

`Ledger` keeps a cell's spending across runs of the same run directory: every record's cost counts,
including the units of a batch stopped by its budget (what was spent is spent).
"""
from __future__ import annotations

import resource
import sys
import time

import torch

from harness.types import Budget, BudgetExceeded, Cost


class NonFiniteError(Exception):
    """A model pass or a component returned NaN or infinity; the message names the tensor."""


def check_finite(t: torch.Tensor, what: str, allow_neg_inf: bool = True) -> None:
    """Raise NonFiniteError when `t` holds NaN or +inf (or -inf unless `allow_neg_inf`)."""
    if not torch.is_tensor(t) or not t.is_floating_point():
        return
    if bool(torch.isfinite(t.sum(dtype=torch.float32))):  # one reduction, no [B, T, V] masks: the usual case
        return
    bad = torch.isnan(t) | (t == float("inf"))
    if not allow_neg_inf:
        bad = bad | (t == float("-inf"))
    elif t.dim() >= 1 and t.shape[-1] > 0:  # a position whose every logit is -inf has no distribution at all
        dead = (t == float("-inf")).all(-1)
        if bool(dead.any()):
            first = [int(i) for i in dead.nonzero()[0].tolist()]
            raise NonFiniteError(f"non-finite {what} {list(t.shape)}: {int(dead.sum())} position(s) with every "
                                 f"value -inf (no distribution); first at index {first}")
    if not bool(bad.any()):
        return
    first = [int(i) for i in bad.nonzero()[0].tolist()]
    n_nan = int(torch.isnan(t).sum())
    raise NonFiniteError(f"non-finite {what} {list(t.shape)}: {n_nan} NaN, {int(bad.sum()) - n_nan} inf "
                         f"of {t.numel()} values; first at index {first} (value {float(t[tuple(first)])})")


class Ledger:
    """What one cell has spent, summed over records (every status), against its budget."""

    KEYS = ("nfe", "tokens", "flops", "wall_s")

    def __init__(self, budget: Budget, records=()):
        self.budget = budget
        self.spent = {k: 0.0 for k in self.KEYS}
        for r in records:
            self.add(r.get("cost") or {})

    def add(self, cost) -> None:
        d = cost.as_dict() if hasattr(cost, "as_dict") else cost
        for k in self.KEYS:
            self.spent[k] += float(d.get(k) or 0)

    def as_cost(self) -> Cost:
        s = self.spent
        return Cost(nfe=int(round(s["nfe"])), tokens=int(round(s["tokens"])), flops=s["flops"], wall_s=s["wall_s"])

    def exceeded(self) -> BudgetExceeded | None:
        """The first limit already passed (spent > limit), or None."""
        for k in self.KEYS:
            limit = getattr(self.budget, k)
            if limit is not None and self.spent[k] > limit:
                return BudgetExceeded(k, self.spent[k], limit)
        return None


def attention_flops(n_layers: int, d_model: int, batch: int, t_query: int, t_key: int) -> float:
    """QK^T and AV: 2 matmuls of 2·T_q·T_k·d FLOPs each, per layer and sequence."""
    return 4.0 * n_layers * d_model * t_query * t_key * batch


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA allocator peak on GPU, process peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class Meter:
    """A Denoiser that forwards to `inner` and counts. Read `cost` (a Cost) at any time."""

    def __init__(self, inner, budget: Budget | None = None):
        self.inner = inner
        self.budget = budget or Budget()
        self.arch = inner.arch
        self._nfe_full = self._nfe_cached = self._tokens = 0
        self._flops = self._wall = 0.0
        self.exceeded: BudgetExceeded | None = None

    # Pass through everything the Denoiser protocol exposes, except forward passes: a `logits*`
    # method the meter does not define would run uncounted, so it is refused instead.
    def __getattr__(self, name):
        if name.startswith("logits"):
            raise AttributeError(f"the meter does not count {name!r}; add it to harness.budget.Meter")
        return getattr(self.inner, name)

    @property
    def cost(self) -> Cost:
        return Cost(nfe=self._nfe_full + self._nfe_cached, nfe_full=self._nfe_full,
                    nfe_cached=self._nfe_cached, tokens=self._tokens, flops=self._flops,
                    wall_s=self._wall, peak_mem=peak_memory(self.inner.device))

    def _check(self, nfe: int, tokens: int, flops: float) -> None:
        b = self.budget
        spent = self._nfe_full + self._nfe_cached
        checks = (("nfe", spent + nfe, b.nfe), ("tokens", self._tokens + tokens, b.tokens),
                  ("flops", self._flops + flops, b.flops), ("wall_s", self._wall, b.wall_s))
        for what, value, limit in checks:
            if limit is not None and value > limit:
                self.exceeded = BudgetExceeded(what, value, limit)
                raise self.exceeded

    def _run(self, fn, batch: int, t_query: int, t_key: int, cached: bool):
        tokens = batch * t_query
        flops = 2.0 * self.arch.n_params * tokens + attention_flops(
            self.arch.n_layers, self.arch.d_model, batch, t_query, t_key)
        self._check(batch, tokens, flops)
        sync = self.inner.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        self._wall += time.perf_counter() - start
        logits = out[0] if isinstance(out, tuple) else out
        if cached:
            self._nfe_cached += batch
        else:
            self._nfe_full += batch
        self._tokens += tokens
        self._flops += flops
        check_finite(logits, f"logits of a {'cached' if cached else 'full'} model pass")
        return out

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A full pass: every position of x is processed."""
        B, T = x.shape
        return self._run(lambda: self.inner.logits(x, attention_mask), B, T, T, cached=False)

    def logits_denoise(self, xt: torch.Tensor, x0: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A block model's scoring pass over [x_t ; x_0] (harness/models/block_attention.py): one
        full pass per row whose 2T columns are all processed."""
        B, T = xt.shape
        return self._run(lambda: self.inner.logits_denoise(xt, x0, attention_mask), B, 2 * T, 2 * T, cached=False)

    def logits_pattern(self, x: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """A block model's forward with an explicit attention pattern and position ids
        (harness/models/block_attention.py; TraceRL's training layout): one full pass of S columns."""
        B, S = x.shape
        return self._run(lambda: self.inner.logits_pattern(x, allowed, position_ids), B, S, S, cached=False)

    def logits_cached(self, x: torch.Tensor, cache, **kwargs) -> torch.Tensor:
        """A pass that reuses cached keys/values: only x's positions are processed, attending to
        the cache as well. Needs an inner model with `logits_cached` (KV-cache samplers)."""
        B, T = x.shape
        t_key = T + int(getattr(cache, "length", 0))
        return self._run(lambda: self.inner.logits_cached(x, cache, **kwargs), B, T, t_key, cached=True)

    def logits_build_cache(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, keep):
        """A full pass that also returns the KV cache of the columns `keep` (block start of the
        cached samplers): counted as a FULL pass, since every position is processed."""
        B, T = x.shape
        return self._run(lambda: self.inner.logits_build_cache(x, attention_mask, keep=keep), B, T, T, cached=False)

    def logits_layerwise(self, run, *, batch: int, layer_tokens, t_key: int, full: bool,
                         extra_flops: float = 0.0):
        """A pass of an approximate cache (harness/samplers/_approx_cache.py) that recomputes some
        columns of some layers: `layer_tokens` [n_layers] the query columns each layer computes per
        sequence, attending to `t_key` keys. Tokens count the layer-averaged columns (a full pass
        over T columns counts T), FLOPs 2·params·that plus each layer's attention, plus
        `extra_flops` (the pass's other work, e.g. value projections for a similarity test).
        `full`: whether every column of every layer is computed (counted as a full pass)."""
        lt = [int(n) for n in layer_tokens]
        if len(lt) != self.arch.n_layers:
            raise ValueError(f"layer_tokens has {len(lt)} entries for a model of {self.arch.n_layers} layers")
        tokens = int(round(batch * sum(lt) / len(lt)))
        flops = 2.0 * self.arch.n_params * batch * sum(lt) / len(lt) + extra_flops + sum(
            attention_flops(1, self.arch.d_model, batch, n, t_key) for n in lt)
        self._check(batch, tokens, flops)
        sync = self.inner.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.inner.logits_layerwise(run, batch=batch, layer_tokens=lt, t_key=t_key, full=full,
                                          extra_flops=extra_flops)
        if sync:
            torch.cuda.synchronize()
        self._wall += time.perf_counter() - start
        if full:
            self._nfe_full += batch
        else:
            self._nfe_cached += batch
        self._tokens += tokens
        self._flops += flops
        check_finite(out[0] if isinstance(out, tuple) else out, f"logits of a {'full' if full else 'cached'} "
                     "layer-wise pass")
        return out
