"""Minimum detectable effect (MDE) and required sample size, normal approximation.

For a two-sided test at level ``alpha`` with power ``power`` (e.g. Chow, Shao & Wang, *Sample Size
Calculations in Clinical Research*, 2008, ch. 3-4; Cohen 1988):

    MDE = (z_{1 - alpha/2} + z_{power}) · sd_eff / sqrt(n)

where ``z_q = Phi^-1(q)`` and ``sd_eff`` is the standard deviation of what one unit contributes:

- mean difference, ``paired=True``: ``sd`` is the sd of the per-unit (per-item) differences;
  ``sd_eff = sd``. This is also the one-sample case (a mean against a fixed reference).
- mean difference, ``paired=False``: two independent groups of ``n`` units each, common ``sd``;
  ``sd_eff = sd · sqrt(2)``.
- proportion ``p`` (``paired=True``): ``sd_eff = sqrt(p (1 - p))``, the smallest shift of a
  proportion away from ``p`` that ``n`` binary units detect (one sample / fixed reference);
  ``paired=False``: two independent arms, ``sd_eff = sqrt(2 p (1 - p))``.
- paired binary outcomes with discordance rate ``d`` (share of pairs whose outcomes differ, the
  McNemar setting): the per-pair difference is in {-1, 0, 1} with variance ``d - delta^2 ≈ d`` for
  small effects, so ``sd_eff = sqrt(d)``.

The required n for an effect is the same relation solved for n, rounded up:
``n = ceil(((z_{1-alpha/2} + z_{power}) · sd_eff / effect)^2)``. The normal approximation is
slightly optimistic for small n (Student-t quantiles are wider).
"""
from __future__ import annotations

import math

from scipy.stats import norm


def _sd_eff(sd, p, discordance, paired: bool) -> float:
    given = [v is not None for v in (sd, p, discordance)]
    if sum(given) != 1:
        raise ValueError("give exactly one of sd, p, discordance")
    if sd is not None:
        if sd < 0:
            raise ValueError("sd must be >= 0")
        return sd if paired else sd * math.sqrt(2.0)
    if p is not None:
        if not 0 <= p <= 1:
            raise ValueError("p must be in [0, 1]")
        return math.sqrt(p * (1 - p) * (1 if paired else 2))
    if not paired:
        raise ValueError("discordance describes paired binary outcomes (paired=True)")
    if not 0 <= discordance <= 1:
        raise ValueError("discordance must be in [0, 1]")
    return math.sqrt(discordance)


def z_sum(alpha: float = 0.05, power: float = 0.8) -> float:
    """``z_{1 - alpha/2} + z_{power}`` (two-sided test)."""
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def minimum_detectable_effect(n: int, *, sd: float | None = None, p: float | None = None,
                              discordance: float | None = None, alpha: float = 0.05, power: float = 0.8,
                              paired: bool = True) -> float:
    """Smallest true effect that a two-sided level-``alpha`` test detects with probability ``power``.

    ``(z_{1-alpha/2} + z_power) · sd_eff / sqrt(n)``; see the module docstring for ``sd_eff`` given
    ``sd`` (mean difference), ``p`` (proportion) or ``discordance`` (paired binary). ``n`` is the
    number of pairs (paired) or the size of each group (unpaired).
    """
    if n <= 0:
        raise ValueError("n must be positive")
    return z_sum(alpha, power) * _sd_eff(sd, p, discordance, paired) / math.sqrt(n)


def required_sample_size(effect: float, *, sd: float | None = None, p: float | None = None,
                         discordance: float | None = None, alpha: float = 0.05, power: float = 0.8,
                         paired: bool = True) -> int:
    """Smallest n whose minimum detectable effect is at most ``effect`` (same approximation)."""
    if effect <= 0:
        raise ValueError("effect must be positive")
    return max(1, math.ceil((z_sum(alpha, power) * _sd_eff(sd, p, discordance, paired) / effect) ** 2 - 1e-9))
