"""The shared RL loop (docs/methods.md §2): roll out, reward, advantages, μ inner updates.

Per step k: draw `prompts` train items; roll out G completions each with the configured sampler
(one generator per row, seeded by (step, row): rollouts never reset and never depend on batch
composition); score rewards with the task; the algorithm may edit the buffer (IGPO) and drop
groups (TraceRL); advantages per group; then μ inner iterations, each ONE optimizer step over the
whole buffer, accumulated over micro-batches (`optimizer_step="micro_batch"`: one step per
micro-batch instead, as TraceRL's reference trains on minibatches, so π_old's terms are computed
for every micro-batch after the first). The micro-batches are the algorithm's declared reference
structure (`Algorithm.micro_batch` groups of G rows, e.g. one group for d1 / wd1 / SPG / IGPO, half
a group for DiffuCoder): each micro-batch's loss is normalised within it and weighted B_mb/N, as
the reference trainers' gradient accumulation averages equal micro-batches. An algorithm that
declares none (0) is split by `micro_groups` only to bound memory, with buffer-wide normalisers,
so that split changes nothing. At iteration i every row gets a
generator seeded by (step, row, i): π_θ draws its masks from it and π_old / π_ref replay exactly
those draws, so the draws are shared per (trajectory, inner iteration) and the iteration index
advances once per pass over the buffer. At iteration 0 θ = θ_old, so π_old's terms are the
policy's own terms, detached (ratio exactly 1). π_ref is a frozen copy, refreshed every
`ref_refresh` steps when > 0.

Data-parallel (`dist`, a process group of `world_size` ranks, e.g. under torchrun): every rank
draws the same prompts and pads them alike; rank k rolls out its contiguous share of the groups
(each row keeps its own (step, row) generator) and the buffer is all-gathered, so every rank holds
the single-process buffer; each rank runs its contiguous share of the micro-batches (the same
micro-batches, draws and normalisers as one process) and the gradients are summed over ranks
(all-reduce) before the one optimizer step, which every rank takes alike; logged metrics are
re-accumulated in the single-process order and costs summed over ranks. The exact equivalence:
every rollout, reward, advantage and micro-batch loss is what one process computes; the summed
gradient differs from one process's running sum only in float summation order, so it is
bit-identical when each rank holds at most one micro-batch per pass on two ranks (a + b = b + a),
and equal to rounding otherwise. `optimizer_step="micro_batch"` (sequential steps) has no
data-parallel form: such a loop runs whole on one rank (harness/distributed.py `place`).

Four meters count NFE apart: rollouts, the policy's likelihood passes (with gradients), π_old and
π_ref passes; held-out evaluation has its own. Checkpoints (policy, ref, optimizer, counters) make
a killed run resume to the same numbers: everything random is derived from (step, row, stream).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.budget import Meter
from harness.paths import IOFailure, describe, failed_torch_write
from harness.prompting import PromptEncoder
from harness.registry import SAMPLERS
from harness.seeding import numpy_generator, torch_generator
from harness.tasks.base import reward
from harness.text import completion_mask, encode_prompts
from harness.types import Cost, HarnessError


@dataclass(frozen=True, kw_only=True)
class LoopOptions:
    """Options of an `rl` study (`options:` in the suite). One RL step rolls out prompts × G."""

    steps: int = 30
    quick_steps: int = 8  # steps under `dlm-harness run --quick`
    prompts: int = 8
    quick_prompts: int = 0  # prompts per step under `--quick`; 0: `prompts`
    group_size: int = 4
    mu: int = 1
    lr: float = 5e-4
    grad_clip: float = 1.0  # max gradient norm; 0: none
    micro_groups: int = 0  # groups per memory chunk of an algorithm without a micro-batch structure; 0: all
    optimizer_step: str = "pass"  # "pass": one step per pass over the buffer; "micro_batch": one per micro-batch
    sampler: dict = field(default_factory=lambda: {"name": "low_confidence", "params": {"temperature": 1.0}})
    eval_every: int = 10  # held-out greedy accuracy every this many steps (and at the end); 0: never
    # the held-out evaluations' decoder, deterministic: greedy low_confidence, one token per step, unless a
    # checkpoint trained for another decoder names it (an any-order causal one: {name: any_order})
    eval_sampler: dict = field(default_factory=lambda: {"name": "low_confidence", "params": {}})
    eval_items: int = 100
    ref_refresh: int = 0  # copy π_θ into π_ref every this many steps; 0: frozen
    checkpoint_every: int = 5
    # Not the loop's: the algorithm the report compares every other one against (over training runs).
    # "": the study's own `algorithm.name` (the one its sweep varies away from), filled in at plan time.
    baseline: str = ""
    # Not the loop's either: two algorithms of the study that are one objective (grpo with its defaults
    # and diffu_grpo), trained as separate runs; the report shows their difference as what training
    # noise alone produces. []: none.
    calibration: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name in ("steps", "quick_steps", "prompts", "mu", "eval_items", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_groups", "eval_every", "ref_refresh", "quick_prompts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare completions), got {self.group_size}")
        if self.lr <= 0 or self.grad_clip < 0:
            raise ValueError(f"need lr > 0 and grad_clip >= 0, got {self.lr}, {self.grad_clip}")
        if self.optimizer_step not in ("pass", "micro_batch"):
            raise ValueError(f"optimizer_step must be 'pass' or 'micro_batch', got {self.optimizer_step!r}")
        if self.calibration and (len(self.calibration) != 2 or len(set(self.calibration)) != 2):
            raise ValueError(f"calibration must name two different algorithms, got {self.calibration!r}")
        for key in ("sampler", "eval_sampler"):
            spec = getattr(self, key)
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"{key} must be a mapping {{name: ..., params: ...}}, got {spec!r}")

    @staticmethod
    def build_eval_sampler(spec: dict | None = None):
        """The held-out evaluations' sampler (`eval_sampler`; None: the default, greedy low_confidence, one
        token per step). Its NFE is known in advance, so a plan can check that a budget covers the starting
        evaluation (harness/config.py)."""
        spec = spec or {"name": "low_confidence"}
        return SAMPLERS.build(spec["name"], spec.get("params") or {}, "options.eval_sampler")


def _share(n: int, dist) -> range:
    """Rank k's contiguous share of n things (sizes differ by at most one)."""
    base, extra = divmod(n, dist.world_size)
    lo = dist.rank * base + min(dist.rank, extra)
    return range(lo, lo + base + (dist.rank < extra))


