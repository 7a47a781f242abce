"""The meter counts what the model does, not what components claim."""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter, attention_flops
from harness.registry import ESTIMATORS, SAMPLERS
from harness.types import ArchInfo, Budget, BudgetExceeded


class CountingDenoiser:
    """A toy denoiser with a known architecture that counts its own calls and rows."""

    mask_id, eos_id, pad_id, vocab_size, shift_logits, tokenizer = 1, 2, 0, 8, False, None
    device = torch.device("cpu")
    arch = ArchInfo(n_params=1000, n_layers=2, d_model=16)

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def logits(self, x, attention_mask=None):
        self.calls += 1
        self.rows += x.shape[0]
        return torch.zeros(*x.shape, self.vocab_size)


def test_counts_nfe_tokens_flops_of_known_calls():
    inner = CountingDenoiser()
    meter = Meter(inner)
    for batch, T in ((3, 10), (5, 7)):
        meter.logits(torch.zeros(batch, T, dtype=torch.long))
    c = meter.cost
    assert (inner.calls, c.nfe, c.nfe_full, c.nfe_cached) == (2, 8, 8, 0)
    assert c.tokens == 3 * 10 + 5 * 7
    want = 2.0 * 1000 * c.tokens + attention_flops(2, 16, 3, 10, 10) + attention_flops(2, 16, 5, 7, 7)
    assert c.flops == pytest.approx(want)
    assert c.wall_s > 0 and c.peak_mem > 0


def test_budget_stops_before_the_call_that_would_exceed_it():
    inner = CountingDenoiser()
    meter = Meter(inner, Budget(nfe=10))
    meter.logits(torch.zeros(6, 4, dtype=torch.long))
    with pytest.raises(BudgetExceeded) as err:
        meter.logits(torch.zeros(6, 4, dtype=torch.long))
    assert err.value.what == "nfe" and err.value.limit == 10
    assert inner.calls == 1 and meter.cost.nfe == 6  # the refused call never ran


def test_mc_elbo_nfe_is_samples_times_batch_whatever_the_chunking():
    inner = CountingDenoiser()
    meter = Meter(inner)
    B, P, L, n = 3, 4, 5, 7
    est = ESTIMATORS.build("mc_elbo", {"n_mc": n, "max_tokens": 4 * (P + L)})  # 4 rows per pass
    prompt = torch.full((B, P), 5)
    completion = torch.full((B, L), 6)
    est(meter, prompt, completion, torch.ones(B, L, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    assert meter.cost.nfe == B * n == inner.rows
    assert inner.calls == -(-B * n // 4)


def test_low_confidence_nfe_matches_its_declared_plan():
    from tests.helpers import make_tiny

    meter = Meter(make_tiny())
    sampler = SAMPLERS.build("low_confidence", {"steps": 4, "block_length": 2})
    prompt = torch.tensor([[3, 4, 5]] * 2)
    sampler(meter, prompt, generator=None, gen_length=4)
    assert meter.cost.nfe == 2 * sampler.max_nfe_per_sequence(4) == 8
