"""The shared loop of the block samplers (LLaDA `generate.py`, docs/methods.md §3) and its pure helpers.

The canvas is the prompt followed by `gen_length` mask tokens, split into semi-autoregressive
blocks of `block_length`. Inside the current block, each step runs one forward pass, proposes a
token at every masked position (argmax of the logits, with Gumbel noise at `temperature` > 0; the
mask token is never proposed) and commits some of them; positions past the current block are
never eligible. Which positions a step commits is the sampler's only variation (`choose`):

- fixed schedule (`BlockSampler`): k tokens per step, the block's masked count spread evenly
  over its steps (earlier steps take the remainder, LLaDA `get_num_transfer_tokens`), the k with
  the highest `confidence` (low_confidence, margin, entropy, random);
- adaptive (`AdaptiveSampler`): a data-dependent count, at least one per step, until the block is
  done (threshold, entropy_bound); rows that finished their block leave the batch, so the meter
  counts only the passes each row really needs.

Options shared by all: classifier-free guidance (`cfg_scale`), KV caches (`cache`, see _cache.py;
rebuilt at each block start and, with `refresh` > 0, every `refresh` steps inside a block; for a
shifted-logit model the query columns start one column earlier, at lo - 1), and
`min_length` (EOS is suppressed at completion positions < min_length). After decoding, the canvas
is cut at the first stop token (the model's `stop_ids`, e.g. LLaDA's EOS 126081 and EOT 126348;
EOS alone when the model declares none); later tokens become EOS padding.

LLaDA's options for its Instruct results (ML-GSAI/LLaDA `generate.py`, `generate`):
- `logits_eos_inf`: EOS is never proposed (its logit is -inf before the argmax).
- `confidence_eos_eot_inf`: after the proposals are drawn, the confidence softmax excludes EOT
  (the model's stop ids other than EOS) and, at temperature 0, EOS too, so a position whose
  proposal is one of them has confidence 0 and is committed after every other proposal. (The
  reference writes the EOS -inf into the noised logits, which are the logits themselves only at
  temperature 0; the harness follows that code, not a cleaner reading.)
- `confidence_dtype`: the dtype of the softmax behind every confidence. The harness default is
  float32; LLaDA's current `generate` uses the logits' own dtype ("model": bfloat16 under bf16
  weights, where many confidences tie and the reference's torch.topk breaks ties in its own
  order), Fast-dLLM's copy and LLaDA's first release float64.
Two documented differences from the references remain: the mask token is never proposed and is
left out of the confidence softmax (LLaDA's and Dream's code keep its probability mass; a trained
model gives it ~0), and equal confidences commit the lower position first (a stable sort; their
torch.topk leaves the order of ties unspecified). Neither changed a token in the parity tests
(tests/samplers/test_parity_decode.py: float32/float64 confidences, real model code).
Fixed-schedule samplers also take `schedule` (harness/samplers/_schedule.py: LLaDA's linear
counts or Dream's int(m·(1 − s/t)); "auto" is the model family's default).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.samplers._cache import check_cache_support, full_pass_with_cache
from harness.samplers._schedule import SCHEDULES, resolve_schedule
from harness.seeding import rand
from harness.text import upto_first_eos
from harness.types import Generation

CONFIDENCE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "model": None}


# -- pure helpers ---------------------------------------------------------------------------------
def transfer_schedule(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masked counts -> [B, steps] tokens to commit per step (LLaDA get_num_transfer_tokens)."""
    base = n_masked // steps  # [B]
    rem = n_masked % steps  # [B]
    k = base[:, None].repeat(1, steps)  # [B, steps]
    k += torch.arange(steps, device=n_masked.device)[None, :] < rem[:, None]
    return k


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """LLaDA's sampling trick: argmax(exp(l) / (-log u)^T) samples from softmax(l / T)-like law.

    Computed in float64 as in the reference (low precision degrades the sample quality)."""
    if temperature <= 0:
        return logits
    u = rand(generator, logits.shape[0], *logits.shape[1:], dtype=torch.float64, device=logits.device)
    return logits.double().exp() / (-torch.log(u)) ** temperature


