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
shifted-logit model the query columns start one column earlier, at lo - 1), approximate caches
that change the output (`cache: dkv`, dKV-Cache-Decode, horseee/dKV-Cache, `refresh` its
cache_reloading_step; `cache: dkv_prefill`, dKV-Cache-Prefill, the same repository, shifted-logit
models (Dream) only, no `refresh`; `cache: dkv_pd`, dKV-Cache-PD, the same, Dream only, `refresh` its
cache_steps; `cache: dkv_greedy`, dKV-Cache-Greedy, the same repository, `refresh` its
cache_reloading_step and `window_size`, with a sampler whose choice is known before the pass,
`random`; `cache: dllm_cache`, dLLM-Cache, maomaocun/dLLM-cache, `prompt_refresh` Kp,
`refresh` Kr, `refresh_ratio` rho; see _approx_cache.py, on models with a layer-by-layer view; `cache: d2cache`,
d2Cache, Kamichanw/d2Cache, `rollout_p`, `current_k`, `sigma`, `inflate_w`; see _d2cache.py, on models whose
layer view also gives attention weights), the certainty prior (`prior_sigma`, fixed-schedule samplers: see
below), and
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
counts or Dream's int(m·(1 − s/t)); "auto" is the model family's default), and `prior_sigma`, d2Cache's
certainty-prior guided decoding (Jiang et al., arXiv 2509.23094; Kamichanw/d2Cache
src/generation/vanilla.py `generate_step`, its `sigma`): each step's scores are the sampler's
confidences times the certainty density of the completion's decoded/undecoded pattern at the step's
input (harness/samplers/_d2cache.py `certainty_density`, a Gaussian kernel of width sigma over the whole
completion, not only the block), so masked columns next to decoded ones come first (smaller sigma:
closer to left to right). The reference pairs it with `cache: d2cache` (sigma 10, one block) but it
is a decoding rule of its own, usable with any cache.

Sampling options (all samplers): `top_k` / `top_p` filter the logits before proposing; `sampling`
"gumbel" is LLaDA's rule above, "multinomial" SDAR's `sample_with_temperature_topk_topp` (logits /
temperature, top-k, top-p, softmax, one `torch.multinomial` draw per block position with the row's
generator; the confidence is the drawn token's probability under that distribution; the mask
token keeps its probability there, as in SDAR's code; temperature 0: the argmax); `tie_break`
"position" (the stable sort above) or "topk" (`torch.topk`'s choice among equal confidences, as
SDAR's code: greedy top_k 1 or a sharp top-p makes many confidences exactly 1). "auto" takes the
model family's `decode_defaults` (SDAR/TraDo declare multinomial and topk).

Block models (a denoiser with an integer `block_size`, harness/models/block_attention.py): the
loop decodes as SDAR's / dLLM-RL's `block_diffusion_generate` (JetAstra/SDAR and Gen-Verse/dLLM-RL
`generate.py`); the block model is a model property, and every sampler's rule (`choose`) applies
unchanged:
- blocks are the model's (`block_length` must be unset or equal) and aligned to absolute
  positions from the row's first real token: the prompt's last partial block is decoded together
  with the first completion tokens, and a row's completion has ceil((P + L) / b)·b − P tokens (the
  reference's output length; L need not be a multiple of b). Rows of a left-padded batch are laid
  out so that their decode blocks share columns, and give exactly what they give alone;
- steps: `steps` (fixed schedule) and `max_steps` (adaptive) are per generation, spread over the
  ceil(L / b) blocks of the generation (denoising_steps per block = steps·b / L); the linear
  schedule counts the block's length b, not its masked count (get_num_transfer_tokens(block_length,
  steps)), and a block whose masks are gone stops early (rows leave the batch, as in the adaptive
  samplers);
- `cache: prefix` is the reference's exact cache of finished blocks: one full prefill pass over
  the prompt's whole blocks (rows with P >= b), cached denoising passes over the current block, and
  after each block one store pass that appends its keys/values (a cached pass; a full pass over
  [0, hi) for a model whose `logits_cached` has no `store`, and for the first block of a row with
  no prefill). `cache: none` runs full passes over [0, hi) (exactly the same tokens; later blocks
  are invisible anyway). NFE is thus the reference's count: prefill + denoising steps + one store
  per block. `dual`, `refresh` and `cfg_scale` are refused (nothing after the block is visible;
  the cache is exact; the reference has no guidance);
- after each block, a row whose completion holds one of the model's stop ids decodes no further
  block when the model family declares `decode_defaults["stop_after_block"]` (SDAR/TraDo: the
  reference's stopping_criteria_idx, which their evaluation passes); other block models decode
  every block, as BD3-LM's fixed-length sampler and LLaDA's semi-autoregressive loop do (so a block
  model and a full-attention one spend the same passes at the same steps). The completion is cut
  at the first stop id either way;
- `low_confidence` with `steps` (denoising_steps per block = steps·b / L) is the reference's
  low_confidence_static; `threshold` with tau = confidence_threshold is its low_confidence_dynamic
  when a block takes b steps (each step commits everything above tau, else the single most
  confident token: the reference's num_transfer is 1), and with `floor: schedule` and `max_steps`
  = steps for fewer steps per block (at least the schedule's num_transfer per step: everything
  above tau when that many are, else the num_transfer most confident). Documented differences:
  when the reference's count exceeds the masks left (fewer steps than b and a prompt ending inside
  a block, or dynamic leaving fewer masks than num_transfer) it overwrites committed or prompt
  tokens with fresh samples; here the count is capped at the masks left. The reference's tau test
  is strict (>), the harness's >= (they differ only for a confidence exactly equal to tau).
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.models.block_attention import block_size_of
from harness.samplers._approx_cache import (
    APPROX_CACHES,
    DLLM_PROMPT_REFRESH,
    DLLM_REFRESH_RATIO,
    SHIFTED_ONLY_CACHES,
    DLLMState,
    check_layerwise_support,
    dkv_greedy_logits,
    dkv_logits,
    dllm_logits,
)
from harness.samplers._cache import check_cache_support, full_pass_with_cache, store_pass
from harness.samplers._d2cache import (
    D2CACHE_DEFAULTS,
    D2Params,
    D2State,
    certainty_density,
    check_attention_weights,
    d2_logits,
)
from harness.samplers._schedule import SCHEDULES, linear_schedule, resolve_schedule
from harness.seeding import rand
from harness.text import upto_first_eos
from harness.types import Generation, HarnessError

CONFIDENCE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "model": None}
SAMPLINGS = ("auto", "gumbel", "multinomial")
CacheKind = Literal["none", "prefix", "dual", "dkv", "dkv_prefill", "dkv_pd", "dkv_greedy", "dllm_cache",
                    "d2cache"]


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


