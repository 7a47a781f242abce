"""What one batch of a cell does, per study kind. Each returns one result dict per unit.

`generate`: decode each prompt with the cell's sampler and score the text with the task.
`likelihood`: estimate log-likelihood (or its bound) of each item's reference completion.
The estimator study (statistics in harness/stats/estimators.py):
`estimator_variance`: one estimator value per (item, replicate) on the reference completion,
    a light record (no per-token list); replicate 0 of each item also replays its own draws.
`exact_reference`: the exact ELBO and exact log p of each item (docs/methods.md §4), one record per item.
`gradient_variance`: per item, the exact ELBO gradient g* and R_g estimator gradients g_r (R_g = the
    study's `replicates`, run inside the unit: one record per item, replicate 0).
`t_mask_decomposition`: per item, T values of t (the study's `replicates`, inside the unit) and
    K = options.masks_per_t masks per t for mc_elbo with n_mc = 1: one-way ANOVA of its variance.
`exact_moments`: per item, the exact mean and variance of one estimator call
    (harness/estimators/moments), on the sequence scale of the other estimator records.
The meter passed in counts everything; these functions never measure their own cost.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from harness import rl_study
from harness.estimators.exact import exact_terms
from harness.estimators.mc_elbo import draw_masks, draw_t
from harness.prompting import PromptEncoder, prompting_record
from harness.seeding import rand
from harness.stats.estimators import GradientMoments, anova_components
from harness.text import completion_mask, encode_completions, encode_prompts
from harness.types import HarnessError


@dataclass(frozen=True)
class Batch:
    """The units of one runner batch: unit i is (items[i], replicates[i]) with generators[i]:
    one torch.Generator, or, for kinds with `inner_replicates`, a list of one per inner replicate
    (each seeded by derive_seed(suite, cell, item, r))."""

    items: list
    replicates: list
    generators: list
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudyKind:
    run: Callable  # (denoiser, task, component, batch: Batch) -> list[dict], one per unit
    item_major: bool = False  # order units item by item, so an item's replicates share batches
    inner_replicates: bool = False  # one unit per item (replicate 0); the replicates run inside it
    # RL (harness/rl_study.py): (runner, cell, model, task, component, writer) -> the model
    # whose units are then run; the runner calls it before the cell's units.
    train: Callable | None = None
    # (runner, cell) -> None, raising HarnessError when records a resumed cell implies are missing
    verify: Callable | None = None


def _prefill(task) -> str:
    return getattr(task, "prefill", "") or ""


def _prompts(denoiser, items, prefill: str = ""):
    # The model's own prompt layout (chat template for Instruct checkpoints, BOS, the task's prefill):
    # harness/prompting.py
    ids, mask = encode_prompts(PromptEncoder(denoiser, prefill=prefill), [it.prompt for it in items], denoiser.pad_id)
    return ids.to(denoiser.device), mask.to(denoiser.device)


def _reference(denoiser, task, items):
    """-> (prompt ids [B, P], prompt mask [B, P], completion [B, L], completion mask [B, L])."""
    ids, mask = _prompts(denoiser, items, _prefill(task))
    completion = encode_completions(denoiser.tokenizer, [it.reference for it in items], task.gen_length,
                                    denoiser.eos_id).to(denoiser.device)
    return ids, mask, completion, completion_mask(completion, denoiser.eos_id)


@torch.no_grad()
def generate(denoiser, task, sampler, batch: Batch) -> list[dict]:
    items = batch.items
    ids, mask = _prompts(denoiser, items, _prefill(task))
    gen = sampler(denoiser, ids, generator=batch.generators, prompt_mask=mask, gen_length=task.gen_length)
    out = []
    for i, (item, text) in enumerate(zip(items, gen.text)):
        v = task.grade(item, text)  # the task's stop strings and scoring protocol; the raw text is kept
        record = {"text": text, "gen_len": int(gen.gen_len[i]), "steps": gen.steps_of(i),
                  "commit_step": gen.commit_step[i].tolist(), "prompting": prompting_record(denoiser, _prefill(task))}
        if gen.commit_conf is not None:
            record["commit_conf"] = confidences(gen.commit_conf[i])
        out.append({"outcome": v.outcome(), "generation": record})
    return out


def confidences(row: torch.Tensor) -> list:
    """[L] confidences at commit -> a list of 3-decimal floats, None where no step committed the token."""
    return [None if v != v else round(v, 3) for v in row.tolist()]


@torch.no_grad()
def likelihood(denoiser, task, estimator, batch: Batch) -> list[dict]:
    ids, mask, completion, cmask = _reference(denoiser, task, batch.items)
    est = estimator(denoiser, ids, completion, cmask, generator=batch.generators, prompt_mask=mask)
    metric = getattr(estimator, "metric", "log_likelihood")
    out = []
    for i in range(len(batch.items)):
        value = float(est.sequence[i])
        out.append({
            "outcome": {"metric": metric, "value": value},
            "estimate": {"value": value, "n": est.n, "length": int(cmask[i].sum()),
                         "prompting": prompting_record(denoiser, _prefill(task)),
                         "per_token": [round(float(v), 6) for v in est.per_token[i][cmask[i]]]},
        })
    return out


# -- the estimator study --------------------------------------------------------------------------
def declared(estimator) -> dict:
    """What an estimator declares for the statistics, kept in its records so they say on their own
    what a value estimates: `token_scale` (a per-token mean: x L puts it on the sequence scale),
    `elbo_target` (unbiased for the exact ELBO by construction) and `masks` (how its masks relate:
    independent, complementary pairs, a reveal order, or none)."""
    return {"token_scale": bool(estimator.token_scale), "elbo_target": bool(estimator.elbo_target),
            "masks": str(estimator.masks)}


def random_orders(completion_mask: torch.Tensor, generators) -> torch.Tensor:
    """[B, L] commit steps of a uniformly random reveal order of each row's scored positions
    (0 = revealed first; −1 off the mask). With these, `trace` at stride 1 scores the any-order
    chain rule Σ_i log p(o_σi | o_σ<i) / L, whose expectation over orders is ELBO / L (docs/methods.md §4)."""
    valid = completion_mask.bool().cpu()
    B, L = valid.shape
    keys = rand(generators, B, L, dtype=torch.float64)  # [B, L]
    keys = torch.where(valid, keys, torch.full_like(keys, 2.0))  # unscored positions sort last
    rank = keys.argsort(-1).argsort(-1)  # [B, L]
    return torch.where(valid, rank, torch.full_like(rank, -1)).to(completion_mask.device)


def _order_draws(options: dict, cmask: torch.Tensor, generators) -> dict | None:
    if options.get("commit_order") == "random":
        return {"commit_step": random_orders(cmask, generators)}
    return None


def _rows(draws: dict, rows: list[int], B: int) -> dict:
    """The draws of some rows (every per-row tensor is indexed on its first dimension)."""
    idx = torch.tensor(rows)
    return {k: (v[idx.to(v.device)] if torch.is_tensor(v) and v.dim() and v.shape[0] == B else v)
            for k, v in draws.items()}


@torch.no_grad()
def estimator_variance(denoiser, task, estimator, batch: Batch) -> list[dict]:
    """Estimator values on the reference completions; rows with replicate 0 are replayed with their
    own draws through the bare model (a check of shared draws, not part of the estimator's cost,
    so it bypasses the meter) and record |replayed − original| as `replay_abs_diff`."""
    ids, pmask, completion, cmask = _reference(denoiser, task, batch.items)
    draws = _order_draws(batch.options, cmask, batch.generators)
    est = estimator(denoiser, ids, completion, cmask, generator=batch.generators, prompt_mask=pmask, draws=draws)
    rows = [i for i, r in enumerate(batch.replicates) if r == 0]
    replay = {}
    if rows:
        B = len(batch.items)
        again = estimator(getattr(denoiser, "inner", denoiser), ids[rows], completion[rows], cmask[rows],
                          generator=None, prompt_mask=pmask[rows], draws=_rows(est.draws, rows, B))
        replay = {i: abs(float(again.sequence[j]) - float(est.sequence[i])) for j, i in enumerate(rows)}
    metric = getattr(estimator, "metric", "log_likelihood")
    out = []
    for i in range(len(batch.items)):
        value = float(est.sequence[i])
        estimate = {"value": value, "n": est.n, "length": int(cmask[i].sum()), **declared(estimator)}
        if i in replay:
            estimate["replay_abs_diff"] = replay[i]
        out.append({"outcome": {"metric": metric, "value": value}, "estimate": estimate})
    return out


@torch.no_grad()
def exact_reference(denoiser, task, exact, batch: Batch) -> list[dict]:
    """Exact ELBO and log p of each reference completion (2^L − 1 passes per item)."""
    ids, pmask, completion, cmask = _reference(denoiser, task, batch.items)
    terms = exact_terms(denoiser, ids, completion, cmask, prompt_mask=pmask, max_len=exact.max_len,
                        max_tokens=exact.max_tokens)
    out = []
    for i in range(len(batch.items)):
        elbo, log_p = float(terms["elbo"][i]), float(terms["log_p"][i])
        out.append({"outcome": {"metric": "exact_elbo", "value": elbo},
                    "estimate": {"elbo": elbo, "log_p": log_p, "length": int(cmask[i].sum())}})
    return out


def _module(denoiser) -> torch.nn.Module:
    module = getattr(denoiser, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise HarnessError("a gradient_variance study needs a model adapter with a torch `module`")
    return module


@contextmanager
def trainable(module: torch.nn.Module):
    """Every parameter requires grad inside the block; the previous flags come back afterwards."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield params
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def flat_grad(value: torch.Tensor, params: list, retain: bool = False) -> torch.Tensor:
    """∇ value w.r.t. every parameter, flattened into one float64 vector [n_params]."""
    grads = torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double()
                      for g, p in zip(grads, params)])


