"""`wino`: Wide-In, Narrow-Out revocable decoding (Hong et al., arXiv 2507.18578; Feng-Hong/WINO-DLLM,
`LLaDA/decoding.py`, `decoding_wino`).

Semi-autoregressive blocks of `block_length` (the reference's 128), each decoded until no mask is
left. Every step is ONE forward pass over an extended canvas: the canvas [prompt ; completion]
followed by a *shadow block*, `block_length` extra mask tokens whose position ids repeat those of
the current block. Attention (True: attend):

- canvas queries see every canvas column and no shadow column (the pass over the canvas is the
  plain one);
- shadow query i sees every canvas column except its twin, block position i, and every shadow
  column. Its prediction is therefore the model's distribution of block position i given the
  rest of the canvas with that position masked: the verification of the token committed there.

From the pass's logits a step
1. drafts ("wide in"): among the block's masked positions, the proposals (argmax, Gumbel noise at
   `temperature`) whose probability is strictly above `threshold` are committed, at most
   max_accept = min(max(floor(accept_frac·m), accept_min), accept_max) of them, m being the block's
   masked count (the reference's 0.7, 5 and 20), the most confident first; when none is above the
   threshold, the single most confident one is;
2. verifies ("narrow out"): only when the draft committed more than one token, every token that
   was committed before this step and whose shadow probability (the probability the shadow column
   gives the token sitting at its twin) is strictly below `threshold_back` is re-masked; when at
   least as many qualify as the previous step committed (a), only the a - 1 least confident are
   (the previous count starts at `first_remask_cap`, the reference's 30, at each block start, when
   nothing in the block has been committed yet). Tokens committed in this step are verified from
   the next pass on.

Termination: a step that re-masks r tokens follows one that committed a >= r + 1, so every block
finishes within `block_length` passes; the plan-time bound is gen_length passes per sequence.

Cost: each pass processes prompt + gen_length + block_length columns per row (the shadow block is
real work); the meter counts it as one full pass of that width (`logits_pattern`), so NFE counts
passes and the tokens/FLOPs columns include the shadow block. Rows whose block is done leave the
batch, so each row is charged only its own passes.

Needs a denoiser with `logits_pattern` (an explicit attention pattern and position ids,
harness/models/block_attention.py), full attention and unshifted logits: the tiny MDLM and the
native LLaDA (`impl: native`). The reference runs on its own copy of LLaDA's modeling file, which
takes position ids; the public LLaDA file does not, so LLaDA's `impl: remote` is refused at plan time.

Defaults are `decoding_wino`'s (threshold 0.6, threshold_back 0.9, block_length 128); the
reference's evaluation configs (`LLaDA/configs/*.yaml`) keep threshold_back 0.9 and block_length
128 at gen_length 256 and set the threshold per task (GSM8K 0.6, MATH-500 0.7, HumanEval 0.7, MBPP
0.8, ARC 0.5, Countdown 0.5, Sudoku 0.7). The reference is written for a batch of one; here each
row of a batch runs its own copy of that loop (its own counts and history). Documented differences,
shared with the other samplers (harness/samplers/_base.py): the mask token is never proposed and is
left out of both softmaxes (the reference keeps it; a trained model gives it ~0), equal
confidences pick the lower position first (the reference's torch.topk leaves ties unspecified), and
the stochastic draws come from the row's generator, not the global RNG. Confidences are float64, as
in the reference.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.block_attention import block_size_of, positions
from harness.registry import SAMPLERS
from harness.samplers._base import add_gumbel_noise, finish, masked_canvas, rows_of, select_topk
from harness.types import HarnessError


def shadow_pattern(key_real: torch.Tensor, lo: int, n: int) -> torch.Tensor:
    """[B, T] real-token mask of the canvas, current block [lo, lo + n) -> [B, 1, T + n, T + n] bool
    attention pattern (True: attend) of the canvas followed by its shadow block (module docstring)."""
    B, T = key_real.shape
    S = T + n
    allowed = torch.zeros(B, 1, S, S, dtype=torch.bool, device=key_real.device)
    allowed[:, 0, :, :T] = key_real[:, None, :]  # every query sees the real canvas columns ...
    idx = torch.arange(n, device=key_real.device)
    allowed[:, 0, T + idx, lo + idx] = False  # ... except a shadow query its twin,
    allowed[:, 0, T:, T:] = True  # and shadow queries see the whole shadow block
    return allowed


@SAMPLERS.register("wino")
@dataclass(frozen=True, kw_only=True)
class Wino:
    """WINO: threshold drafting of many tokens per pass, verified by a shadow block in the same pass (revocable)."""

    gen_length: int | None = None  # None: the task's length
    block_length: int = 128  # semi-autoregressive block (capped at gen_length); the shadow block has this width
    temperature: float = 0.0  # Gumbel noise on the draft proposals (0: argmax)
    threshold: float = 0.6  # draft: commit masked proposals whose probability is strictly above this
    threshold_back: float = 0.9  # verify: re-mask committed tokens whose shadow probability is strictly below this
    accept_frac: float = 0.7  # draft cap: at most max(floor(accept_frac·masked), accept_min) tokens a step ...
    accept_min: int = 5  # ... the cap's floor ...
    accept_max: int = 20  # ... and its ceiling
    first_remask_cap: int = 30  # the previous step's commit count assumed at a block start (caps re-masking)
    min_length: int = 0  # EOS is never proposed at completion positions < min_length

    budget_knobs: ClassVar[tuple[str, ...]] = ("threshold",)  # a lower threshold commits more per pass
    # checked against the model's `provides` at plan time (harness/config.py)
    requires: ClassVar[tuple[str, ...]] = ("logits_pattern", "full_attention")

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        if self.gen_length is not None and self.gen_length < 1:
            raise ValueError(f"gen_length must be >= 1, got {self.gen_length}")
        if self.block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {self.block_length}")
        if self.temperature < 0 or self.min_length < 0:
            raise ValueError("temperature and min_length must be >= 0")
        if not 0 <= self.threshold <= 1 or not 0 <= self.threshold_back <= 1:
            raise ValueError(f"threshold and threshold_back must be in [0, 1], got {self.threshold} and "
                             f"{self.threshold_back}")
        if not 0 <= self.accept_frac <= 1:
            raise ValueError(f"accept_frac must be in [0, 1], got {self.accept_frac}")
        if not 1 <= self.accept_min <= self.accept_max:
            raise ValueError(f"need 1 <= accept_min <= accept_max, got {self.accept_min} and {self.accept_max}")
        if self.first_remask_cap < 1:
            raise ValueError(f"first_remask_cap must be >= 1, got {self.first_remask_cap}")

    def plan(self, gen_length: int) -> tuple[int, int]:
        """(L, block)."""
        L = self.gen_length or gen_length
        block = min(self.block_length, L)
        if L % block:
            raise ValueError(f"gen_length {L} is not a multiple of block_length {block}")
        return L, block

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        """At most one pass per completion token (see the module docstring, "Termination")."""
        return self.plan(gen_length)[0]

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32):
        if block_size_of(denoiser) is not None:
            raise HarnessError("wino's shadow block needs full attention; a block-diffusion model decodes block by "
                               "block (use low_confidence or threshold)")
        if getattr(denoiser, "shift_logits", False):
            raise HarnessError("wino reads each column's own prediction; a shifted-logit model (Dream) predicts "
                               "column k at k - 1, which the shadow block's twin columns do not follow")
        if not callable(getattr(getattr(denoiser, "inner", denoiser), "logits_pattern", None)):
            raise HarnessError("wino needs a model with logits_pattern (an explicit attention pattern and position "
                               "ids, harness/models/block_attention.py) for its shadow block; this model has none")
        L, n = self.plan(gen_length)
        B, P = prompt.shape
        dev = prompt.device
        mask_id = denoiser.mask_id
        T = P + L
        x, _ = masked_canvas(prompt, None, L, mask_id)
        real = torch.ones(B, T, dtype=torch.bool, device=dev)
        if prompt_mask is not None:
            real[:, :P] = prompt_mask.bool().to(dev)
        pos = positions(None if prompt_mask is None else real, B, T, dev)  # [B, T] counting real tokens
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        commit_conf = torch.full((B, L), float("nan"), device=dev)  # probability at the last commit, NaN if masked
        row_steps = torch.zeros(B, dtype=torch.long, device=dev)
        early = torch.arange(L, device=dev) < self.min_length  # [L]
        for b in range(L // n):
            lo, hi = P + b * n, P + (b + 1) * n
            allowed = shadow_pattern(real, lo, n)  # [B, 1, T + n, T + n]
            pos_ext = torch.cat([pos, pos[:, lo:hi]], 1)  # the shadow block repeats the block's positions
            decided = x[:, lo:hi] != mask_id  # [B, n] committed before this step (the reference's unmask index)
            last_accept = torch.full((B,), self.first_remask_cap, dtype=torch.long, device=dev)
            for _ in range(n):  # at most n passes per block (module docstring, "Termination")
                live = (x[:, lo:hi] == mask_id).any(1)
                if not live.any():
                    break
                rows = live.nonzero().squeeze(1)
                ext = torch.cat([x[rows], torch.full((len(rows), n), mask_id, dtype=x.dtype, device=dev)], 1)
                logits = denoiser.logits_pattern(ext, allowed[rows], pos_ext[rows])  # [B', T + n, V]
                commit, remask, x0, accept, conf = self._step(logits[:, lo:hi], logits[:, T:], x[rows, lo:hi],
                                                        decided[rows], last_accept[rows], early[lo - P:hi - P],
                                                        mask_id, denoiser.eos_id, rows_of(generator, rows))
                blk = torch.where(commit, x0, x[rows, lo:hi])
                x[rows, lo:hi] = torch.where(remask, torch.full_like(blk, mask_id), blk)
                cs = torch.where(commit, row_steps[rows, None], commit_step[rows, lo - P:hi - P])
                commit_step[rows, lo - P:hi - P] = torch.where(remask, torch.full_like(cs, -1), cs)
                cc = torch.where(commit, conf.float(), commit_conf[rows, lo - P:hi - P])
                commit_conf[rows, lo - P:hi - P] = torch.where(remask, float("nan"), cc)
                decided[rows] = (decided[rows] | commit) & ~remask
                last_accept[rows] = accept
                row_steps[rows] += 1
            if (x[:, lo:hi] == mask_id).any():  # cannot happen (the bound above); never return masks silently
                raise RuntimeError(f"wino: block {b} still has masks after {n} passes")
        gen = finish(denoiser, x, P, commit_step, int(row_steps.max()) if B else 0, commit_conf=commit_conf)
        return dataclasses.replace(gen, row_steps=row_steps)

    def _step(self, main, shadow, blk, decided, last_accept, early, mask_id: int, eos_id: int, generator):
        """One step from the block's logits `main` [B', n, V] and the shadow block's `shadow` [B', n, V],
        the block's tokens `blk` [B', n] and what was committed before (`decided` [B', n]) ->
        (commit [B', n], remask [B', n], proposals x0 [B', n], [B'] committed count, the proposals'
        probabilities [B', n] (−inf at positions committed before))."""
        masked = blk == mask_id
        main = main.clone()
        main[..., mask_id] = -torch.inf  # never propose the mask token itself
        if early.any():
            main[:, early, eos_id] = -torch.inf
        x0 = add_gumbel_noise(main, self.temperature, generator).argmax(-1)  # [B', n]
        conf = torch.gather(F.softmax(main.double(), -1), -1, x0[..., None]).squeeze(-1)
        conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
        m = masked.sum(1)  # [B']
        cap = (m.double() * self.accept_frac).floor().long().clamp(self.accept_min, self.accept_max)  # [B']
        above = conf > self.threshold
        n_above = above.sum(1)
        commit = torch.where((n_above > cap)[:, None], select_topk(conf, cap), above)
        commit = torch.where((n_above == 0)[:, None], select_topk(conf, torch.ones_like(m)), commit)
        accept = commit.sum(1)  # [B']
        sh = shadow.clone()
        sh[..., mask_id] = -torch.inf
        back = torch.gather(F.softmax(sh.double(), -1), -1, blk[..., None]).squeeze(-1)  # p(committed token)
        back = torch.where(decided, back, torch.full_like(back, torch.inf))
        remask = back < self.threshold_back
        capped = remask.sum(1) >= last_accept  # re-mask only the last_accept - 1 least confident
        remask = torch.where(capped[:, None], select_topk(-back, (last_accept - 1).clamp_min(0)), remask)
        remask &= (accept > 1)[:, None] & decided
        return commit & masked, remask, x0, accept, conf
