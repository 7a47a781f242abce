"""`uniform_entropy_bound`: DiffusionGemma's own generation loop for uniform-noise models.

The loop of `DiffusionGemmaForBlockDiffusion.generate` (transformers,
models/diffusion_gemma/generation_diffusion_gemma.py: `generate`, `_denoising_step`,
`EntropyBoundSampler`, `StableAndConfidentStoppingCriteria`, `LinearTemperatureScheduleLogitsProcessor`,
`_finalize_canvas`), with the harness's explicit generators and meter:

- ceil(gen_length / W) canvases of the model's full `canvas_length` W, one after the other (a
  gen_length below W or not a multiple of it still denoises whole canvases and returns all their
  tokens, as generate does). The context (prompt, then each finished canvas) goes into the
  model's KV cache once; every denoising step is one decoder pass over the canvas reading it.
- A canvas starts from uniformly random tokens. At step s (cur = max_steps - s counts down) the
  logits are divided by τ = t_min + (t_max - t_min)·cur/max_steps; a token is sampled at every
  position from their softmax; the positions with the lowest entropy whose Σ H - max H <= `bound`
  take their sample (EB-sampler, arXiv 2505.24857), every other position a fresh random token.
- Self-conditioning (on by default, as the model's generate always uses it): each step's
  temperature-scaled logits go into the next step's pass; a canvas's first pass has none.
- A row's canvas is done when its argmax was the same for `stability` consecutive steps (the
  history starts at a -1 sentinel, so never at the first step) and its mean entropy is below
  `confidence`; its canvas is then frozen and becomes its last argmax prediction. A row whose
  canvas holds a stop id (the model's `stop_ids`: its generation config's EOS ids, one or a list)
  has ended: its later canvases are EOS padding. Generation stops when every row has ended or
  after ceil(gen_length / W) canvases.
- The knobs max_steps, bound, t_min, t_max, confidence and stability default (None) to what
  generate reads: the checkpoint's generation_config.json (the model's `generation_defaults`),
  then generate's global defaults (48, 0.1, 0.4, 0.8, 0.005, 1). Ranges as generate validates
  them (temperatures >= 0 and confidence > 0, no upper limit), plus t_max > 0: t_min = t_max = 0
  would divide the logits by zero, so it is refused when the suite is planned (or, set by a
  generation_config.json, when the sampler starts).
- Each row's own step count (generate's `decoder_forward_passes`: passes while it was neither done
  nor ended) is returned as `row_steps`; records state it, so they do not depend on the batch.

Which rows a pass runs (`batch`):
- "live" (default): only the rows still denoising their canvas; rows that are done leave the
  batch and cost nothing, and so do rows that ended in an earlier canvas when each row has its own
  generator (what the runner, the RL loop and the lm-eval bridge pass). The meter's NFE is then
  generate's own per-row pass count (`decoder_forward_passes`). With one shared generator, rows
  that ended stay in the batch until their canvas is done: generate keeps denoising them, its step
  count depends on them, and every later random number with it; those passes are counted.
- "generate": every pass runs the whole batch, as generate does (done rows fed their frozen canvas
  and self-conditioning input, ended rows denoised and waited for, ended rows' context padded):
  the model sees exactly generate's batches, and the meter counts every row of every pass.

Randomness. With one torch.Generator, the draws are generate's, in its order and shapes: at each
canvas start randint(0, V, [B, W]); at each step multinomial over [B·W, V] probabilities, then
randint(0, V, [B, W]) -- for every row, live or not (a done row's draws are discarded). With
generate's global RNG replaced by the same generator:
- batch="generate" gives generate's tokens bit for bit, in every case;
- batch="live" gives them whenever the model's output for a row does not depend on the batch it is
  in. It can, in the last bits (kernels pick their blocking, and DiffusionGemma's experts group
  tokens, by batch shape: ~1e-5 on the tiny test model), which can flip a decision at very low
  temperature. On the tests' stock-setting cases and 100 seeds at B=2 over three canvases the
  tokens are identical (tests/models/test_diffusion_gemma_parity.py, test_diffusion_gemma_options.py).
With one generator per row, each row draws only while it is live, as generate run on that row
alone would: rows do not depend on each other's draws. A generator that is not on the model's
device seeds one that is (once per call), so a GPU run draws on the GPU as generate does.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.registry import SAMPLERS
from harness.samplers._base import finish, stop_ids
from harness.types import Generation, HarnessError

# generate's global defaults (DiffusionGemmaGenerationConfig._get_default_generation_params), in this
# sampler's names: max_denoising_steps, entropy_bound, t_min, t_max, confidence_threshold, stability_threshold
GENERATE_DEFAULTS = {"max_steps": 48, "bound": 0.1, "t_min": 0.4, "t_max": 0.8, "confidence": 0.005, "stability": 1}


def check_knobs(k: dict, where: str) -> None:
    """The knobs (None: not set yet) as generate accepts them (`DiffusionGemmaGenerationConfig.validate`:
    t_min, t_max >= 0 with no upper limit, confidence > 0 with none), plus what makes the loop run:
    t_max > 0 (a zero temperature divides the logits by zero), t_min <= t_max."""
    bad = []
    if k["max_steps"] is not None and k["max_steps"] < 1:
        bad.append(f"max_steps >= 1 (got {k['max_steps']})")
    if k["bound"] is not None and k["bound"] <= 0:
        bad.append(f"bound > 0 (got {k['bound']})")
    if k["confidence"] is not None and k["confidence"] <= 0:
        bad.append(f"confidence > 0 (got {k['confidence']})")
    if k["stability"] is not None and k["stability"] < 0:
        bad.append(f"stability >= 0 (got {k['stability']})")
    if k["t_min"] is not None and k["t_min"] < 0:
        bad.append(f"t_min >= 0 (got {k['t_min']})")
    if k["t_max"] is not None and k["t_max"] <= 0:
        bad.append(f"t_max > 0 (got {k['t_max']}: the temperature τ divides the logits, and t_min = t_max = 0 "
                   "divides by zero)")
    if k["t_min"] is not None and k["t_max"] is not None and k["t_min"] > k["t_max"]:
        bad.append(f"t_min <= t_max (got {k['t_min']} > {k['t_max']})")
    if bad:
        raise ValueError(f"{where}: need " + "; ".join(bad))


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] logits -> [...] entropy in nats, computed as torch.distributions.Categorical does
    (generate's acceptance and stopping tests use it: the same bits, the same decisions)."""
    return torch.distributions.Categorical(logits=logits, validate_args=False).entropy()


