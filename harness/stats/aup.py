"""AUP, accuracy under parallelism: one number for a decoder's accuracy across its parallelism.

Definition of hao-ai-lab/d3LLM (Qian et al. 2026, arXiv 2601.07568; `AUP_leaderboard/aup_utils.py`,
`get_aup` and `weight_function`), re-implemented: for (rho_i, y_i) pairs, rho the tokens per forward
pass (TPF, machine-independent) and y the accuracy in percent, sorted by rho,

    AUP = rho_1 y_1 + sum_{i>1} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2,
    W(y) = min(exp(-alpha (1 - y / y_max)), 1),

with alpha = 3, y_max the best accuracy among all the methods compared on the task, and only the pairs
whose accuracy is at least y_1 - 5 (y_1: the accuracy at the lowest TPF). d3LLM's function refuses a
curve whose last point is more than 5 points below y_1; here such points are dropped (and counted) so
that a report can still say what the curve scores over its admissible part.
"""
from __future__ import annotations

import math

ALPHA = 3.0
Y_MIN_OFFSET = 5.0


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0) if y_max > 0 else 1.0


def aup(points: list[tuple[float, float]], y_max: float, alpha: float = ALPHA,
        offset: float = Y_MIN_OFFSET) -> tuple[float, int]:
    """(AUP, number of pairs dropped below y_1 - offset) of (TPF, accuracy %) pairs; TPF > 0."""
    if not points:
        raise ValueError("aup: no (TPF, accuracy) pairs")
    if any(not (r > 0) for r, _ in points):
        raise ValueError("aup: tokens per forward must be > 0")
    pts = sorted(points, key=lambda p: p[0])
    y_min = pts[0][1] - offset
    kept = [p for p in pts if p[1] >= y_min]
    total = kept[0][0] * kept[0][1]
    for (r0, y0), (r1, y1) in zip(kept, kept[1:]):
        total += 0.5 * (r1 - r0) * (y1 * weight(y1, y_max, alpha) + y0 * weight(y0, y_max, alpha))
    return total, len(pts) - len(kept)