def guided_logits(denoiser, x, attention_mask, prompt_len: int, cfg_scale: float) -> torch.Tensor:
    """Logits with classifier-free guidance (unconditional pass masks the prompt)."""
    if cfg_scale <= 0:
        return denoiser.logits(x, attention_mask)
    un = x.clone()
    un[:, :prompt_len] = denoiser.mask_id
    both = denoiser.logits(torch.cat([x, un]), None if attention_mask is None else torch.cat([attention_mask] * 2))
    cond, uncond = both.chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def aligned(logits: torch.Tensor, lo: int, hi: int, shift: bool) -> torch.Tensor:
    """[B, T, V] -> [B, hi - lo, V]: the predictions for columns [lo, hi). Shifted-logit models
    (Dream, `shift_logits`) predict column k at position k - 1 (needs lo >= 1: a non-empty prompt)."""
    return logits[:, lo - 1:hi - 1] if shift else logits[:, lo:hi]


def stop_ids(denoiser) -> tuple[int, ...]:
    """The tokens that end a generation: the model's declared `stop_ids`, else its EOS."""
    ids = getattr(denoiser, "stop_ids", None)
    return tuple(int(i) for i in ids) if ids else (int(denoiser.eos_id),)


def upto_first_stop(tokens: torch.Tensor, stops: tuple[int, ...]) -> torch.Tensor:
    """[B, L] -> [B] tokens up to and including the first of any stop id (L if none)."""
    is_stop = torch.isin(tokens, torch.tensor(stops, dtype=tokens.dtype, device=tokens.device))  # [B, L]
    return upto_first_eos(torch.where(is_stop, -1, tokens), -1)


def finish(denoiser, x: torch.Tensor, prompt_len: int, commit_step: torch.Tensor, steps: int) -> Generation:
    """Cut the canvas at the first stop token (later tokens become EOS padding) and decode."""
    tokens = x[:, prompt_len:].clone()  # [B, L]
    gen_len = upto_first_stop(tokens, stop_ids(denoiser))  # [B]
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    tokens[pos >= gen_len[:, None]] = denoiser.eos_id
    text = [denoiser.tokenizer.decode(row.tolist()) for row in tokens]
    return Generation(tokens=tokens, text=text, commit_step=commit_step, gen_len=gen_len, steps=steps)


def select_topk(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, T] scores, [B] counts -> [B, T] bool marking each row's k highest scores.

    Ties break toward the lower position (a stable sort), so results are reproducible."""
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices  # [B, T]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(conf)


def gumbel_topk(conf: torch.Tensor, k: torch.Tensor, temp: float, generator) -> torch.Tensor:
    """[B, T] scores (-inf: ineligible), [B] counts -> k positions drawn without replacement with
    probabilities softmax(conf / temp) (Gumbel-top-k; Dream's `multinomial` at alg_temp)."""
    u = rand(generator, conf.shape[0], conf.shape[1], dtype=torch.float64, device=conf.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))  # [B, T]
    return select_topk(conf.double() / temp + gumbel, k)


def token_entropy(probs: torch.Tensor) -> torch.Tensor:
    """[..., V] probabilities -> [...] entropy in nats (0·log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def _positions_in(built: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """Where the batch rows `rows` sit among the rows `built` that a cache was built for (None: all)."""
    if built is None:
        return rows
    return torch.searchsorted(built, rows)


def rows_of(generator, rows: torch.Tensor | None):
    """The generator(s) of a subset of batch rows: per-row lists are subset, a shared one is kept."""
    if rows is None or not isinstance(generator, (list, tuple)):
        return generator
    return [generator[i] for i in rows.tolist()]


@dataclass(frozen=True)
class Step:
    """What `choose` sees at one step, restricted to the current block's columns and live rows."""

    logits: torch.Tensor  # [B', n] (mask token and suppressed EOS at -inf)
    probs: torch.Tensor  # [B', n, V] softmax of the logits (float32)
    x0: torch.Tensor  # [B', n] proposals
    eligible: torch.Tensor  # [B', n] still masked
    k: torch.Tensor | None  # [B'] fixed-schedule count for this step (None for adaptive samplers)
    step: int  # index of this step within the block
    last: bool  # the block's last allowed step: it must commit every eligible position
    generator: object  # the generator(s) of these rows


