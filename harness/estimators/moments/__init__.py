"""Exact moments of the masked estimators on short items.

`exact_moments(estimator, item_table(...), options)` -> Moments: the exact mean and variance of one
estimator call (with its n_mc / m / K draws) on one item, its split into mask and t parts, and
whether it diverges without the estimator's clamp of t. Per-family code: elbo.py (t-law
estimators), other.py (prompt masks, SPG blocks, random orders, exact); the forward passes come
from one cached table per item (table.py); integrals over t are closed-form (tlaw.py).
"""
from harness.estimators.moments import elbo, orders, other  # noqa: F401  (register the families)
from harness.estimators.moments.core import MOMENTS, Moments, check_covered, exact_moments
from harness.estimators.moments.table import clear_cache, item_table

__all__ = ["MOMENTS", "Moments", "check_covered", "clear_cache", "exact_moments", "item_table"]