def entropy_bound_accept(h: torch.Tensor, bound: float) -> torch.Tensor:
    """[B, W] entropies -> [B, W] bool: the lowest-entropy positions with Σ H - max H <= bound
    (transformers' EntropyBoundSampler.accept_canvas: the same sort, so ties break the same way)."""
    sorted_h, order = torch.sort(h, dim=-1, descending=False)  # [B, W]
    keep = torch.cumsum(sorted_h, -1) - sorted_h <= bound  # Σ of the strictly earlier entropies
    return torch.scatter(torch.zeros_like(keep), -1, order, keep)


def temperature(t_min: float, t_max: float, cur: int, steps: int, device) -> torch.Tensor:
    """τ at the step with `cur` steps remaining, as LinearTemperatureScheduleLogitsProcessor
    computes it (an int32 tensor step: float32 arithmetic, the same rounding)."""
    cur_t = torch.tensor(cur, dtype=torch.int32, device=device)
    return t_min + ((t_max - t_min) * (cur_t / steps))


def after_eos(canvas: torch.Tensor, ended: torch.Tensor, eos, pad: int) -> torch.Tensor:
    """canvas [B, W] as generate leaves it in its context (_finalize_canvas): pad after a row's first
    EOS (`eos`: one id or a tensor of ids), and all pad in rows that had ended in an earlier canvas."""
    is_eos = torch.isin(canvas, torch.as_tensor(eos, device=canvas.device))
    n_eos = is_eos.cumsum(-1)  # [B, W]
    later = (n_eos > 0) & ~((n_eos == 1) & is_eos)
    return torch.where(later | ended[:, None], torch.full_like(canvas, pad), canvas)


def on_device(generator, device: torch.device):
    """The generator(s) to draw with on `device`: itself if it lives there, else a generator on
    `device` seeded from it (one draw), so draws happen where generate makes them."""
    if isinstance(generator, (list, tuple)):
        return [on_device(g, device) for g in generator]
    if generator is None:  # library code never falls back to the global RNG (docs/architecture.md, convention 3)
        raise ValueError("uniform_entropy_bound needs an explicit torch.Generator (or one per row), got None")
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device).manual_seed(seed)


