"""Exact moments of the fixed-order estimators: `left_to_right` (JustGRPO's exact likelihood).

Left-to-right scoring draws nothing: its value is Σ_i lp[M_i, i] with M_i the scored positions
i..n−1 masked (bit j of the table's bitmask = the j-th scored position), so the exact mean is that
value and the variance 0. The value equals the estimator's only when the item's unscored positions
are treated alike (the table's padding rule): both keep them clean unless the table hides them.
"""
from __future__ import annotations

from harness.estimators.moments.core import ANY, Moments, register


@register("left_to_right", {"max_tokens": ANY})
def left_to_right(est, table, options) -> Moments:
    full = table.full
    value = sum(float(table.lp[full ^ ((1 << i) - 1), i]) for i in range(table.n))
    return Moments(value, 0.0, None, None, notes=["deterministic: one fixed decoding order"])