def gradient_variance(denoiser, task, estimator, batch: Batch) -> list[dict]:
    """Per item: g* = ∇ exact ELBO (and ∇ exact log p), then R_g estimator gradients, one replicate
    generator each, accumulated as running sums (GradientMoments), never stored."""
    params_of = _module(denoiser)
    out = []
    with trainable(params_of) as params:
        for item, gens in zip(batch.items, batch.generators):
            ids, pmask, completion, cmask = _reference(denoiser, task, [item])
            terms = exact_terms(denoiser, ids, completion, cmask, prompt_mask=pmask)
            g_elbo = flat_grad(terms["elbo"].sum(), params, retain=True)  # [n_params]
            g_log_p = flat_grad(terms["log_p"].sum(), params)
            acc = GradientMoments(g_elbo, g_log_p)
            for g in gens:
                draws = _order_draws(batch.options, cmask, [g])
                est = estimator(denoiser, ids, completion, cmask, generator=[g], prompt_mask=pmask, draws=draws)
                acc.add(flat_grad(est.sequence.sum(), params), float(est.sequence.detach().sum()))
            res = acc.result()
            res.update(exact_elbo=float(terms["elbo"].detach()), exact_log_p=float(terms["log_p"].detach()),
                       length=int(cmask.sum()), n=est.n, n_params=int(g_elbo.numel()))
            out.append({"outcome": {"metric": "grad_cos_mean", "value": res["cos_mean"]}, "estimate": res})
    return out


