"""The exact-moment registry: one function per registered estimator name, and what it covers.

`MOMENTS[name] = Family(fn, covers)`: fn(estimator, table, options) -> Moments, exact for the
estimator exactly as configured; `covers` maps every dataclass field of the estimator to the
values the computation handles (a tuple of allowed values, a predicate, or None for fields that
cannot change the value, e.g. max_tokens). `check_covered` refuses an estimator whose fields or
values are not all covered, naming the field, so an estimator that gains a parameter (or a value)
fails loudly here instead of being computed under a silent assumption.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from harness.types import HarnessError

ANY = None  # a field that does not change the value (chunking)


@dataclass
class Moments:
    """Exact moments of one estimator call's sequence value on one item (estimator's own scale).

    var_within = E_t[Var(X | t)] (the mask, and prompt-mask, part), var_between = Var_t(E[X | t])
    (the mask-ratio part; the count l for count laws); both None where the estimator draws no t.
    `divergent`: the variance is infinite without the estimator's clamp of t (`truncation` says
    which clamp makes it finite, `var_unclamped` is then inf).
    """

    mean: float
    var: float
    var_within: float | None = None
    var_between: float | None = None
    draws: int = 1
    divergent: bool = False
    truncation: str = ""
    var_unclamped: float | None = None
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Family:
    fn: Callable
    covers: dict


MOMENTS: dict[str, Family] = {}


def register(name: str, covers: dict):
    def deco(fn):
        MOMENTS[name] = Family(fn, covers)
        return fn
    return deco


def _registered_name(estimator) -> str:
    return getattr(type(estimator), "registry_name", type(estimator).__name__)


def check_covered(estimator, options: dict | None = None) -> Family:
    """The estimator's exact-moment family, after checking every parameter is covered (else a
    HarnessError that names the estimator, the parameter and the covered values)."""
    name = _registered_name(estimator)
    if name not in MOMENTS:
        raise HarnessError(f"exact moments: estimator {name!r} has no exact-moment computation "
                           f"(covered: {', '.join(sorted(MOMENTS))})")
    fam = MOMENTS[name]
    for f in dataclasses.fields(estimator):
        value = getattr(estimator, f.name)
        if f.name not in fam.covers:
            raise HarnessError(f"exact moments of {name!r}: parameter {f.name}={value!r} is not covered "
                               f"(the computation knows {', '.join(sorted(fam.covers))}); extend "
                               "harness/estimators/moments before trusting exact values for it")
        rule = fam.covers[f.name]
        ok = True if rule is ANY else (rule(value) if callable(rule) else value in rule)
        if not ok:
            what = "a condition in harness/estimators/moments" if callable(rule) else f"one of {list(rule)}"
            raise HarnessError(f"exact moments of {name!r}: {f.name}={value!r} is not covered (expected {what})")
    return fam


def exact_moments(estimator, table, options: dict | None = None) -> Moments:
    """Exact mean and variance of one call of `estimator` on the item of `table` (item_table)."""
    fam = check_covered(estimator, options)
    m = fam.fn(estimator, table, options or {})
    if not math.isfinite(m.mean):
        raise HarnessError(f"exact moments of {_registered_name(estimator)!r}: the mean is not finite ({m.mean})")
    return m


def combine(parts: list[tuple[float, float, float, float]], scale: float = 1.0) -> tuple:
    """Independent draws -> (mean, var, within, between) of scale · Σ_i X_i, from each draw's
    (mean, var, within, between)."""
    mean = scale * sum(p[0] for p in parts)
    var, within, between = (scale ** 2 * sum(p[k] for p in parts) for k in (1, 2, 3))
    return mean, var, within, between