def _all_gather(dist, obj) -> list:
    import torch.distributed as td

    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def _sum_costs(dist, spent: dict, edit: dict) -> dict:
    """Per meter: every rank's spending summed, except `edit` (the same passes on every rank), once."""
    own = {k: dataclasses.replace(c, nfe=c.nfe - edit[k].nfe, nfe_full=c.nfe_full - edit[k].nfe_full,
                                  nfe_cached=c.nfe_cached - edit[k].nfe_cached, tokens=c.tokens - edit[k].tokens,
                                  flops=c.flops - edit[k].flops) for k, c in spent.items()}
    ranks = _all_gather(dist, own)
    out = {}
    for k, c in spent.items():
        parts = [r[k] for r in ranks]
        out[k] = dataclasses.replace(
            c, nfe=edit[k].nfe + sum(p.nfe for p in parts), nfe_full=edit[k].nfe_full + sum(p.nfe_full for p in parts),
            nfe_cached=edit[k].nfe_cached + sum(p.nfe_cached for p in parts),
            tokens=edit[k].tokens + sum(p.tokens for p in parts), flops=edit[k].flops + sum(p.flops for p in parts),
            wall_s=max(p.wall_s for p in parts), peak_mem=max(p.peak_mem for p in parts))
    return out


def _add(parts: list) -> Cost:
    """The costs of (scores, cost) pairs from every rank, summed (wall time and peak memory: the most)."""
    costs = [c for _, c in parts]
    return Cost(nfe=sum(c.nfe for c in costs), nfe_full=sum(c.nfe_full for c in costs),
                nfe_cached=sum(c.nfe_cached for c in costs), tokens=sum(c.tokens for c in costs),
                flops=sum(c.flops for c in costs), wall_s=max(c.wall_s for c in costs),
                peak_mem=max(c.peak_mem for c in costs))


