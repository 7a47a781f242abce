"""Per-item cache of the forward passes every exact moment needs (docs/methods.md §4).

For an item with n scored positions, `ItemTable` holds log p(o_i | x_M) for every nonempty masked
set M of the scored positions (the 2^n − 1 passes of `exact`, reveal set R = S∖M), indexed by M
as a bitmask over the scored positions (bit i = the i-th scored position is masked). Estimators
that also mask prompt tokens (one_step, SPG) need the same passes with each subset Q of the real
prompt tokens masked: those are computed on first use, 2^P (full completion mask only) or
2^P·(2^n − 1) passes, and kept. `item_table` caches tables per (model weights, item, padding
rule), so every estimator's exact moments on one item reuse one set of passes.

On a block-diffusion model the table is the same function of M, but a scored position's score
depends on M only inside its own block (harness/estimators/exact.py): the table is filled from
max_b (2^{n_b} − 1) passes (`block_reveal_logprobs`) and expanded to all 2^n masked sets, so the
exact moments are those of each estimator as it runs on the block model.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.estimators._common import completion_logprobs
from harness.estimators.exact import block_reveal_logprobs, expand_block_table, reveal_logprobs
from harness.models.block_attention import block_size_of
from harness.types import HarnessError

MAX_PROMPT_BITS = 10  # prompt-masking estimators: 2^P prompt subsets are enumerated up to P = 10
MAX_PASSES = 2 ** 20  # refuse a table that needs more forward passes than this
MAX_PROMPT_PASSES = 2 ** 16  # SPG with prompt masking: 2^P·(2^n − 1) passes, e.g. P = 8 with n <= 8
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 64


def popcount(n: int) -> np.ndarray:
    """[2^n] number of set bits of each bitmask."""
    m = np.arange(1 << n)
    return ((m[:, None] >> np.arange(max(n, 1))) & 1).sum(1)


def _by_mask(lp_r: torch.Tensor, n: int) -> np.ndarray:
    """lp by reveal set R [2^n − 1, n] -> lp by masked set M = full ^ R, [2^n, n] (row 0: M = ∅, zeros)."""
    full = (1 << n) - 1
    out = np.zeros((1 << n, n))
    if n:
        masks = np.arange(1, 1 << n)
        out[masks] = lp_r.detach().cpu().numpy()[full ^ masks]
    return out


@dataclass
class ItemTable:
    """Forward passes of one item. lp [2^n, n]: lp[M, i] = log p(o_{S_i} | x with M masked), read
    where i ∈ M; A [2^n] = Σ_{i∈M} lp[M, i] (the masked-token sum every ELBO-type draw scores)."""

    denoiser: object
    prompt: torch.Tensor  # [P]
    prompt_mask: torch.Tensor  # [P] bool
    completion: torch.Tensor  # [L]
    completion_mask: torch.Tensor  # [L] bool
    hide: torch.Tensor  # [L] bool: unscored completion positions masked in every pass
    max_tokens: int
    lp: np.ndarray = field(init=False)
    n_passes: int = field(init=False, default=0)
    _prompt: dict = field(init=False, default_factory=dict)
    grad_gram: object = field(init=False, default=None)  # moments/gradients.py: Gram of ∇A(M), on demand

    def __post_init__(self):
        self.n = int(self.completion_mask.sum())
        if (1 << self.n) - 1 > MAX_PASSES:
            raise HarnessError(f"exact moments: the item has {self.n} scored tokens; its table needs "
                               f"2^{self.n} − 1 forward passes (rows, on a block model), more than {MAX_PASSES}")
        if block_size_of(self.denoiser) is not None:  # the block path (module docstring)
            blocks, passes = block_reveal_logprobs(
                self.denoiser, self.prompt[None], self.completion[None], self.completion_mask[None],
                prompt_mask=self.prompt_mask[None], max_tokens=self.max_tokens, hide=self.hide[None])
            lp_r = expand_block_table(self.n, blocks[0])
            self.n_passes += passes
        else:
            lp_r = reveal_logprobs(self.denoiser, self.prompt[None], self.completion[None], self.completion_mask[None],
                                   prompt_mask=self.prompt_mask[None], max_tokens=self.max_tokens,
                                   hide=self.hide[None])[0]
            self.n_passes += (1 << self.n) - 1
        self.lp = _by_mask(lp_r, self.n)
        self.size = popcount(self.n)  # [2^n]
        self.A = self._sums(self.lp)  # [2^n]

    def _sums(self, lp: np.ndarray) -> np.ndarray:
        """[..., 2^n, n] -> [..., 2^n] Σ_{i∈M} lp[M, i]."""
        bits = ((np.arange(1 << self.n)[:, None] >> np.arange(self.n)) & 1).astype(bool)  # [2^n, n]
        return np.where(bits, lp, 0.0).sum(-1)

    @property
    def full(self) -> int:
        return (1 << self.n) - 1

    # -- per-size sums over masked sets ----------------------------------------------------------
    def by_size(self, values: np.ndarray) -> np.ndarray:
        """[2^n] values per masked set -> [n + 1] sums over the sets of each size l."""
        return np.bincount(self.size, weights=values, minlength=self.n + 1)

    def S1(self) -> np.ndarray:
        """[n + 1] Σ_{|M|=l} A(M)."""
        return self.by_size(self.A)

    def S2(self) -> np.ndarray:
        """[n + 1] Σ_{|M|=l} A(M)²."""
        return self.by_size(self.A ** 2)

    def Cx(self) -> np.ndarray:
        """[n + 1] Σ_{|M|=l} A(M)·A(S∖M) (A(∅) = 0): complementary pairs."""
        return self.by_size(self.A * self.A[self.full ^ np.arange(1 << self.n)])

    def elbo(self) -> float:
        """The exact ELBO (docs/methods.md §4) as Σ_{M≠∅} A(M) / (C(n,|M|)·|M|)."""
        comb = np.array([math.comb(self.n, k) for k in range(self.n + 1)], dtype=float)
        l = self.size[1:]
        return float((self.A[1:] / (comb[l] * l)).sum())

    # -- prompt-masked passes -------------------------------------------------------------------
    def real_prompt(self) -> torch.Tensor:
        return torch.nonzero(self.prompt_mask.bool())[:, 0]

    def prompt_subsets(self, who: str) -> torch.Tensor:
        """[2^P, P_pad] bool: every subset Q of the real prompt tokens (bit j = the j-th real token)."""
        real = self.real_prompt()
        P = len(real)
        if P > MAX_PROMPT_BITS:
            raise HarnessError(f"exact moments of {who}: prompt masking is enumerated over all 2^{P} subsets "
                               f"of the item's {P} real prompt tokens, more than 2^{MAX_PROMPT_BITS}; set "
                               f"p_prompt: 0 for an exact study or use shorter prompts")
        q = torch.arange(1 << P)
        bits = ((q[:, None] >> torch.arange(P)) & 1).bool()  # [2^P, P]
        out = torch.zeros(1 << P, self.prompt.shape[0], dtype=torch.bool)
        out[:, real] = bits
        return out

    def prompt_full(self, who: str) -> tuple[np.ndarray, np.ndarray]:
        """one_step's passes: completion fully masked, prompt subset Q masked, for every Q.
        -> (lp [2^P, n], |Q| [2^P])."""
        if "full" not in self._prompt:
            Q = self.prompt_subsets(who)
            dev = self.completion.device
            prompts = torch.where(Q.to(dev), self.denoiser.mask_id, self.prompt[None])  # [2^P, P]
            hide = self.completion_mask | self.hide
            noised = torch.where(hide, self.denoiser.mask_id, self.completion)  # [L]
            with torch.no_grad():
                lp = completion_logprobs(self.denoiser, prompts[None], self.prompt_mask[None],
                                         self.completion[None], noised[None, None].expand(1, len(Q), -1),
                                         self.max_tokens)[0].double()  # [2^P, L]
            self.n_passes += len(Q)
            self._prompt["full"] = (lp[:, self.completion_mask.bool()].cpu().numpy(), Q.sum(1).numpy())
        return self._prompt["full"]

    def prompt_all(self, who: str) -> tuple[np.ndarray, np.ndarray]:
        """SPG's passes: every (prompt subset Q, masked set M). -> (lp [2^P, 2^n, n], |Q| [2^P])."""
        if "all" not in self._prompt:
            Q = self.prompt_subsets(who)
            need = len(Q) * self.full
            if need > MAX_PROMPT_PASSES:
                raise HarnessError(f"exact moments of {who}: prompt masking times completion masks needs "
                                   f"{len(Q)} x {self.full} = {need} forward passes, more than "
                                   f"{MAX_PROMPT_PASSES}; set p_prompt: 0 for an exact study of longer items")
            dev = self.completion.device
            prompts = torch.where(Q.to(dev), self.denoiser.mask_id, self.prompt[None])  # [2^P, P]
            k = len(Q)
            with torch.no_grad():
                rows = reveal_logprobs(self.denoiser, prompts, self.completion[None].expand(k, -1),
                                       self.completion_mask[None].expand(k, -1),
                                       prompt_mask=self.prompt_mask[None].expand(k, -1),
                                       max_tokens=self.max_tokens, hide=self.hide[None].expand(k, -1))
            self.n_passes += need
            self._prompt["all"] = (np.stack([_by_mask(r, self.n) for r in rows]), Q.sum(1).numpy())
        return self._prompt["all"]


