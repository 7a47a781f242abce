"""Exact gradient moments: tr Cov(∇X) and ||E∇X − ∇ELBO||² of one estimator call.

For the families whose value is linear in the masked-set sums, X = Σ_M c_M·A(M) with random
weights c (mc_elbo, coupled, quadrature_elbo, complementary_elbo, uni_elbo, one_step without
prompt masking), ∇X = Σ_M c_M ∇A(M). With the Gram matrix G[M, M'] = ∇A(M)·∇A(M') factored as
G = J Jᵀ (J = U √Λ from its eigendecomposition, r columns), the gradient's coordinates in that
basis are r scalar estimators with A replaced by a column J[:, k]:
    tr Cov(∇X) = Σ_k Var(X with A := J[:, k]),   ||E∇X − ∇ELBO||² = Σ_k (E[X] − ELBO)² with A := J[:, k]
so the exact variance code of each family is reused as it is. ∇A(M) costs one forward and one
backward pass per nonempty masked set (2^n − 1); the gradients are held in float32, hence the
limit on n (MAX_GRAD_LEN).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from harness.estimators._common import completion_logprobs
from harness.estimators.moments.core import check_covered
from harness.types import HarnessError

MAX_GRAD_LEN = 8  # 2^8 − 1 gradients of the tiny model (0.8 M parameters): ~0.8 GB in float32
LINEAR = ("mc_elbo", "coupled", "quadrature_elbo", "complementary_elbo", "uni_elbo", "one_step")


def masked_set_grads(denoiser, table, params: list) -> np.ndarray:
    """-> Gram matrix [2^n, 2^n] float64 of ∇A(M) (row/column 0, M = ∅, is zero)."""
    n = table.n
    if n > MAX_GRAD_LEN:
        raise HarnessError(f"exact gradient moments: the item has {n} scored tokens, more than "
                           f"MAX_GRAD_LEN={MAX_GRAD_LEN} (2^n − 1 parameter gradients are held in memory)")
    P = sum(p.numel() for p in params)
    J = torch.zeros(1 << n, P, dtype=torch.float32)
    S = torch.nonzero(table.completion_mask)[:, 0]  # [n] scored positions
    for M in range(1, 1 << n):
        bits = torch.tensor([(M >> i) & 1 for i in range(n)], dtype=torch.bool)
        masked = torch.zeros_like(table.completion_mask)
        masked[S[bits]] = True
        noised = torch.where(masked | table.hide, denoiser.mask_id, table.completion)
        lp = completion_logprobs(denoiser, table.prompt[None], table.prompt_mask[None], table.completion[None],
                                 noised[None, None], table.max_tokens)[0, 0]  # [L]
        A = lp[masked].double().sum()
        grads = torch.autograd.grad(A, params, allow_unused=True)
        J[M] = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                          for g, p in zip(grads, params)])
    G = torch.zeros(1 << n, 1 << n, dtype=torch.float64)
    for lo in range(0, P, 1 << 17):  # float64 Gram, in column chunks
        Jc = J[:, lo:lo + (1 << 17)].double()
        G += Jc @ Jc.T
    return G.numpy()


def factor(G: np.ndarray, rel_tol: float = 1e-12) -> np.ndarray:
    """G = F Fᵀ with F [2^n, r] (eigenvalues below rel_tol·max dropped)."""
    w, U = np.linalg.eigh(G)
    keep = w > rel_tol * max(float(w.max()), 0.0)
    return U[:, keep] * np.sqrt(w[keep])


def gradient_moments(estimator, table, G: np.ndarray, options: dict | None = None) -> dict:
    """{"trace_cov", "bias_sq" (vs ∇ELBO), "elbo_grad_norm"} of one estimator call, exactly."""
    fam = check_covered(estimator, options)
    name = getattr(type(estimator), "registry_name", "")
    if name not in LINEAR or (name == "one_step" and estimator.p_prompt > 0):
        raise HarnessError(f"exact gradient moments cover the estimators linear in the masked-set sums "
                           f"({', '.join(LINEAR)}; one_step without prompt masking), not {name!r}")
    F = factor(G)
    trace = bias = norm = 0.0
    for k in range(F.shape[1]):
        view = copy.copy(table)
        view.A = F[:, k]
        m = fam.fn(estimator, view, options or {})
        e = view.elbo()
        trace += m.var
        bias += (m.mean - e) ** 2
        norm += e * e
    return {"trace_cov": trace, "bias_sq": bias, "elbo_grad_norm": norm ** 0.5, "rank": int(F.shape[1])}
