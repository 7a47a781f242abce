"""pass@k with the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code", eq. 1: pass@k = E[1 - C(n-c, k) / C(n, k)] over problems, for n samples of
which c pass.
"""
from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples with c correct (requires 0 <= c <= n, 1 <= k <= n).

    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), computed as a product of ratios so that
    large n cannot overflow.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)  # [c]
    return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(samples: list[tuple[int, int]], k: int) -> float:
    """Average pass@k over problems given (n, c) per problem."""
    if not samples:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return float(np.mean([pass_at_k(n, c, k) for n, c in samples]))