@torch.no_grad()
def t_mask_decomposition(denoiser, task, estimator, batch: Batch) -> list[dict]:
    """Per item: T values of t (one inner generator each: t first, then its K masks, drawn with
    mc_elbo's own draw_t / draw_masks), the K one-sample mc_elbo values at each t, scored in one
    estimator call by replaying the draws; then the one-way ANOVA of those T x K values."""
    K = batch.options["masks_per_t"]
    law = estimator.t_law
    ids, pmask, completion, cmask = _reference(denoiser, task, batch.items)
    rows, ts, masks, weights = [], [], [], []
    for i, gens in enumerate(batch.generators):
        valid = cmask[i:i + 1].cpu()
        for g in gens:
            t = draw_t(law, 1, 1, g)  # [1, 1]
            m, w = draw_masks(law, t.expand(1, K), valid, g)  # [1, K, L], [1, K]
            rows += [i] * K
            ts.append(t.expand(K, 1))
            masks.append(m[0, :, None, :])  # [K, 1, L]
            weights.append(w.reshape(K, 1))
    idx = torch.tensor(rows, device=completion.device)
    draws = {"t": torch.cat(ts), "masks": torch.cat(masks).to(completion.device),
             "weight": torch.cat(weights).to(completion.device)}
    est = estimator(denoiser, ids[idx], completion[idx], cmask[idx], generator=None, prompt_mask=pmask[idx],
                    draws=draws)
    values = est.sequence.reshape(len(batch.items), -1, K).cpu()  # [items, T, K]
    t_values = torch.cat(ts)[::K, 0].reshape(len(batch.items), -1)  # [items, T]
    out = []
    for i in range(len(batch.items)):
        v = values[i].numpy()
        comp = anova_components(v.mean(1), v.var(1, ddof=1), K)
        share = comp["between"] / comp["total"] if comp["total"] > 0 else float("nan")
        out.append({
            "outcome": {"metric": "between_t_share", "value": share},
            "estimate": {**comp, "t_law": law, "T": v.shape[0], "K": K, "mean": float(v.mean()),
                         "length": int(cmask[i].sum()),
                         "t": [float(x) for x in t_values[i]],
                         "group_mean": [float(x) for x in v.mean(1)],
                         "group_var": [float(x) for x in v.var(1, ddof=1)]},
        })
    return out