def _fingerprint(denoiser) -> tuple:
    inner = getattr(denoiser, "inner", denoiser)
    module = getattr(inner, "module", None)
    if isinstance(module, torch.nn.Module):
        with torch.no_grad():
            return id(module), float(sum(p.double().sum() for p in module.parameters()))
    return (id(inner),)


def item_table(denoiser, prompt, prompt_mask, completion, completion_mask, *, mask_padding: bool = False,
               max_tokens: int = 65536) -> ItemTable:
    """The (cached) table of one item: prompt [P], prompt_mask [P], completion [L], completion_mask [L].
    `mask_padding`: unscored completion positions (after the first EOS) masked in every pass."""
    cmask = completion_mask.bool()
    hide = ~cmask if mask_padding else torch.zeros_like(cmask)
    key = (_fingerprint(denoiser), tuple(prompt.tolist()), tuple(prompt_mask.bool().tolist()),
           tuple(completion.tolist()), tuple(cmask.tolist()), bool(mask_padding))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        table = _CACHE[key]
        table.denoiser = denoiser  # later prompt passes go through the caller's meter
        return table
    with torch.no_grad():
        table = ItemTable(denoiser, prompt, prompt_mask.bool(), completion, cmask, hide, max_tokens)
    _CACHE[key] = table
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return table


def clear_cache() -> None:
    _CACHE.clear()