# -- the shared loop ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DecodeLoop(abc.ABC):
    """Shared knobs and loop of the block samplers (LLaDA's generate loop + Fast-dLLM caches)."""

    gen_length: int | None = None  # None: the task's length
    block_length: int | None = None  # None: a single block
    temperature: float = 0.0
    cfg_scale: float = 0.0
    cache: Literal["none", "prefix", "dual"] = "none"
    refresh: int = 0  # with a cache: also rebuild it every `refresh` steps inside a block (0: block start only)
    min_length: int = 0  # EOS suppressed at completion positions < min_length
    logits_eos_inf: bool = False  # LLaDA: EOS is never proposed
    confidence_eos_eot_inf: bool = False  # LLaDA: EOT (and EOS at temperature 0) proposals get confidence 0
    confidence_dtype: Literal["float32", "float64", "model"] = "float32"  # "model": the logits' dtype

    adaptive: ClassVar[bool] = False
    # What the report reads (harness/report/samplers.py): the parameters that move a configuration
    # along the compute axis (one figure line per setting of the others).
    budget_knobs: ClassVar[tuple[str, ...]] = ()

    def speed_reference(self) -> bool:
        """Whether speed-ups are measured against this configuration (see LowConfidence)."""
        return False

    def __post_init__(self):
        for name in ("gen_length", "block_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError("temperature and cfg_scale must be >= 0")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if self.cache not in ("none", "prefix", "dual"):
            raise ValueError(f"cache must be one of 'none', 'prefix', 'dual', got {self.cache!r}")
        if self.refresh < 0:
            raise ValueError(f"refresh must be >= 0, got {self.refresh}")
        if self.cache != "none" and self.cfg_scale > 0:
            raise ValueError("KV caches are not supported with classifier-free guidance (cfg_scale > 0)")
        if self.confidence_dtype not in CONFIDENCE_DTYPES:
            raise ValueError(f"confidence_dtype must be one of {', '.join(CONFIDENCE_DTYPES)}, "
                             f"got {self.confidence_dtype!r}")

    def step_count(self, n0: torch.Tensor, m: torch.Tensor, s: int, steps: int, schedule) -> torch.Tensor | None:
        """[B] tokens to commit at step s of a block (None: an adaptive sampler decides)."""
        return None

    def schedule_of(self, denoiser):
        """The step schedule function (fixed-schedule samplers only)."""
        return None

    def step_probs(self, logits: torch.Tensor, denoiser) -> torch.Tensor:
        """[B, n, V] proposal logits -> [B, n, V] the softmax behind the confidences (see the
        module docstring: confidence dtype, LLaDA's confidence_eos_eot_inf)."""
        dtype = logits.dtype if self.confidence_dtype == "model" else CONFIDENCE_DTYPES[self.confidence_dtype]
        if self.confidence_eos_eot_inf:
            eos = int(denoiser.eos_id)
            out = [i for i in stop_ids(denoiser) if i != eos] + ([eos] if self.temperature == 0 else [])
            if out:
                logits = logits.clone()
                logits[..., out] = -torch.inf
        return F.softmax(logits.to(dtype), -1)

    # -- what subclasses define ------------------------------------------------------------------
    @abc.abstractmethod
    def block_steps(self, L: int, n_blocks: int) -> int:
        """Steps per block: exactly that many (fixed schedule) or at most that many (adaptive)."""

    @abc.abstractmethod
    def choose(self, s: Step) -> torch.Tensor:
        """-> [B', n] bool: the positions to commit at this step (a subset of s.eligible)."""

    # -- planning ----------------------------------------------------------------------------------
    def plan(self, gen_length: int) -> tuple[int, int, int]:
        L = self.gen_length or gen_length
        block = min(self.block_length or L, L)
        if L % block:
            raise ValueError(f"gen_length {L} is not a multiple of block_length {block}")
        return L, block, self.block_steps(L, L // block)

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        """Forward passes per sequence, known before running (plan-time budget checks); for an
        adaptive sampler, the most it can take."""
        L, block, per_block = self.plan(gen_length)
        return (L // block) * per_block * (2 if self.cfg_scale > 0 else 1)

    # -- the loop ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32, fixed: torch.Tensor | None = None) -> Generation:
        L, block, per_block = self.plan(gen_length)
        check_cache_support(denoiser, self.cache)
        B, P = prompt.shape
        mask_id = denoiser.mask_id
        x = torch.cat([prompt, torch.full((B, L), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
        if fixed is not None:  # inpainting (IGPO): [B, L] tokens >= 0 start committed (commit step -1)
            x[:, P:] = torch.where(fixed.to(x.device) >= 0, fixed.to(x.device), x[:, P:])
        attn = None if prompt_mask is None else torch.cat([prompt_mask, torch.ones_like(x[:, P:], dtype=torch.bool)], 1)
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=prompt.device)
        row_steps = torch.zeros(B, dtype=torch.long, device=prompt.device)  # passes each row took
        schedule = self.schedule_of(denoiser)
        for b in range(L // block):
            lo, hi = P + b * block, P + (b + 1) * block
            n0 = (x[:, lo:hi] == mask_id).sum(1)  # [B] the block's masked count at its start
            cache = None
            for s in range(per_block):
                rows = None
                if self.adaptive:  # rows whose block is done leave the batch
                    live = (x[:, lo:hi] == mask_id).any(1)
                    if not live.any():
                        break
                    rows = None if live.all() else live.nonzero().squeeze(1)
                xr = x if rows is None else x[rows]
                ar = None if attn is None else (attn if rows is None else attn[rows])
                logits, cache = self._block_logits(denoiser, xr, ar, P, lo, hi, s, cache, rows)
                logits[..., mask_id] = -torch.inf  # never propose the mask token itself
                if self.logits_eos_inf:
                    logits[..., denoiser.eos_id] = -torch.inf
                if self.min_length > 0:
                    early = torch.arange(lo - P, hi - P, device=x.device) < self.min_length  # [n]
                    logits[:, early, denoiser.eos_id] = -torch.inf
                gen = rows_of(generator, rows)
                x0 = add_gumbel_noise(logits, self.temperature, gen).argmax(-1)  # [B', n]
                blk = xr[:, lo:hi]
                eligible = blk == mask_id
                k = self.step_count(n0 if rows is None else n0[rows], eligible.sum(1), s, per_block, schedule)
                step = Step(logits=logits, probs=self.step_probs(logits, denoiser), x0=x0, eligible=eligible,
                            k=k, step=s, last=s == per_block - 1, generator=gen)
                commit = self.choose(step) & eligible  # [B', n]
                new_blk = torch.where(commit, x0, blk)
                steps_r = row_steps if rows is None else row_steps[rows]
                cs = commit_step[:, lo - P:hi - P] if rows is None else commit_step[rows, lo - P:hi - P]
                cs = torch.where(commit, steps_r[:, None].expand_as(cs), cs)
                if rows is None:
                    x[:, lo:hi] = new_blk
                    commit_step[:, lo - P:hi - P] = cs
                    row_steps += 1
                else:
                    x[rows, lo:hi] = new_blk
                    commit_step[rows, lo - P:hi - P] = cs
                    row_steps[rows] += 1
        return finish(denoiser, x, P, commit_step, int(row_steps.max()) if B else 0)

    def _block_logits(self, denoiser, x, attn, P: int, lo: int, hi: int, s: int, cache, rows):
        """Logits [B', hi - lo, V] of the current block, and the block's KV cache (if any).

        Without a cache: a full pass (with guidance when cfg_scale > 0). With one: a full pass
        that builds the cache at the block's first step, cached passes after it. A shifted-logit
        model reads the block's predictions at [lo - 1, hi - 1), so its query columns start at
        lo - 1 (a committed column, recomputed) and the cache keeps [0, lo - 1) (see _cache.py)."""
        T = x.shape[1]
        dev = x.device
        shift = bool(getattr(denoiser, "shift_logits", False))
        if self.cache == "none":
            logits = guided_logits(denoiser, x, attn, P, self.cfg_scale)
            return aligned(logits, lo, hi, shift).clone(), None
        qlo = lo - shift  # the first query column: where column lo's prediction sits
        if s == 0 or (self.refresh and s % self.refresh == 0):
            # A full pass that (re)builds the cache of the live rows `rows` (None: all rows). Rows
            # only leave a block, never join it, so later live rows are a subset of these.
            keep = torch.arange(qlo, device=dev)
            if self.cache == "dual":
                keep = torch.cat([keep, torch.arange(hi, T, device=dev)])
            full, kv = full_pass_with_cache(denoiser, x, attn, keep)
            return aligned(full, lo, hi, shift).clone(), (kv, rows)
        kv, built_rows = cache
        cols = torch.arange(qlo, T if self.cache == "prefix" else hi, device=dev)  # [Tq] query columns
        part = kv if rows is None else kv.take(_positions_in(built_rows, rows))
        out = denoiser.logits_cached(x[:, cols], part, positions=cols, attention_mask=attn)  # [B', Tq, V]
        return out[:, : hi - lo].clone(), cache  # columns [qlo, qlo + hi - lo): the block's predictions


@dataclass(frozen=True, kw_only=True)
class BlockSampler(DecodeLoop):
    """Fixed schedule: `steps` passes in all, k tokens per step, the k most `confidence`-scored."""

    steps: int | None = None  # None: one token per step
    schedule: Literal["auto", "linear", "dream"] = "auto"  # tokens per step (_schedule.py); auto: the model's

    budget_knobs: ClassVar[tuple[str, ...]] = ("steps",)

    def __post_init__(self):
        super().__post_init__()
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.schedule != "auto" and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of auto, {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def schedule_of(self, denoiser):
        return resolve_schedule(self.schedule, denoiser)

    def step_count(self, n0, m, s, steps, schedule):
        return schedule(n0, m, s, steps)

    def block_steps(self, L: int, n_blocks: int) -> int:
        steps = self.steps or L
        if steps % n_blocks:
            raise ValueError(f"steps {steps} is not a multiple of the number of blocks {n_blocks}")
        return steps // n_blocks

    def confidence(self, probs: torch.Tensor, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """[B, n, V], [B, n] -> [B, n] score; higher is committed first. Default: p(x0) (LLaDA)."""
        return torch.gather(probs, -1, x0[..., None]).squeeze(-1)

    def select(self, conf: torch.Tensor, k: torch.Tensor, generator) -> torch.Tensor:
        return select_topk(conf, k)

    def choose(self, s: Step) -> torch.Tensor:
        conf = self.confidence(s.probs, s.x0, s.generator)
        conf = torch.where(s.eligible, conf, torch.full_like(conf, -torch.inf))
        return self.select(conf, s.k, s.generator)


@dataclass(frozen=True, kw_only=True)
class AdaptiveSampler(DecodeLoop):
    """Adaptive count: at least one token per step until the block is done; `max_steps` caps the
    passes per sequence (its share per block; the block's last allowed step commits the rest)."""

    max_steps: int | None = None  # None: at most one pass per token

    adaptive: ClassVar[bool] = True
    budget_knobs: ClassVar[tuple[str, ...]] = ("max_steps",)

    def __post_init__(self):
        super().__post_init__()
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def block_steps(self, L: int, n_blocks: int) -> int:
        if self.max_steps is None:
            return L // n_blocks
        if self.max_steps % n_blocks:
            raise ValueError(f"max_steps {self.max_steps} is not a multiple of the number of blocks {n_blocks}")
        return min(self.max_steps // n_blocks, L // n_blocks)