class Draws:
    """generate's random draws, from one shared generator (all B rows every time, as generate
    draws them) or from one generator per row (each row only while it is live)."""

    def __init__(self, generator, B: int, W: int, V: int, device: torch.device):
        self.g, self.B, self.W, self.V, self.device = on_device(generator, device), B, W, V, device
        self.shared = not isinstance(self.g, list)
        if not self.shared and len(self.g) != B:
            raise ValueError(f"got {len(self.g)} generators for a batch of {B}")

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        """Uniform random tokens [len(rows), W] (EntropyBoundSampler.initialize_canvas)."""
        if self.shared:
            return torch.randint(0, self.V, (self.B, self.W), generator=self.g, device=self.device)[rows]
        return torch.cat([torch.randint(0, self.V, (1, self.W), generator=self.g[i], device=self.device)
                          for i in rows.tolist()])

    def sample(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """probs [b, W, V] of the live rows -> one token per position [b, W] (generate's multinomial
        over the whole batch; a row that is not live samples from a placeholder, discarded)."""
        if self.shared:
            full = probs.new_ones(self.B, self.W, self.V)
            full[rows] = probs
            drawn = torch.multinomial(full.view(-1, self.V), num_samples=1, generator=self.g)
            return drawn.view(self.B, self.W)[rows]
        return torch.stack([torch.multinomial(p, num_samples=1, generator=self.g[i]).squeeze(-1)
                            for p, i in zip(probs, rows.tolist())])


@SAMPLERS.register("uniform_entropy_bound")
@dataclass(frozen=True, kw_only=True)
class UniformEntropyBound:
    """Uniform-noise models (diffusion_gemma): the model's own generate loop (entropy-bound accept / re-noise,
    self-conditioning, stable-and-confident stop) per canvas, over a KV-cached context."""

    noise: ClassVar[str] = "uniform"  # the models it applies to (plan-time check in config.py)
    # None (the default of the six knobs below): the checkpoint's generation_config.json, else
    # generate's global defaults (GENERATE_DEFAULTS), as generate resolves them
    gen_length: int | None = None
    max_steps: int | None = None  # generate's max_denoising_steps
    bound: float | None = None  # EntropyBoundSamplerConfig.entropy_bound
    t_min: float | None = None
    t_max: float | None = None
    confidence: float | None = None  # confidence_threshold
    stability: int | None = None  # stability_threshold
    self_conditioning: bool | None = None  # None: as the model's generate (DiffusionGemma: on)
    batch: Literal["live", "generate"] = "live"  # which rows each pass runs (module docstring)

    budget_knobs: ClassVar[tuple[str, ...]] = ("bound", "max_steps")  # read by the report (harness/report/samplers.py)

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        check_knobs({k: getattr(self, k) for k in GENERATE_DEFAULTS}, "uniform_entropy_bound")
        if self.batch not in ("live", "generate"):
            raise ValueError(f"batch must be 'live' or 'generate', got {self.batch!r}")

    def knobs(self, denoiser) -> dict:
        """The six knobs of this run: the ones set here, else the model's generation_config.json
        (`generation_defaults`, harness/models/diffusion_gemma.py), else generate's global defaults."""
        model = getattr(denoiser, "generation_defaults", None) or {}
        out = {k: (getattr(self, k) if getattr(self, k) is not None else model.get(k, v))
               for k, v in GENERATE_DEFAULTS.items()}
        try:
            check_knobs(out, "uniform_entropy_bound (with the model's generation_config.json)")
        except ValueError as exc:
            raise HarnessError(str(exc)) from None
        return out

    def plan(self, denoiser, gen_length: int) -> tuple[int, int, int]:
        """(tokens returned, canvas width, canvases): whole canvases of the model's width."""
        L = self.gen_length or gen_length
        W = int(denoiser.canvas_length)
        n = math.ceil(L / W)  # generate's max_new_canvases
        return n * W, W, n

    def max_nfe_per_sequence(self, gen_length: int) -> int | None:
        """An upper bound known before the model is (the canvas length is the model's): max_steps
        passes per canvas, at most one canvas per token; None while max_steps is left to the
        checkpoint's generation_config.json (read only when the model loads)."""
        if self.max_steps is None:
            return None
        return (self.gen_length or gen_length) * self.max_steps

    def _self_conditioning(self, denoiser) -> bool:
        has = bool(getattr(denoiser, "self_conditioning", False))
        if self.self_conditioning and not has:
            raise HarnessError("uniform_entropy_bound: self_conditioning=true, but the model has no "
                               "self-conditioning input")
        return has if self.self_conditioning is None else self.self_conditioning

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32) -> Generation:
        if getattr(denoiser, "noise", "masked") != "uniform" or not hasattr(denoiser, "canvas_length"):
            raise HarnessError("uniform_entropy_bound drives uniform-noise models (diffusion_gemma); use the "
                               "masked samplers (low_confidence, entropy_bound, ...) for masked models")
        total, W, n = self.plan(denoiser, gen_length)
        k = self.knobs(denoiser)
        max_steps, stability = int(k["max_steps"]), int(k["stability"])
        B, P = prompt.shape
        V, dev = denoiser.vocab_size, prompt.device
        stops = torch.tensor(stop_ids(denoiser), device=dev)  # generate's eos_token_id, one id or a list
        sc_on = self._self_conditioning(denoiser)
        whole = self.batch == "generate"
        draws = Draws(generator, B, W, V, dev)
        # With one shared generator, generate's step count (and so every later draw) depends on rows
        # that ended in an earlier canvas: generate keeps denoising them until their canvas is done.
        # They stay in the batch then; with one generator per row they leave it.
        keep_ended = whole or draws.shared
        everyone = torch.arange(B, device=dev)
        pmask = torch.ones_like(prompt, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        out = torch.full((B, total), denoiser.eos_id, dtype=prompt.dtype, device=dev)
        commit_step = torch.full((B, total), -1, dtype=torch.long, device=dev)
        row_steps = torch.zeros(B, dtype=torch.long, device=dev)  # generate's decoder_forward_passes
        ended = torch.zeros(B, dtype=torch.bool, device=dev)  # generate's finished_sequences
        cache = cache_rows = prev = None
        step = 0
        for c in range(n):
            cols = slice(c * W, (c + 1) * W)
            start = everyone if keep_ended else (~ended).nonzero()[:, 0]
            canvas = torch.zeros(B, W, dtype=prompt.dtype, device=dev)
            canvas[start] = draws.tokens(start)
            argmax = canvas.clone()
            sc = torch.zeros(B, W, V, device=dev) if sc_on else None  # the previous step's scaled logits
            history = torch.full((stability, B, W), -1, dtype=torch.long, device=dev)
            done = torch.zeros_like(ended) if keep_ended else ended.clone()
            sub = None  # (rows, cache of those rows) for steps where some rows are done
            for s in range(max_steps):
                live = (~done).nonzero()[:, 0]  # [b] rows still denoising this canvas
                run = everyone if whole else live  # rows that go through the model
                if s == 0 and c == 0:
                    x = torch.cat([prompt, canvas], 1)
                    am = torch.cat([pmask, torch.ones_like(canvas, dtype=torch.bool)], 1)
                    logits, cache = denoiser.logits_build_cache(x, am, keep=slice(0, P))
                    logits, cache_rows = logits[:, P:], run
                elif s == 0:  # the new canvas's first pass also appends the previous canvas to the cache
                    if not torch.equal(cache_rows, run):  # rows that ended leave the cache for good
                        cache, cache_rows = cache.take(torch.searchsorted(cache_rows, run)), run
                    logits = denoiser.logits_cached(torch.cat([prev[run], canvas[run]], 1), cache, context=W)[:, W:]
                else:
                    if torch.equal(cache_rows, run):
                        rows_cache = cache
                    else:
                        if sub is None or not torch.equal(sub[0], run):
                            sub = (run, cache.take(torch.searchsorted(cache_rows, run)))
                        rows_cache = sub[1]
                    logits = denoiser.logits_cached(canvas[run], rows_cache,
                                                    self_conditioning=sc[run] if sc_on else None)
                logits = logits[torch.searchsorted(run, live)]  # [b, W, V]
                tau = temperature(k["t_min"], k["t_max"], max_steps - s, max_steps, dev)
                scaled = logits.float() / tau
                sample = draws.sample(torch.softmax(scaled, -1, dtype=torch.float32), live)  # [b, W]
                h = categorical_entropy(scaled)  # [b, W]
                accept = entropy_bound_accept(h, k["bound"])
                canvas[live] = torch.where(accept, sample, draws.tokens(live))  # re-noise the rest
                new_argmax = scaled.argmax(-1)  # [b, W]
                if stability:
                    stable = (history[:, live] == new_argmax[None]).all(-1).all(0)  # [b]
                    history[:, live] = torch.cat([history[1:, live], new_argmax[None]], 0)
                else:
                    stable = torch.ones_like(live, dtype=torch.bool)
                argmax[live] = new_argmax
                if sc_on:
                    sc[live] = scaled
                commit_step[live, cols] = step
                row_steps[live] += (~ended[live]).long()  # a row's own pass: neither done nor ended
                step += 1
                done[live] |= stable & (h.mean(-1) < k["confidence"])
                if done.all():
                    break
            out[:, cols] = argmax
            prev = after_eos(argmax, ended, stops, denoiser.pad_id) if keep_ended else argmax
            ended |= torch.isin(argmax, stops).any(1)  # generate's EosTokenCriteria over the new canvas
            if ended.all():
                break
        gen = finish(denoiser, out, 0, commit_step, step)
        return dataclasses.replace(gen, row_steps=row_steps)

