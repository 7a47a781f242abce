"""The shared conformance fixture: per-token log-probs of θ, θ_old and θ_ref on a completion canvas
with EOS padding, rewards and group structure; and helpers that score the harness loss against a
reference function written from the public reference code's equations.

`fixture(seed)` builds, in float64 (so agreement to 1e-6 is a statement about the formula, not
rounding): G = 4 completions for each of 2 prompts (B = 8 rows), a canvas of T = 7 positions, each
row's completion of random length 2..7 (up to and including its first EOS) followed by padding, and
binary rewards chosen so every group has a spread. seed = 0 is the fixed fixture; other seeds are
the random fixtures. Log-probs of θ are leaves with gradients.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from harness.types import Estimate

G, N_GROUPS, T = 4, 2, 7
B = G * N_GROUPS
D = torch.float64


def fixture(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(2, T + 1, (B,), generator=g)  # completion incl. its EOS
    completion_mask = torch.arange(T)[None, :] < length[:, None]  # [B, T]
    logp = (-torch.rand(B, T, generator=g, dtype=D) * 3).requires_grad_(True)  # [B, T] θ
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=D)  # θ_old: ratios e^{±}
    ref = logp.detach() + 0.5 * torch.randn(B, T, generator=g, dtype=D)
    rewards = torch.randint(0, 2, (B,), generator=g).double()
    rewards[::G] = 1.0  # every group has a spread: one right, one wrong at least
    rewards[1::G] = 0.0
    group = torch.arange(N_GROUPS).repeat_interleave(G)
    return {"logp": logp, "old": old, "ref": ref, "completion_mask": completion_mask, "rewards": rewards,
            "group": group, "length": length}


def estimate(per_token: torch.Tensor, scored: torch.Tensor, draws: dict | None = None) -> Estimate:
    """An Estimate whose per-token terms are `per_token` on the scored positions (0 elsewhere)."""
    pt = torch.where(scored, per_token, torch.zeros_like(per_token))
    return Estimate(per_token=pt, sequence=pt.sum(1), draws=draws or {}, n=1)


def batch(fx: dict, mask: torch.Tensor) -> dict:
    """The loop's batch for the whole buffer in one micro-batch, counting `mask`."""
    return {"mask": mask, "completion_mask": fx["completion_mask"], "group": fx["group"], "n_seq": B,
            "n_tok": int(mask.sum()), "n_groups": N_GROUPS, "length": T}


def harness_loss(algo, fx: dict, adv: torch.Tensor, scored: torch.Tensor | None = None,
                 with_ref: bool = True) -> torch.Tensor:
    """The algorithm's loss on the fixture: θ, θ_old (and θ_ref) terms on `scored` positions (default:
    the completion mask), which the batch also counts."""
    s = fx["completion_mask"] if scored is None else scored
    ref = estimate(fx["ref"], s) if with_ref else None
    loss, _ = algo.loss(batch(fx, s), estimate(fx["logp"], s), estimate(fx["old"], s), ref, adv)
    return loss


def assert_conforms(harness_loss: torch.Tensor, reference_loss: torch.Tensor, leaf: torch.Tensor, tol=1e-6):
    """Loss and its gradient with respect to θ's per-token log-probs agree to `tol`."""
    (g_h,) = torch.autograd.grad(harness_loss, leaf, retain_graph=True, allow_unused=True)
    (g_r,) = torch.autograd.grad(reference_loss, leaf, retain_graph=True, allow_unused=True)
    assert g_h is not None and g_r is not None, "both losses must depend on θ"
    torch.testing.assert_close(harness_loss, reference_loss, rtol=0, atol=tol)
    torch.testing.assert_close(g_h, g_r, rtol=0, atol=tol)
    assert float(g_r.abs().sum()) > 0  # the gradient is not trivially zero


SEEDS = [0, 1, 2, 3, 4]  # 0: the fixed fixture; the others: random fixtures


def toy_rollout(seed: int = 0, n: int = 4, P: int = 3, L: int = 6):
    """A float64 tiny MDLM and n EOS-padded completions: -> (denoiser, prompt, prompt_mask, completion,
    completion_mask), for the likelihood-term conformance tests."""
    from tests.helpers import make_tiny

    den = make_tiny(seed=seed, max_len=P + L, d_model=16)
    den.module.double()
    g = torch.Generator().manual_seed(seed + 1)
    V, eos = den.vocab_size, den.eos_id
    ok = torch.tensor([v for v in range(V) if v not in (den.mask_id, eos)])
    prompt = ok[torch.randint(len(ok), (n, P), generator=g)]
    completion = ok[torch.randint(len(ok), (n, L), generator=g)]
    length = torch.randint(1, L + 1, (n,), generator=g)  # tokens before the EOS
    pos = torch.arange(L)[None, :]
    completion = torch.where(pos >= length[:, None], torch.full_like(completion, eos), completion)
    completion_mask = pos <= length[:, None]  # up to and including the first EOS
    return den, prompt, torch.ones_like(prompt, dtype=torch.bool), completion, completion_mask


def target_logp(den, prompt: torch.Tensor, noised: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """log p(completion_k | prompt, noised) at every completion position: [n, P], [n, L] -> [n, L]
    (the reference trainers' `-cross_entropy(logits[:, -L:], targets)`)."""
    with torch.no_grad():
        logits = den.logits(torch.cat([prompt, noised], 1))[:, -noised.shape[1]:]
    return -torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), completion.reshape(-1),
                                              reduction="none").view_as(completion).double()


@functools.lru_cache(maxsize=None)
def suite_params(suite: str = "suites/rl.yaml") -> dict:
    """{algorithm: params} of the rl cells of a suite, as its plan resolves them (what the suite runs)."""
    from harness.config import load_suite, plan

    root = Path(__file__).resolve().parents[3]
    return {c.component.name: dict(c.component.params) for c in plan(load_suite(root / suite)) if c.kind == "rl"}


def micro_harness_loss(algo, fx: dict, adv: torch.Tensor, terms: tuple, mask: torch.Tensor) -> tuple:
    """The algorithm's loss on the fixture buffer as the RL loop computes it, over the micro-batches its
    declared structure makes (harness.algorithms.loop.micro_batches / micro_batch_loss). `terms` are
    (policy, old, ref) Estimates of the whole buffer (None where absent). -> (loss, row index parts)."""
    from dataclasses import replace

    from harness.algorithms.loop import micro_batch_loss, micro_batches

    parts, local = micro_batches(algo, 0, N_GROUPS, G)
    totals = {"n_seq": B, "n_tok": int(mask.sum()), "n_groups": N_GROUPS, "length": T}
    cut = lambda e, idx: None if e is None else replace(  # noqa: E731
        e, per_token=e.per_token[idx], sequence=e.sequence[idx],
        draws={k: v[idx] for k, v in e.draws.items()}, **({"upper": e.upper[idx]} if hasattr(e, "upper") else {}))
    total = 0
    for idx in parts:
        b = {"mask": mask[idx], "completion_mask": fx["completion_mask"][idx],
             "group": fx["group"][idx] - fx["group"][idx].min()}
        loss, _ = micro_batch_loss(algo, b, totals, local, *(cut(e, idx) for e in terms), adv[idx])
        total = total + loss
    return total, parts