def check_sampling(temperature: float, top_p: float = 1.0, top_k: int = 0) -> None:
    """The proposal knobs every sampler shares: temperature >= 0, top_p in (0, 1], top_k an integer >= 0
    (ValueError naming the one that is not)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits below the k-th largest of their row become -inf (k <= 0: unchanged; ties with the
    k-th largest are kept), as SDAR's `top_k_logits`."""
    if k <= 0:
        return logits
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
    return torch.where(logits < kth, torch.full_like(logits, -torch.inf), logits)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (p >= 1: unchanged): sorted descending, a token is dropped when the
    probability mass strictly before it already exceeds p (the most likely token always stays),
    as SDAR's `top_p_logits`."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    over = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > p
    drop = torch.zeros_like(over)
    drop[..., 1:] = over[..., :-1]
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -torch.inf)


def inverse_cdf_draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[B, n, V] probabilities (unnormalised allowed), [B, n] uniforms in [0, 1) -> [B, n] the first
    index whose cumulative mass exceeds u times the total (float64)."""
    cdf = probs.double().cumsum(-1)  # [B, n, V]
    pick = torch.searchsorted(cdf, (u.double() * cdf[..., -1])[..., None], right=True).squeeze(-1)
    return pick.clamp_max(probs.shape[-1] - 1)


def multinomial_rows(probs: torch.Tensor, generator) -> torch.Tensor:
    """[B, n, V] probabilities -> [B, n] one draw per position: SDAR's `sample_with_temperature_topk_topp`
    for a batch of one (`torch.multinomial` row by row with per-row generators, one call over the
    whole batch with a shared one) when the generator lives on the probabilities' device. A CPU
    generator with GPU probabilities (the runner's generators) draws by inverse CDF from the
    generator's uniforms, on the GPU: the same distribution without copying [B, n, V] to the CPU
    (torch.multinomial there draws one exponential per vocabulary entry; the reference's GPU draws
    come from the global CUDA RNG and cannot be reproduced anyway)."""
    if generator is None:
        raise ValueError("a stochastic step needs an explicit torch.Generator (or one per row), got None")
    B, n, V = probs.shape
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is not None and len(gens) != B:
        raise ValueError(f"got {len(gens)} generators for a batch of {B}")
    gen_device = (gens[0].device if gens else probs.device) if gens is not None else generator.device
    if gen_device.type != probs.device.type:
        return inverse_cdf_draw(probs, rand(generator, B, n, dtype=torch.float64, device=probs.device))
    if gens is not None:
        rows = [torch.multinomial(probs[r], 1, generator=g).view(n) for r, g in enumerate(gens)]
        return torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.long, device=probs.device)
    return torch.multinomial(probs.reshape(B * n, V), 1, generator=generator).view(B, n)


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


def finish(denoiser, x: torch.Tensor, prompt_len: int, commit_step: torch.Tensor, steps: int,
           lengths: torch.Tensor | None = None, commit_conf: torch.Tensor | None = None) -> Generation:
    """Cut the canvas at the first stop token (later tokens become EOS padding) and decode.
    `lengths` [B]: each row's own completion length (block models: rows end at different columns);
    a row without a stop token ends there. `commit_conf` [B, L]: each token's probability at commit."""
    tokens = x[:, prompt_len:].clone()  # [B, L]
    gen_len = upto_first_stop(tokens, stop_ids(denoiser))  # [B]
    if lengths is not None:
        gen_len = torch.minimum(gen_len, lengths.to(gen_len.device))
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    tokens[pos >= gen_len[:, None]] = denoiser.eos_id
    text = [denoiser.tokenizer.decode(row.tolist()) for row in tokens]
    return Generation(tokens=tokens, text=text, commit_step=commit_step, gen_len=gen_len, steps=steps,
                      commit_conf=commit_conf)


def committed_prob(step: "Step") -> torch.Tensor:
    """[B', n] the probability the step's distribution gives its proposal x0 (a token's confidence)."""
    return step.probs.gather(-1, step.x0[..., None].to(step.probs.device)).squeeze(-1).float()


def masked_canvas(prompt: torch.Tensor, prompt_mask: torch.Tensor | None, L: int,
                  mask_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoding canvas [B, P + L]: the prompt, then L mask tokens; and its attention mask (the
    prompt's padding mask, completion columns real), None when the prompt has none."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, L), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    attn = None if prompt_mask is None else torch.cat([prompt_mask, torch.ones_like(x[:, P:], dtype=torch.bool)], 1)
    return x, attn


def steps_plan(L: int, block_length: int | None, steps: int | None) -> tuple[int, int, int]:
    """(L, block, steps per block) of a sampler with its own loop that spends `steps` passes (None: one
    per token) spread evenly over blocks of `block_length` (None: one block); ValueError when they do
    not divide."""
    block = min(block_length or L, L)
    if L % block:
        raise ValueError(f"gen_length {L} is not a multiple of block_length {block}")
    steps = steps or L
    if steps % (L // block):
        raise ValueError(f"steps {steps} is not a multiple of the number of blocks {L // block}")
    return L, block, steps // (L // block)


def select_topk(conf: torch.Tensor, k: torch.Tensor, ties: str = "position") -> torch.Tensor:
    """[B, T] scores, [B] counts -> [B, T] bool marking each row's k highest (finite) scores.

    ties "position": equal scores break toward the lower position (a stable sort), so results are
    reproducible; "topk": row by row, the positions `torch.topk(row, k)` returns (SDAR's and
    dLLM-RL's selection; its order among equal scores is the kernel's, deterministic for a given
    row length on a given device)."""
    if ties == "topk":
        out = torch.zeros_like(conf, dtype=torch.bool)
        for r in range(conf.shape[0]):
            n = min(int(k[r]), conf.shape[1])
            if n > 0:
                out[r, torch.topk(conf[r], n).indices] = True
        return out & torch.isfinite(conf)
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
    ties: str = "position"  # how select_topk breaks equal scores (the loop's tie_break)
    k_schedule: torch.Tensor | None = None  # [B'] the linear schedule's count at this step (any sampler)
    density: torch.Tensor | None = None  # [B', n] certainty density of the block's columns (prior_sigma), else None
    scores: torch.Tensor | None = None  # [B', n] the sampler's scores drawn before the pass (dkv_greedy), else None


# -- the shared loop ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DecodeLoop(abc.ABC):
    """Shared knobs and loop of the block samplers (LLaDA's generate loop + Fast-dLLM caches; on a
    block model, SDAR's block_diffusion_generate: see the module docstring, "Block models")."""

    gen_length: int | None = None  # None: the task's length
    block_length: int | None = None  # None: a single block (block models: the model's block_size)
    temperature: float = 0.0
    cfg_scale: float = 0.0
    cache: CacheKind = "none"  # prefix, dual: Fast-dLLM; approximate: dkv(_prefill, _pd, _greedy), dllm_cache, d2cache
    refresh: int = 0  # prefix/dual: interval in a block (0: never); dkv(_pd, _greedy) cache_reloading_step; dllm Kr
    window_size: int | None = None  # dkv_greedy only: masked neighbours recomputed per committed column (None: 0)
    prompt_refresh: int | None = None  # dllm_cache only: Kp, the prompt's refresh interval in passes (None: 50)
    refresh_ratio: float | None = None  # dllm_cache only: rho, response share recomputed in between (None: 0.25)
    rollout_p: float | None = None  # d2cache only: attention-rollout nucleus mass of extra query columns (None: 0.1)
    current_k: int | None = None  # d2cache only: most masked columns recomputed per pass (None: 32)
    sigma: float | None = None  # d2cache only: certainty-density kernel width of its query choice (None: 10)
    inflate_w: int | None = None  # d2cache only: gap between chosen columns filled in (None: 0, off)
    min_length: int = 0  # EOS suppressed at completion positions < min_length
    logits_eos_inf: bool = False  # LLaDA: EOS is never proposed
    confidence_eos_eot_inf: bool = False  # LLaDA: EOT (and EOS at temperature 0) proposals get confidence 0
    confidence_dtype: Literal["float32", "float64", "model"] = "float32"  # "model": the logits' dtype
    sampling: Literal["auto", "gumbel", "multinomial"] = "auto"  # how proposals are drawn; auto: the model's
    top_k: int = 0  # keep the k most likely tokens before proposing (0: all)
    top_p: float = 1.0  # nucleus filter before proposing (1: all)
    tie_break: Literal["auto", "position", "topk"] = "auto"  # equal confidences; auto: the model's, else position
    prior_sigma: float | None = None  # certainty prior (d2Cache's generation sigma): scores × density; None: off

    adaptive: ClassVar[bool] = False
    # Whether `confidence` ignores the logits (a random draw), so a step's choice is known before its
    # pass: what `cache: dkv_greedy` needs
    choice_before_pass: ClassVar[bool] = False
    # What the report reads (harness/report/samplers.py): the parameters that move a configuration
    # along the compute axis (one figure line per setting of the others).
    budget_knobs: ClassVar[tuple[str, ...]] = ()

    def speed_reference(self) -> bool:
        """Whether speed-ups are measured against this configuration (see LowConfidence)."""
        return False

    def required_capabilities(self) -> tuple[str, ...]:
        """What this configuration needs of the model, checked at plan time (harness/config.py
        `missing_capabilities`): the class's `requires`, plus the layer-by-layer view for the
        approximate caches (and its attention weights for d2cache, shifted logits for dKV-Cache's Dream-only
        Prefill and PD variants)."""
        needs = list(getattr(type(self), "requires", ()))
        if self.cache in APPROX_CACHES:
            needs.append("logits_layerwise")
        if self.cache == "d2cache":
            needs.append("attention_weights")
        if self.cache in SHIFTED_ONLY_CACHES:
            needs.append("shifted_logits")
        return tuple(needs)

    def __post_init__(self):
        for name in ("gen_length", "block_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError("temperature and cfg_scale must be >= 0")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if self.cache not in ("none", "prefix", "dual", *APPROX_CACHES):
            raise ValueError("cache must be one of 'none', 'prefix', 'dual', 'dkv', 'dkv_prefill', 'dkv_pd', "
                             "'dkv_greedy', 'dllm_cache', "
                             "'d2cache', "
                             f"got {self.cache!r}")
        if self.refresh < 0:
            raise ValueError(f"refresh must be >= 0, got {self.refresh}")
        if self.cache == "dllm_cache" and self.refresh < 1:
            raise ValueError("cache 'dllm_cache' needs refresh >= 1 (Kr: the response is recomputed every `refresh` "
                             f"passes), got {self.refresh}")
        if self.cache != "dllm_cache" and (self.prompt_refresh is not None or self.refresh_ratio is not None):
            raise ValueError(f"prompt_refresh and refresh_ratio are dllm_cache settings; cache is {self.cache!r}")
        if self.cache != "dkv_greedy" and self.window_size is not None:
            raise ValueError(f"window_size is a dkv_greedy setting; cache is {self.cache!r}")
        if self.window_size is not None and (isinstance(self.window_size, bool) or not isinstance(self.window_size, int)
                                             or self.window_size < 0):
            raise ValueError(f"window_size must be an integer >= 0, got {self.window_size!r}")
        if self.cache == "dkv_greedy" and self.refresh < 1:
            raise ValueError("cache 'dkv_greedy' needs refresh >= 1 (its cache_reloading_step: every `refresh`-th step "
                             "of a block is a full pass; the reference's llada_generate.py uses 2), got "
                             f"{self.refresh}")
        if self.cache == "dkv_greedy" and not type(self).choice_before_pass:
            raise ValueError(f"cache 'dkv_greedy' computes only the columns a step will commit, so it needs a sampler "
                             f"whose choice is known before the pass (random); {type(self).__name__} chooses from "
                             "the logits (dKV-Cache-Greedy's reference refuses low_confidence too): use cache dkv")
        d2 = {k: getattr(self, k) for k in D2CACHE_DEFAULTS if getattr(self, k) is not None}
        if self.cache != "d2cache" and d2:
            raise ValueError(f"{', '.join(d2)}: d2cache settings; cache is {self.cache!r}")
        if self.cache == "dkv_prefill" and self.refresh:
            raise ValueError(f"cache 'dkv_prefill' has no refresh interval (dKV-Cache-Prefill keeps the block's first "
                             f"pass's cache to the block's end; its reference ignores --cache-steps), got refresh "
                             f"{self.refresh}")
        if self.cache == "dkv_pd" and self.refresh < 1:
            raise ValueError("cache 'dkv_pd' needs refresh >= 1 (its cache_steps: every `refresh`-th step of a block "
                             "recomputes all but the block-start cache; the reference's `i % cache_steps` needs "
                             f"cache_steps >= 1), got {self.refresh}")
        if self.cache == "d2cache" and self.refresh:
            raise ValueError(f"cache 'd2cache' has no refresh interval (its first pass is the only full one), got "
                             f"refresh {self.refresh}")
        if self.rollout_p is not None and not 0 <= self.rollout_p <= 1:
            raise ValueError(f"rollout_p must be in [0, 1], got {self.rollout_p}")
        if self.current_k is not None and (isinstance(self.current_k, bool) or self.current_k < 1):
            raise ValueError(f"current_k must be an integer >= 1, got {self.current_k!r}")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.inflate_w is not None and (isinstance(self.inflate_w, bool) or self.inflate_w < 0):
            raise ValueError(f"inflate_w must be an integer >= 0, got {self.inflate_w!r}")
        if self.prompt_refresh is not None and self.prompt_refresh < 1:
            raise ValueError(f"prompt_refresh must be >= 1, got {self.prompt_refresh}")
        if self.refresh_ratio is not None and not 0 <= self.refresh_ratio <= 1:
            raise ValueError(f"refresh_ratio must be in [0, 1], got {self.refresh_ratio}")
        if self.cache != "none" and self.cfg_scale > 0:
            raise ValueError("KV caches are not supported with classifier-free guidance (cfg_scale > 0)")
        if self.confidence_dtype not in CONFIDENCE_DTYPES:
            raise ValueError(f"confidence_dtype must be one of {', '.join(CONFIDENCE_DTYPES)}, "
                             f"got {self.confidence_dtype!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        check_sampling(0.0, self.top_p, self.top_k)  # temperature: checked with cfg_scale above
        if self.tie_break not in ("auto", "position", "topk"):
            raise ValueError(f"tie_break must be one of auto, position, topk, got {self.tie_break!r}")
        if self.prior_sigma is not None:
            if not self.prior_sigma > 0:
                raise ValueError(f"prior_sigma must be > 0, got {self.prior_sigma}")
            if not isinstance(self, BlockSampler) or type(self).choose is not BlockSampler.choose:
                raise ValueError("prior_sigma (the certainty prior) weighs the confidences of a fixed-schedule "
                                 f"sampler that ranks them (low_confidence, margin, entropy, ...); "
                                 f"{type(self).__name__} chooses by its own rule")

    def d2_params(self) -> D2Params:
        """d2Cache's settings, the reference's defaults where unset."""
        return D2Params(**{k: d if getattr(self, k) is None else getattr(self, k) for k, d in D2CACHE_DEFAULTS.items()})

    def step_count(self, n0: torch.Tensor, m: torch.Tensor, s: int, steps: int, schedule) -> torch.Tensor | None:
        """[B] tokens to commit at step s of a block (None: an adaptive sampler decides)."""
        return None

    def schedule_of(self, denoiser):
        """The step schedule function (fixed-schedule samplers only)."""
        return None

    def sampling_of(self, denoiser) -> str:
        """"gumbel" or "multinomial" ("auto": the model family's `decode_defaults`, else gumbel)."""
        if self.sampling != "auto":
            return self.sampling
        return (getattr(denoiser, "decode_defaults", None) or {}).get("sampling", "gumbel")

    def ties_of(self, denoiser) -> str:
        """"position" or "topk" ("auto": the model family's `decode_defaults`, else position)."""
        if self.tie_break != "auto":
            return self.tie_break
        return (getattr(denoiser, "decode_defaults", None) or {}).get("tie_break", "position")

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

    def propose(self, logits: torch.Tensor, denoiser, generator, early: torch.Tensor | None,
                sampling: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B', n, V] logits of the block -> (logits as the step sees them, probs, proposals x0 [B', n]).

        gumbel (LLaDA): the mask token ruled out, argmax of the logits with Gumbel noise at
        `temperature`; probs = the confidence softmax of the (unscaled) logits. multinomial (SDAR's
        `sample_with_temperature_topk_topp`): logits / temperature, then top-k and top-p, softmax,
        one `torch.multinomial` draw per position; probs = that distribution (its x0 entry is
        SDAR's confidence), the mask token keeps its probability as in SDAR's code (a trained model
        gives it ~0; a drawn mask leaves the position masked); temperature 0 takes the argmax.
        `early` [B', n]: positions where EOS is suppressed (min_length)."""
        mask_id = denoiser.mask_id
        if sampling == "gumbel":
            logits[..., mask_id] = -torch.inf  # never propose the mask token itself
        if self.logits_eos_inf:
            logits[..., denoiser.eos_id] = -torch.inf
        if early is not None:
            logits[..., denoiser.eos_id] = torch.where(early, -torch.inf, logits[..., denoiser.eos_id])
        if sampling == "gumbel":
            logits = top_p_filter(top_k_filter(logits, self.top_k), self.top_p)
            x0 = add_gumbel_noise(logits, self.temperature, generator).argmax(-1)  # [B', n]
            return logits, self.step_probs(logits, denoiser), x0
        scaled = logits / self.temperature if self.temperature not in (0.0, 1.0) else logits
        scaled = top_p_filter(top_k_filter(scaled, self.top_k), self.top_p)
        dtype = scaled.dtype if self.confidence_dtype == "model" else CONFIDENCE_DTYPES[self.confidence_dtype]
        probs = F.softmax(scaled.to(dtype), -1)  # [B', n, V]
        x0 = scaled.argmax(-1) if self.temperature == 0 else multinomial_rows(probs, generator)
        conf_probs = self.step_probs(scaled, denoiser) if self.confidence_eos_eot_inf else probs
        return scaled, conf_probs, x0

    # -- what subclasses define ------------------------------------------------------------------
    @abc.abstractmethod
    def block_steps(self, L: int, n_blocks: int) -> int:
        """Steps per block: exactly that many (fixed schedule) or at most that many (adaptive)."""

    @abc.abstractmethod
    def choose(self, s: Step) -> torch.Tensor:
        """-> [B', n] bool: the positions to commit at this step (a subset of s.eligible)."""

    # -- planning ----------------------------------------------------------------------------------
    def plan(self, gen_length: int, block_size: int | None = None) -> tuple[int, int, int]:
        """(L, block, steps per block). With a block model's `block_size` the blocks are the model's
        (`block_length` must be unset or equal) and L need not be a multiple of it."""
        L = self.gen_length or gen_length
        if block_size is not None:
            if self.block_length is not None and self.block_length != block_size:
                raise HarnessError(f"sampler block_length {self.block_length}: the model is a block-diffusion model "
                                   f"with block_size {block_size}, which sets the blocks (leave block_length unset, "
                                   "or set the model's block_size)")
            return L, block_size, self.block_steps(-(-L // block_size) * block_size, -(-L // block_size))
        block = min(self.block_length or L, L)
        if L % block:
            raise ValueError(f"gen_length {L} is not a multiple of block_length {block}")
        return L, block, self.block_steps(L, L // block)

    def max_nfe_per_sequence(self, gen_length: int, block_size: int | None = None) -> int:
        """Forward passes per sequence, known before running (plan-time budget checks); for an
        adaptive sampler, the most it can take.

        `block_size`: the model's, when it is a block-diffusion model (known at plan time from its
        spec: harness/config.py). The bound then covers every prompt length: the prompt's last
        partial block is decoded with the generation, so up to ceil((L + b - 1) / b) blocks of at
        most `steps per block` passes each, and with `cache: prefix` one prefill pass plus one store
        pass per block (see "Block models"). A row that stops early takes fewer."""
        if block_size is not None:
            L, block, per_block = self.plan(gen_length, block_size)
            if self.cache in ("dual", *APPROX_CACHES) or self.refresh or self.cfg_scale > 0:
                raise ValueError(f"a block-diffusion model (block_size {block_size}) decodes with cache 'none' or "
                                 "'prefix', refresh 0 and cfg_scale 0")
            n_blocks = -(-(L + block - 1) // block)
            return n_blocks * per_block + (1 + n_blocks if self.cache == "prefix" else 0)
        L, block, per_block = self.plan(gen_length)
        return (L // block) * per_block * (2 if self.cfg_scale > 0 else 1)

    # -- the loop ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32, fixed: torch.Tensor | None = None, record_steps: bool = False) -> Generation:
        """Decode; `record_steps`: also hand out the trajectory (`Generation.trajectory`: every step's
        canvas, full prediction and its probabilities), for objectives that reward intermediate
        predictions (MDPO). Recording draws nothing: the tokens and commit steps are those of a plain call.
        It is offered where every step predicts the whole completion: one block, a fixed schedule, no
        block model (else HarnessError)."""
        if record_steps:
            self._check_recordable(denoiser, gen_length)
        if block_size_of(denoiser) is not None:
            return self._decode_block_model(denoiser, prompt, generator=generator, prompt_mask=prompt_mask,
                                            gen_length=gen_length, fixed=fixed)
        L, block, per_block = self.plan(gen_length)
        if self.cache in APPROX_CACHES:
            check_layerwise_support(denoiser, self.cache)
        if self.cache == "d2cache":
            check_attention_weights(denoiser)
        check_cache_support(denoiser, "prefix" if self.cache in ("dkv", "dkv_prefill", "dkv_pd", "dkv_greedy") else
                            "none" if self.cache in ("dllm_cache", "d2cache") else self.cache)  # dkv's full passes
        # build a cache
        sampling = self.sampling_of(denoiser)
        B, P = prompt.shape
        mask_id = denoiser.mask_id
        x, attn = masked_canvas(prompt, prompt_mask, L, mask_id)
        if fixed is not None:  # inpainting (IGPO): [B, L] tokens >= 0 start committed (commit step -1)
            x[:, P:] = torch.where(fixed.to(x.device) >= 0, fixed.to(x.device), x[:, P:])
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=prompt.device)
        commit_conf = torch.full((B, L), float("nan"), device=prompt.device)
        row_steps = torch.zeros(B, dtype=torch.long, device=prompt.device)  # passes each row took
        schedule = self.schedule_of(denoiser)
        cache = None
        states, preds, confs = [], [], []  # the trajectory (record_steps)
        for b in range(L // block):
            lo, hi = P + b * block, P + (b + 1) * block
            n0 = (x[:, lo:hi] == mask_id).sum(1)  # [B] the block's masked count at its start
            # dLLM-Cache's and d2Cache's state live for the whole generation, the others' per block
            cache = ((cache or DLLMState(B)) if self.cache == "dllm_cache" else
                     (cache or D2State(B)) if self.cache == "d2cache" else None)
            for s in range(per_block):
                rows = None
                if self.adaptive:  # rows whose block is done leave the batch
                    live = (x[:, lo:hi] == mask_id).any(1)
                    if not live.any():
                        break
                    rows = None if live.all() else live.nonzero().squeeze(1)
                xr = x if rows is None else x[rows]
                ar = None if attn is None else (attn if rows is None else attn[rows])
                density = None
                if self.prior_sigma is not None:  # over the whole completion at the step's input
                    density = certainty_density(xr[:, P:] != mask_id, self.prior_sigma)[:, lo - P:hi - P]
                scores = planned = None
                if self.cache == "d2cache":  # it plans its next pass from the whole canvas after each step
                    logits = d2_logits(denoiser, x, rows, ar, P, lo, hi, cache, self.d2_params(), mask_id)
                elif self.cache == "dkv_greedy":  # the step's choice first (it ignores the logits), then the pass
                    scores, planned = self._choice_before_pass(denoiser, x[:, lo:hi], n0, s, per_block, schedule,
                                                               generator, density)
                    logits, cache = dkv_greedy_logits(denoiser, x, attn, lo, hi, s, cache, planned, scores,
                                                      self.refresh, self.window_size or 0, mask_id)
                else:
                    logits, cache = self._block_logits(denoiser, xr, ar, P, lo, hi, s, cache, rows)
                early = None
                if self.min_length > 0:
                    early = (torch.arange(lo - P, hi - P, device=x.device) < self.min_length)[None].expand(
                        logits.shape[:2])  # [B', n]
                commit, x0, st = self._step(denoiser, logits, xr[:, lo:hi], n0 if rows is None else n0[rows], s,
                                            per_block, schedule, rows_of(generator, rows), early, sampling, density,
                                            scores=scores)
                if planned is not None and not torch.equal(commit, planned):
                    raise HarnessError(f"cache 'dkv_greedy': {type(self).__name__} committed other columns than it "
                                       "chose before the pass (its choice must not depend on the logits)")
                conf = committed_prob(st)
                if record_steps:  # one block, fixed schedule: every row steps, the block is the completion
                    states.append(x[:, P:].clone())
                    preds.append(torch.where(st.eligible, x0, x[:, lo:hi]))
                    confs.append(torch.where(st.eligible, conf, torch.full_like(conf, float("nan"))))
                self._apply(x, commit_step, row_steps, rows, commit, x0, lo, hi, P, commit_conf, conf)
        gen = finish(denoiser, x, P, commit_step, int(row_steps.max()) if B else 0, commit_conf=commit_conf)
        if not record_steps:
            return gen
        return dataclasses.replace(gen, trajectory={"states": torch.stack(states, 1), "preds": torch.stack(preds, 1),
                                                    "confs": torch.stack(confs, 1)})

    def _check_recordable(self, denoiser, gen_length: int) -> None:
        """Refuse `record_steps` where a step does not predict the whole completion (HarnessError)."""
        name = getattr(self, "registry_name", type(self).__name__)
        if self.cache in ("dkv_greedy", "d2cache"):
            raise HarnessError(f"sampler {name!r}: record_steps with cache {self.cache!r}: its cached passes compute "
                               "only some of the masked columns, so the others have no prediction to record")
        if block_size_of(denoiser) is not None:
            raise HarnessError(f"sampler {name!r}: record_steps (the denoising trajectory) is not offered on a "
                               "block-diffusion model, whose steps predict one block at a time")
        if self.adaptive:
            raise HarnessError(f"sampler {name!r}: record_steps needs a fixed schedule (every row takes the same "
                               "steps); an adaptive sampler's rows stop at different steps")
        L, block, _ = self.plan(gen_length)
        if block != L:
            raise HarnessError(f"sampler {name!r}: record_steps needs one block (block_length unset or equal to "
                               f"gen_length {L}), got block_length {block}: a step proposes tokens for its own "
                               "block only, not the whole completion")

    def _step(self, denoiser, logits, blk, n0, s: int, per_block: int, schedule, gen, early, sampling, density=None,
              scores=None):
        """One step on the current block's columns: -> (commit [B', n] bool, proposals x0 [B', n], Step).
        `density` [B', n]: the certainty prior's weights (prior_sigma), else None; `scores` [B', n]: the
        sampler's scores drawn before the pass (dkv_greedy), else None."""
        logits, probs, x0 = self.propose(logits, denoiser, gen, early, sampling)
        eligible = blk == denoiser.mask_id
        k = self.step_count(n0, eligible.sum(1), s, per_block, schedule)
        step = Step(logits=logits, probs=probs, x0=x0, eligible=eligible, k=k, step=s, last=s == per_block - 1,
                    generator=gen, ties=self.ties_of(denoiser), k_schedule=linear_schedule(n0, None, s, per_block),
                    density=density, scores=scores)
        return self.choose(step) & eligible, x0, step

    def _choice_before_pass(self, denoiser, blk, n0, s: int, per_block: int, schedule, gen, density):
        """-> (scores [B, n], the columns [B, n] step s will commit): a `choice_before_pass` sampler's
        draw, made before the step's pass (dkv_greedy computes only those columns and their
        neighbours); the step then commits from these same scores."""
        eligible = blk == denoiser.mask_id
        scores = self.confidence(None, blk, gen)
        k = self.step_count(n0, eligible.sum(1), s, per_block, schedule)
        step = Step(logits=None, probs=None, x0=blk, eligible=eligible, k=k, step=s, last=s == per_block - 1,
                    generator=gen, ties=self.ties_of(denoiser), k_schedule=linear_schedule(n0, None, s, per_block),
                    density=density, scores=scores)
        return scores, self.choose(step) & eligible

    @staticmethod
    def _apply(x, commit_step, row_steps, rows, commit, x0, lo: int, hi: int, c0: int,
               commit_conf: torch.Tensor | None = None, conf: torch.Tensor | None = None) -> None:
        """Write a step's commits into the canvas x (columns [lo, hi)), commit_step and commit_conf
        (canvas column c - c0; `conf` [B', n]: the step's confidence in each proposal), and count one
        pass for the rows (None: all)."""
        sel = slice(None) if rows is None else rows
        new_blk = torch.where(commit, x0, x[sel, lo:hi])
        cs = commit_step[sel, lo - c0:hi - c0]
        cs = torch.where(commit, row_steps[sel][:, None].expand_as(cs), cs)
        x[sel, lo:hi] = new_blk
        commit_step[sel, lo - c0:hi - c0] = cs
        if commit_conf is not None and conf is not None:
            cc = commit_conf[sel, lo - c0:hi - c0]
            commit_conf[sel, lo - c0:hi - c0] = torch.where(commit, conf.to(cc.dtype), cc)
        row_steps[sel] += 1

    # -- block models (SDAR's block_diffusion_generate) ---------------------------------------------
    def _decode_block_model(self, denoiser, prompt, *, generator, prompt_mask, gen_length, fixed) -> Generation:
        """Decode on a block model (see the module docstring, "Block models"): rows are split into
        the rows whose prompt fills at least one block (they have a prefill) and the others, each
        part decoded by `_block_rows`; the results are laid side by side in the batch's order."""
        bs = block_size_of(denoiser)
        L, _, per_block = self.plan(gen_length, bs)
        if self.cache == "dual":
            raise HarnessError("cache 'dual' on a block-diffusion model: later blocks are never visible, so there is "
                               "nothing after the block to cache; use cache: prefix")
        if self.cache in APPROX_CACHES:
            raise HarnessError(f"cache {self.cache!r} on a block-diffusion model: its exact cache of finished blocks "
                               "leaves nothing to approximate; use cache: prefix")
        if self.refresh:
            raise HarnessError("refresh on a block-diffusion model: its cache of finished blocks is exact and is "
                               "never rebuilt; use refresh: 0")
        if self.cfg_scale > 0:
            raise HarnessError("cfg_scale > 0 on a block-diffusion model is not supported (block_diffusion_generate "
                               "has no guidance)")
        if self.prior_sigma is not None:
            raise HarnessError("prior_sigma on a block-diffusion model is not supported (its blocks are decoded "
                               "one at a time; the certainty prior reads the whole completion)")
        check_cache_support(denoiser, self.cache)
        B, P = prompt.shape
        pm = torch.ones_like(prompt, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        n_real = pm.sum(1)  # [B]
        if fixed is not None and fixed.shape[1] < L:
            raise HarnessError(f"fixed tokens: {fixed.shape[1]} columns for a generation of {L}")
        parts = []
        for sel in (n_real >= bs, n_real < bs):
            rows = sel.nonzero().squeeze(1)
            if rows.numel():
                gens = rows_of(generator, rows)
                fx = None if fixed is None else fixed[rows]
                parts.append((rows, self._block_rows(denoiser, prompt[rows], pm[rows], gens, L, bs, per_block, fx)))
        width = max((int(t.shape[1]) for _, (t, *_) in parts), default=L)
        tokens = torch.full((B, width), int(denoiser.eos_id), dtype=prompt.dtype, device=prompt.device)
        commit = torch.full((B, width), -1, dtype=torch.long, device=prompt.device)
        conf = torch.full((B, width), float("nan"), device=prompt.device)
        lengths = torch.zeros(B, dtype=torch.long, device=prompt.device)
        steps = torch.zeros(B, dtype=torch.long, device=prompt.device)
        for rows, (t, c, n, st, cf) in parts:
            tokens[rows, :t.shape[1]] = t
            commit[rows, :t.shape[1]] = c
            conf[rows, :t.shape[1]] = cf
            lengths[rows] = n
            steps[rows] = st
        return finish(denoiser, tokens, 0, commit, int(steps.max()) if B else 0, lengths=lengths, commit_conf=conf)

    def _block_rows(self, denoiser, prompt, pm, generator, L: int, bs: int, per_block: int, fixed):
        """Rows that all have a prefill (or all have none). Canvas: each row's prompt placed so that
        its whole blocks end at column C0 (a multiple of bs; left-padded before), its last partial
        block and the generation from C0 on; the decode blocks [C0 + k bs, C0 + (k + 1) bs) are then
        the same columns for every row. -> (tokens [g, W'] of each row's completion, commit steps,
        [g] completion lengths, [g] passes, confidences at commit)."""
        g, P = prompt.shape
        dev = prompt.device
        mask_id = denoiser.mask_id
        n_real = pm.sum(1)  # [g]
        pre, part = (n_real // bs) * bs, n_real % bs  # whole prompt blocks, the partial block's prompt tokens
        n_blocks = -(-(part + L) // bs)  # [g] decode blocks of each row (as block_diffusion_generate)
        C0, NB = int(pre.max()), int(n_blocks.max())
        W = C0 + NB * bs
        x = torch.full((g, W), mask_id, dtype=prompt.dtype, device=dev)
        attn = torch.zeros((g, W), dtype=torch.bool, device=dev)
        start = C0 + part  # [g] the first completion column of each row
        for r in range(g):
            real = prompt[r][pm[r]]
            lo = C0 - int(pre[r])
            x[r, lo:lo + real.numel()] = real
            attn[r, lo:] = True
            if fixed is not None:  # inpainting: [L] tokens >= 0 start committed
                f = fixed[r, :L].to(dev)
                cols = slice(int(start[r]), int(start[r]) + L)
                x[r, cols] = torch.where(f >= 0, f, x[r, cols])
        commit_step = torch.full((g, W), -1, dtype=torch.long, device=dev)
        commit_conf = torch.full((g, W), float("nan"), device=dev)
        row_steps = torch.zeros(g, dtype=torch.long, device=dev)
        sampling = self.sampling_of(denoiser)
        schedule = self.schedule_of(denoiser)
        stops = torch.tensor(stop_ids(denoiser), device=dev)
        stop_after_block = bool((getattr(denoiser, "decode_defaults", None) or {}).get("stop_after_block", False))
        cached = self.cache == "prefix"
        cache, cache_rows = None, None
        if cached and C0 > 0:  # prefill: the prompt's whole blocks (one full pass)
            _, cache = full_pass_with_cache(denoiser, x[:, :C0], attn[:, :C0], torch.arange(C0, device=dev))
            cache_rows = torch.arange(g, device=dev)
        alive = torch.ones(g, dtype=torch.bool, device=dev)
        for k in range(NB):
            lo, hi = C0 + k * bs, C0 + (k + 1) * bs
            in_block = (alive & (n_blocks > k)).nonzero().squeeze(1)  # rows decoding this block
            if not in_block.numel():
                break
            n0 = torch.full((g,), bs, dtype=torch.long, device=dev)  # the schedule counts the block's length
            for s in range(per_block):
                live = in_block[(x[in_block, lo:hi] == mask_id).any(1)]  # rows whose block has a MASK left
                if not live.numel():
                    break
                if not cached:
                    logits = denoiser.logits(x[live, :hi], attn[live, :hi])[:, lo:hi]
                elif cache is None:  # no prefill and the first block: the block alone, a full pass
                    logits = denoiser.logits(x[live, lo:hi], attn[live, lo:hi])
                else:
                    part_cache = cache.take(_positions_in(cache_rows, live))
                    logits = denoiser.logits_cached(x[live, lo:hi], part_cache, attention_mask=attn[live, :hi],
                                                    positions=torch.arange(lo, hi, device=dev))
                logits = logits.clone()
                early = None
                if self.min_length > 0:
                    idx = torch.arange(lo, hi, device=dev)[None, :] - start[live][:, None]  # completion index
                    early = (idx >= 0) & (idx < self.min_length)
                commit, x0, st = self._step(denoiser, logits, x[live, lo:hi], n0[live], s, per_block, schedule,
                                            rows_of(generator, live), early, sampling)
                self._apply(x, commit_step, row_steps, live, commit, x0, lo, hi, 0, commit_conf, committed_prob(st))
            if cached:  # the store pass: the finished block's keys/values join the cache
                cache = store_pass(denoiser, x[in_block, :hi], attn[in_block, :hi], lo,
                                   None if cache is None else cache.take(_positions_in(cache_rows, in_block)))
                cache_rows = in_block
            if stop_after_block:
                gen_cols = torch.arange(C0, hi, device=dev)[None, :] >= start[in_block][:, None]
                hit = (torch.isin(x[in_block, C0:hi], stops) & gen_cols).any(1)
                alive[in_block[hit]] = False  # a stop id anywhere in the completion: no more blocks
        length = n_blocks * bs - part  # [g] each row's completion length (block_diffusion_generate's rule)
        width = int(length.max())
        tokens = torch.full((g, width), int(denoiser.eos_id), dtype=prompt.dtype, device=dev)
        commits = torch.full((g, width), -1, dtype=torch.long, device=dev)
        confs = torch.full((g, width), float("nan"), device=dev)
        for r in range(g):
            cols = slice(int(start[r]), int(start[r]) + int(length[r]))
            tokens[r, :int(length[r])] = x[r, cols]
            commits[r, :int(length[r])] = commit_step[r, cols]
            confs[r, :int(length[r])] = commit_conf[r, cols]
        return tokens, commits, length, row_steps, confs

    def _block_logits(self, denoiser, x, attn, P: int, lo: int, hi: int, s: int, cache, rows):
        """Logits [B', hi - lo, V] of the current block, and the block's KV cache (if any).

        Without a cache: a full pass (with guidance when cfg_scale > 0). With one: a full pass
        that builds the cache at the block's first step, cached passes after it. A shifted-logit
        model reads the block's predictions at [lo - 1, hi - 1), so its query columns start at
        lo - 1 (a committed column, recomputed) and the cache keeps [0, lo - 1) (see _cache.py)."""
        T = x.shape[1]
        dev = x.device
        if self.cache in ("dkv", "dkv_prefill", "dkv_pd"):
            return dkv_logits(denoiser, x, attn, lo, hi, s, cache, rows, self.refresh, denoiser.mask_id,
                              variant={"dkv": "decode", "dkv_prefill": "prefill", "dkv_pd": "pd"}[self.cache])
        if self.cache == "dllm_cache":
            kp = DLLM_PROMPT_REFRESH if self.prompt_refresh is None else self.prompt_refresh
            rho = DLLM_REFRESH_RATIO if self.refresh_ratio is None else self.refresh_ratio
            return dllm_logits(denoiser, x, attn, P, lo, hi, cache, rows, kp, self.refresh, rho), cache
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

    def select(self, conf: torch.Tensor, k: torch.Tensor, generator, ties: str = "position") -> torch.Tensor:
        return select_topk(conf, k, ties)

    def choose(self, s: Step) -> torch.Tensor:
        conf = self.confidence(s.probs, s.x0, s.generator) if s.scores is None else s.scores
        if s.density is not None:  # the certainty prior (vanilla.py generate_step: scores = confidence · density)
            conf = conf * s.density.to(conf.dtype)
        conf = torch.where(s.eligible, conf, torch.full_like(conf, -torch.inf))
        return self.select(conf, s.k, s.generator, s.ties)


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