def _detached(terms):
    return dataclasses.replace(terms, per_token=terms.per_token.detach(), sequence=terms.sequence.detach())


def _rows(d: dict, idx: torch.Tensor) -> dict:
    return {k: (v[idx] if torch.is_tensor(v) and v.dim() and v.shape[0] >= 1 else
                [v[i] for i in idx.tolist()] if isinstance(v, list) else v) for k, v in d.items()}


def micro_batches(algorithm, micro_groups: int, n_groups: int, G: int) -> tuple[list[torch.Tensor], bool]:
    """Rows (row = group·G + j) of each micro-batch of a buffer of n_groups groups of G, and whether
    the losses are normalised per micro-batch: the algorithm's reference structure (`micro_batch`
    groups, its rows consecutive, so a half group is the first or second half of one), else chunks
    of `micro_groups` whole groups (0: one micro-batch) with buffer-wide normalisers."""
    n = n_groups * G
    if algorithm.micro_batch > 0:
        rows = algorithm.micro_batch * G
        if abs(rows - round(rows)) > 1e-9 or round(rows) < 1:
            raise HarnessError(f"algorithm {algorithm.registry_name!r}: micro_batch={algorithm.micro_batch} groups "
                               f"of group_size {G} is {rows:g} rows; expected a whole number of rows >= 1 (set "
                               "algorithm.params.micro_batch or options.group_size)")
        size = int(round(rows))
        return [torch.arange(lo, min(lo + size, n)) for lo in range(0, n, size)], True
    size = (micro_groups or n_groups) * G
    return [torch.arange(lo, min(lo + size, n)) for lo in range(0, n, size)], False


def micro_totals(loss_tokens: torch.Tensor, group: torch.Tensor, length: int) -> dict:
    """The normalisers of one micro-batch's own loss: its rows, counted tokens and groups."""
    return {"n_seq": int(loss_tokens.shape[0]), "n_tok": int(loss_tokens.sum()),
            "n_groups": int(group.unique().numel()), "length": length}


def micro_batch_loss(algorithm, batch: dict, totals: dict, local: bool, policy_terms, old_terms, ref_terms,
                     advantages: torch.Tensor):
    """One micro-batch's part of the buffer's loss -> (loss, metrics). `batch`: its mask, completion_mask
    and group; `totals`: the buffer's (n_seq, n_tok, n_groups, length). `local`: the loss is normalised
    within the micro-batch and weighted B_mb/N (the reference trainers' gradient accumulation); else
    buffer-wide normalisers, so the micro-batch losses add up to the whole buffer's."""
    norm = micro_totals(batch["mask"], batch["group"], totals["length"]) if local else totals
    loss, metrics = algorithm.loss({**batch, **norm}, policy_terms, old_terms, ref_terms, advantages)
    return (loss * (len(advantages) / totals["n_seq"]) if local else loss), metrics


