"""Minimum detectable effect and sample size: formulas against hand computation and simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats.power import minimum_detectable_effect, required_sample_size

Z = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.8}


def test_mde_hand_values():
    assert minimum_detectable_effect(100, sd=1.0) == pytest.approx(Z / 10)  # 0.28016
    assert minimum_detectable_effect(100, sd=1.0, paired=False) == pytest.approx(Z * math.sqrt(2) / 10)
    assert minimum_detectable_effect(100, p=0.5) == pytest.approx(Z * 0.5 / 10)
    assert minimum_detectable_effect(100, p=0.2, paired=False) == pytest.approx(Z * math.sqrt(2 * 0.16) / 10)
    assert minimum_detectable_effect(400, discordance=0.2) == pytest.approx(Z * math.sqrt(0.2) / 20)
    z90 = 2.5758293035489004 + 1.2815515655446004  # alpha 0.01, power 0.9
    assert minimum_detectable_effect(25, sd=2.0, alpha=0.01, power=0.9) == pytest.approx(z90 * 2 / 5)


def test_required_sample_size_inverts_mde():
    assert required_sample_size(0.2, sd=1.0) == math.ceil(Z**2 / 0.04)  # 197
    for n in (10, 100, 1234):
        assert required_sample_size(minimum_detectable_effect(n, sd=1.3), sd=1.3) == n


def test_power_at_mde_by_simulation():
    rng = np.random.default_rng(31)
    n, sd = 100, 1.0
    effect = minimum_detectable_effect(n, sd=sd)
    means = rng.normal(effect, sd / math.sqrt(n), size=20000)  # sample means of n differences
    power = np.mean(np.abs(means) / (sd / math.sqrt(n)) > 1.959963984540054)
    assert power == pytest.approx(0.8, abs=0.015)


def test_argument_errors():
    with pytest.raises(ValueError):
        minimum_detectable_effect(10)
    with pytest.raises(ValueError):
        minimum_detectable_effect(10, sd=1.0, p=0.5)
    with pytest.raises(ValueError):
        minimum_detectable_effect(10, discordance=0.1, paired=False)
    with pytest.raises(ValueError):
        minimum_detectable_effect(0, sd=1.0)