def rl_evaluate(denoiser, task, algorithm, batch: Batch) -> list[dict]:
    """The units of an rl cell: greedy held-out decoding of the trained policy, with the decoder of the
    loop's held-out evaluations (`options.eval_sampler`, greedy low_confidence by default)."""
    from harness.algorithms.loop import LoopOptions

    return generate(denoiser, task, LoopOptions.build_eval_sampler((batch.options or {}).get("eval_sampler")), batch)


@torch.no_grad()
def exact_moments(denoiser, task, estimator, batch: Batch) -> list[dict]:
    """Per item: exact mean, variance and its t / mask split of one call of the estimator, from one
    cached table of forward passes per item (shared by every exact_moments cell of the run).
    Per-token-mean estimators are put on the sequence scale (x L; variances x L²) like
    stats.estimators.per_item does for the sampled values."""
    from harness.estimators.moments import exact_moments as moments
    from harness.estimators.moments import item_table

    ids, pmask, completion, cmask = _reference(denoiser, task, batch.items)
    metric = getattr(estimator, "metric", "log_likelihood")
    token = bool(estimator.token_scale)
    out = []
    for i in range(len(batch.items)):
        padded = bool(getattr(estimator, "mask_padding", False))
        table = item_table(denoiser, ids[i], pmask[i], completion[i], cmask[i], mask_padding=padded,
                           max_tokens=getattr(estimator, "max_tokens", 65536))
        # The reference is the item's exact ELBO as `exact_reference` computes it (post-EOS padding
        # clean): an estimator that masks the padding is measured against that ELBO, not against
        # the ELBO of its own padded table (cached: every unpadded cell on the item shares it).
        ref = table if not padded else item_table(denoiser, ids[i], pmask[i], completion[i], cmask[i],
                                                  max_tokens=getattr(estimator, "max_tokens", 65536))
        m = moments(estimator, table, batch.options)
        grad = _exact_gradients(denoiser, estimator, table, batch.options) if batch.options.get("gradients") else None
        L = table.n
        c = float(L) if token else 1.0
        # An infinite unclamped variance is recorded as `divergent` (records hold finite numbers only).
        scaled = {k: (None if v is None or not math.isfinite(v) else v * c * c) for k, v in
                  (("var", m.var), ("var_within", m.var_within), ("var_between", m.var_between),
                   ("var_unclamped", m.var_unclamped))}
        nfe = estimator.nfe_for_batch(1) if hasattr(estimator, "nfe_for_batch") else (
            L if metric == "trace" else (1 << L) - 1)
        out.append({"outcome": {"metric": "exact_var", "value": scaled["var"]},
                    "estimate": {"metric": metric, "mean": m.mean * c, **scaled, "draws": m.draws, "nfe": nfe,
                                 "divergent": m.divergent, "truncation": m.truncation, "notes": m.notes,
                                 **declared(estimator), "length": L, "exact_elbo": ref.elbo(),
                                 "passes": table.n_passes + (ref.n_passes if ref is not table else 0),
                                 **({"grad": grad} if grad else {})}})
    return out


def _exact_gradients(denoiser, estimator, table, options) -> dict:
    """Exact gradient moments of one call (moments/gradients.py); the Gram matrix of the masked-set
    gradients is computed once per table and kept on it."""
    from harness.estimators.moments.gradients import gradient_moments, masked_set_grads

    if getattr(table, "grad_gram", None) is None:
        with trainable(_module(denoiser)) as params:
            table.grad_gram = masked_set_grads(denoiser, table, params)
    return gradient_moments(estimator, table, table.grad_gram, options)


STUDIES = {
    "generate": StudyKind(generate),
    "likelihood": StudyKind(likelihood),
    "estimator_variance": StudyKind(estimator_variance, item_major=True),
    "exact_reference": StudyKind(exact_reference),
    "gradient_variance": StudyKind(gradient_variance, inner_replicates=True),
    "t_mask_decomposition": StudyKind(t_mask_decomposition, inner_replicates=True),
    "exact_moments": StudyKind(exact_moments),
    "rl": StudyKind(rl_evaluate, train=rl_study.train, verify=rl_study.verify),
}