class RLLoop:
    """One training run. `seed(item, replicate, stream) -> int` derives every seed (derive_seed)."""

    def __init__(self, policy, algorithm, task, options: LoopOptions, seed, train_items, test_items, dist=None):
        self.policy, self.algorithm, self.task, self.opts, self.seed = policy, algorithm, task, options, seed
        # data-parallel over a process group (`dist`: .rank, .world_size); None or one rank: one process
        self.dist = dist if dist is not None and dist.world_size > 1 and options.optimizer_step == "pass" else None
        self.train_items, self.test_items = train_items, test_items
        micro_batches(algorithm, options.micro_groups, 1, options.group_size)  # a whole number of rows, or say so
        spec = algorithm.rollout_sampler(options.sampler, policy)  # an algorithm may fix its rollout order (JustGRPO)
        self.sampler = SAMPLERS.build(spec["name"], spec.get("params") or {}, "options.sampler")
        self.eval_sampler = LoopOptions.build_eval_sampler(options.eval_sampler)  # greedy
        self.ref = copy.deepcopy(policy) if algorithm.needs_ref else None
        self.per_micro = options.optimizer_step == "micro_batch"  # π_θ moves between micro-batches
        self.old = copy.deepcopy(policy) if algorithm.needs_old and (options.mu > 1 or self.per_micro) else None
        for frozen in (self.ref, self.old):
            if frozen is not None:
                frozen.module.requires_grad_(False)
        self.meters = {"rollout": Meter(policy), "policy": Meter(policy), "eval": Meter(policy),
                       "old": Meter(self.old or policy), "ref": Meter(self.ref or policy)}
        self.optimizer = torch.optim.Adam(policy.module.parameters(), lr=options.lr)
        self.cum = {"rollout_nfe": 0, "likelihood_nfe": 0, "flops": 0.0}
        self.backward_s = 0.0

    # -- pieces ----------------------------------------------------------------------------------
    def generators(self, step: int, rows, stream: str) -> list:
        return [torch_generator(self.seed(f"step-{step}", int(r), stream)) for r in rows]

    def encode(self, items):
        # the model's own prompt layout (chat template for Instruct checkpoints, BOS, the task's prefill):
        # harness/prompting.py
        return encode_prompts(PromptEncoder(self.policy, prefill=getattr(self.task, "prefill", "") or ""),
                              [it.prompt for it in items], self.policy.pad_id)

    def sample(self, prompt, prompt_mask, generators, meter="rollout", sampler=None, fixed=None, record_steps=False):
        kw = {} if fixed is None else {"fixed": fixed}
        if record_steps:  # only asked for by an algorithm that declares `uses_trajectory`
            kw["record_steps"] = True
        return (sampler or self.sampler)(self.meters[meter], prompt, generator=generators, prompt_mask=prompt_mask,
                                         gen_length=self.task.gen_length, **kw)

    def rollout(self, step: int) -> dict:
        G = self.opts.group_size
        rng = numpy_generator(self.seed(f"step-{step}", 0, "prompts"))
        picked = [self.train_items[i] for i in rng.integers(0, len(self.train_items), self.opts.prompts).tolist()]
        items = [it for it in picked for _ in range(G)]  # row = group·G + j
        prompt, pmask = self.encode(items)  # every rank pads the whole batch alike
        lo, hi = 0, len(items)
        if self.dist is not None and len(picked) >= self.dist.world_size:  # this rank's share of the groups
            g = _share(len(picked), self.dist)
            lo, hi = g.start * G, g.stop * G
        rows = range(lo, hi)
        self._split = (lo, hi) != (0, len(items))
        record = self.algorithm.uses_trajectory
        gen = self.sample(prompt[lo:hi], pmask[lo:hi], self.generators(step, rows, "rollout"), record_steps=record)
        if record and gen.trajectory is None:
            raise HarnessError(f"algorithm {self.algorithm.registry_name!r} trains on the rollout's denoising "
                               f"trajectory, which options.sampler {self.opts.sampler.get('name')!r} did not record")
        rewards = [reward(self.task, it, t) for it, t in zip(items[lo:hi], gen.text)]  # stop strings cut
        tokens, commit, traj = gen.tokens, gen.commit_step, gen.trajectory
        if self._split:  # the whole buffer on every rank, rows in order
            parts = _all_gather(self.dist, (tokens.cpu(), None if commit is None else commit.cpu(), rewards,
                                            None if traj is None else {k: v.cpu() for k, v in traj.items()}))
            tokens = torch.cat([p[0] for p in parts]).to(gen.tokens.device)
            commit = None if commit is None else torch.cat([p[1] for p in parts]).to(gen.commit_step.device)
            rewards = [r for p in parts for r in p[2]]
            if traj is not None:
                traj = {k: torch.cat([p[3][k] for p in parts]).to(v.device) for k, v in traj.items()}
        cmask = completion_mask(tokens, self.policy.eos_id)
        buf = {"items": items, "prompt": prompt, "prompt_mask": pmask, "tokens": tokens,
               "commit_step": commit, "completion_mask": cmask, "loss_mask": cmask.clone(),
               "rewards": torch.tensor(rewards, dtype=torch.float64),
               "group": torch.arange(len(picked)).repeat_interleave(G), "row": torch.arange(len(items))}
        if record:  # [N, T, L] each: rows slice with the buffer
            buf.update({f"trajectory_{k}": v for k, v in traj.items()})
        return buf

    def micro_batches(self, n_groups: int) -> tuple[list[torch.Tensor], bool]:
        """-> (row indices of each micro-batch, whether each one's loss is normalised within it)."""
        return micro_batches(self.algorithm, self.opts.micro_groups, n_groups, self.opts.group_size)

    def update(self, buf: dict, step: int) -> dict:
        """μ inner iterations on the rollout buffer; -> averaged loss metrics."""
        algo, G, mu = self.algorithm, self.opts.group_size, self.opts.mu
        adv_all = algo.advantages(buf["rewards"], buf["group"])  # [N] on every group
        keep = algo.keep_groups(buf["rewards"].view(-1, G))  # [n_groups]
        rows = keep.repeat_interleave(G).nonzero().squeeze(1)
        buf, adv_all = _rows(buf, rows), adv_all[rows]
        n_groups = int(keep.sum())
        out = {"kept_groups": n_groups, "loss": 0.0}
        if n_groups == 0:
            return out
        buf["loss_tokens"] = algo.loss_tokens(buf)  # [N, L] what the loss counts
        totals = {"n_seq": len(rows), "n_tok": int(buf["loss_tokens"].sum()), "n_groups": n_groups,
                  "length": buf["tokens"].shape[1]}
        if self.old is not None:
            self.old.module.load_state_dict(self.policy.module.state_dict())
        first: dict[int, dict] = {}
        sums: dict[str, float] = {}
        parts, local = self.micro_batches(n_groups)
        mine = range(len(parts)) if self.dist is None else _share(len(parts), self.dist)
        for i in range(mu):
            adds = []  # (loss part, {metric: part}) of this rank's micro-batches, in order
            for m, idx in enumerate(parts):
                if m not in mine:
                    continue
                mb = _rows(buf, idx)
                gens = self.generators(step, mb["row"], f"lik-{i}")
                draws = algo.draws_for(mb, first.get(m), i)
                args = (mb["prompt"], mb["prompt_mask"], mb["tokens"], mb["completion_mask"])
                kw = dict(iteration=i, n_iterations=mu)
                pol = algo.terms(self.meters["policy"], *args, generator=gens, draws=draws, **kw)
                first.setdefault(m, pol.draws)
                with torch.no_grad():
                    old = _detached(pol)
                    if algo.needs_old and (i > 0 or (self.per_micro and m > 0)):
                        old = algo.terms(self.meters["old"], *args, generator=None, draws=pol.draws, **kw)
                    ref = (algo.terms(self.meters["ref"], *args, generator=None, draws=pol.draws, **kw)
                           if algo.needs_ref else None)
                batch = {"mask": mb["loss_tokens"], "completion_mask": mb["completion_mask"],
                         "group": mb["group"] - mb["group"].min()}
                loss, metrics = micro_batch_loss(algo, batch, totals, local, pol, old, ref, adv_all[idx])
                share = len(idx) / totals["n_seq"]
                t0 = time.perf_counter()
                # One step per micro-batch (TraceRL's minibatches): each micro-batch's loss at the
                # scale of a whole-buffer loss (× N / B_mb), so the step size does not shrink with it.
                (loss / share if self.per_micro else loss).backward()
                self.backward_s += time.perf_counter() - t0
                if self.per_micro:
                    self._step()
                share /= mu
                metrics = {**metrics, "entropy": float(-(pol.per_token.detach() * mb["loss_tokens"]).sum()
                                                       / mb["loss_tokens"].sum().clamp_min(1))}
                adds.append((float(loss.detach()) / mu, {k: None if v is None else v * share
                                                         for k, v in metrics.items()}))
            if self.dist is not None:  # every rank's parts, in micro-batch order: the single-process sums
                adds = [a for rank_adds in _all_gather(self.dist, adds) for a in rank_adds]
                self._all_reduce_grads()
            for loss_part, metric_parts in adds:
                out["loss"] += loss_part
                for k, v in metric_parts.items():
                    if v is None:  # not applicable (no reference model, no ratio): stays None
                        sums.setdefault(k, None)
                    else:
                        sums[k] = (sums.get(k) or 0.0) + v
            if not self.per_micro:
                self._step()
        return {**out, **sums}

    def _all_reduce_grads(self) -> None:
        """Sum every parameter's gradient over the ranks (one flat all-reduce per dtype); a parameter
        with no gradient on any rank keeps none, as in one process (Adam skips it)."""
        import torch.distributed as td

        params = [p for p in self.policy.module.parameters() if p.requires_grad]
        if not params:
            return
        dev = params[0].device
        has = torch.tensor([float(p.grad is not None) for p in params], device=dev)
        td.all_reduce(has)
        for dtype in sorted({p.dtype for p in params}, key=str):
            group = [p for p, h in zip(params, has.tolist()) if p.dtype == dtype and h > 0]
            if not group:
                continue
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            td.all_reduce(flat)
            at = 0
            for p in group:
                n = p.numel()
                p.grad = flat[at:at + n].view_as(p).clone()
                at += n

    def _step(self) -> None:
        if self.opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.policy.module.parameters(), self.opts.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, items) -> list[float]:
        """Greedy held-out scores (one per item), counted on the eval meter only."""
        return self.evaluate_counted(items)[0]

    @torch.no_grad()
    def evaluate_counted(self, items) -> tuple[list[float], Cost]:
        """-> (greedy held-out scores, one per item; the cost of their passes). Data-parallel, each
        rank decodes its share of the items (padded as the whole batch) and the cost is summed."""
        before = self.meters["eval"].cost
        prompt, pmask = self.encode(items)
        lo, hi = 0, len(items)
        if self.dist is not None and len(items) >= self.dist.world_size:
            share = _share(len(items), self.dist)
            lo, hi = share.start, share.stop
        gen = self.sample(prompt[lo:hi], pmask[lo:hi], None, meter="eval", sampler=self.eval_sampler)
        scores = [reward(self.task, it, t) for it, t in zip(items[lo:hi], gen.text)]
        spent = self.meters["eval"].cost.minus(before)
        if (lo, hi) == (0, len(items)):
            return scores, spent
        parts = _all_gather(self.dist, (scores, spent))
        return [x for p in parts for x in p[0]], _add(parts)

    def train_step(self, step: int) -> tuple[dict, dict]:
        """One RL step -> (log, cost of its rollout + likelihood passes as a dict)."""
        t0 = time.perf_counter()
        before = {k: m.cost for k, m in self.meters.items()}
        back0 = self.backward_s
        buf = self.rollout(step)
        mid = {k: m.cost for k, m in self.meters.items()} if getattr(self, "_split", False) else before
        buf = self.algorithm.after_rollout(self, buf, step)  # on the whole buffer: every rank alike
        edit = {k: m.cost.minus(mid[k]) for k, m in self.meters.items()}  # passes every rank ran alike
        r = buf["rewards"].view(-1, self.opts.group_size)
        log = {"step": step + 1, "reward_mean": float(r.mean()), "reward_std": float(buf["rewards"].std()),
               "zero_spread_frac": float((r.max(1).values == r.min(1).values).double().mean()),
               "completion_len": float(buf["completion_mask"].sum(1).double().mean()),
               "kl": None, "clip_frac": None}  # None: not applicable (no reference model, no ratio)
        log.update(self.update(buf, step))
        if self.ref is not None and self.opts.ref_refresh and (step + 1) % self.opts.ref_refresh == 0:
            self.ref.module.load_state_dict(self.policy.module.state_dict())
        spent = {k: m.cost.minus(before[k]) for k, m in self.meters.items()}
        if self.dist is not None:  # the split passes summed over ranks; the redundant edit counted once
            spent = _sum_costs(self.dist, spent, edit)
        lik = [spent[k] for k in ("policy", "old", "ref")]
        log.update(rollout_nfe=spent["rollout"].nfe, likelihood_nfe=sum(c.nfe for c in lik),
                   policy_nfe=spent["policy"].nfe, old_nfe=spent["old"].nfe, ref_nfe=spent["ref"].nfe,
                   rollout_flops=spent["rollout"].flops, likelihood_flops=sum(c.flops for c in lik),
                   backward_flops=2 * spent["policy"].flops,  # backward ≈ 2 × forward (estimate)
                   forward_s=spent["rollout"].wall_s + sum(c.wall_s for c in lik),
                   backward_s=self.backward_s - back0)
        self.cum["rollout_nfe"] += log["rollout_nfe"]
        self.cum["likelihood_nfe"] += log["likelihood_nfe"]
        self.cum["flops"] += log["rollout_flops"] + log["likelihood_flops"] + log["backward_flops"]
        log.update(cum_rollout_nfe=self.cum["rollout_nfe"], cum_likelihood_nfe=self.cum["likelihood_nfe"],
                   cum_nfe=self.cum["rollout_nfe"] + self.cum["likelihood_nfe"], cum_flops=self.cum["flops"],
                   step_wall_s=time.perf_counter() - t0)
        nfe = log["rollout_nfe"] + log["likelihood_nfe"]
        cost = {"nfe": nfe, "nfe_full": nfe, "nfe_cached": 0,
                "tokens": sum(c.tokens for c in lik) + spent["rollout"].tokens,
                "flops": log["rollout_flops"] + log["likelihood_flops"], "wall_s": log["step_wall_s"],
                "peak_mem": spent["policy"].peak_mem}
        return log, cost

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, path: Path, step: int) -> None:
        """Atomically write the state after `step` completed steps."""
        state = {"step": step, "policy": self.policy.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "ref": None if self.ref is None else self.ref.module.state_dict(), "cum": dict(self.cum)}
        tmp = path / "checkpoint.pt.tmp"
        try:
            path.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            os.replace(tmp, path / "checkpoint.pt")
        except (OSError, RuntimeError) as exc:  # disk full: torch reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            if isinstance(exc, RuntimeError) and not failed_torch_write(exc):
                raise
            # A HarnessError: the runner stops the run (marked failed) instead of failing the cell's units;
            # a resume retrains from the last checkpoint without re-recording the steps already on record.
            reason = describe(exc) if isinstance(exc, OSError) else str(exc)
            raise IOFailure(f"cannot write the RL checkpoint {path / 'checkpoint.pt'} after step {step}: "
                            f"{reason}") from None

    def resume(self, path: Path) -> int:
        """Load the checkpoint under `path` if there is one; -> steps already done (0 if none)."""
        file = path / "checkpoint.pt"
        if not file.exists():
            return 0
        state = torch.load(file, map_location=self.policy.device, weights_only=False)
        self.policy.module.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ref is not None and state["ref"] is not None:
            self.ref.module.load_state_dict(state["ref"])
        self.cum = dict(state["cum"])
        return int(state["step"])
