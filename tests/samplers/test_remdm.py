"""ReMDM: re-masking of committed tokens, its schedules, and the recorded (last) commit steps."""
from __future__ import annotations

import math

import pytest
import torch

from harness.registry import SAMPLERS
from tests.helpers import Recorder
from tests.samplers.toys import MASK


def remask_events(calls, P):
    """(call index, position) pairs where a committed position is masked again at the next call."""
    out = []
    for i in range(len(calls) - 1):
        before, after = calls[i][:, P:] != MASK, calls[i + 1][:, P:] == MASK
        for b, k in (before & after).nonzero().tolist():
            out.append((i, b, k))
    return out


def decode(params, gen_length=6, seed=0, batch=4):
    from tests.helpers import make_tiny

    den = Recorder(make_tiny())
    prompt = torch.randint(3, 20, (batch, 4), generator=torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    gen = SAMPLERS.build("remdm", params)(den, prompt, generator=gens, gen_length=gen_length)
    return gen, den.inputs


@pytest.mark.parametrize("schedule", ["cap", "rescale", "conf", "loop"])
def test_remasks_and_records_the_last_commit(schedule):
    params = {"schedule": schedule, "eta": 1.0 if schedule != "loop" else 0.5, "steps": 18}
    gen, calls = decode(params)
    events = remask_events(calls, 4)
    assert events, "no committed token was ever re-masked"
    assert len(calls) == gen.steps == 18
    cs = gen.commit_step
    assert (cs >= 0).all() and (cs < 18).all()
    final = torch.cat([calls[-1][:, 4:]], 0)
    for b in range(4):
        for k in range(6):
            # the recorded step is the last call whose input still had the position masked
            masked_at = [i for i, x in enumerate(calls) if x[b, 4 + k] == MASK]
            assert cs[b, k].item() == max(masked_at)
    assert (gen.tokens != MASK).all() and final.shape == (4, 6)


def test_committed_count_follows_the_schedule():
    steps, L = 9, 6
    sampler = SAMPLERS.build("remdm", {"eta": 1.0, "steps": steps})
    gen, calls = decode({"eta": 1.0, "steps": steps}, gen_length=L)
    for i in range(1, steps):
        s = 1 - i / steps  # the time reached after step i - 1
        want = min(L - 1, math.ceil(sampler.alpha(s) * L - 1e-9))
        assert sampler.target(s, L) == want
        assert ((calls[i][:, 4:] != MASK).sum(1) == want).all()


def test_sigma_schedules_by_hand():
    cap = SAMPLERS.build("remdm", {"eta": 0.3})
    assert cap.sigma(0.5, 0.4) == pytest.approx(0.3)  # min(0.3, 0.4 / 0.5)
    assert cap.sigma(0.2, 0.1) == pytest.approx(0.125)  # min(0.3, 0.1 / 0.8)
    resc = SAMPLERS.build("remdm", {"schedule": "rescale", "eta": 0.5})
    assert resc.sigma(0.2, 0.1) == pytest.approx(0.0625)  # 0.5 * min(1, 0.125)
    conf = SAMPLERS.build("remdm", {"schedule": "conf"})
    assert conf.sigma(0.9, 0.8) == pytest.approx(1.0) and conf.sigma(0.2, 0.1) == pytest.approx(0.125)
    windowed = SAMPLERS.build("remdm", {"eta": 0.3, "t_on": 0.6, "t_off": 0.3})
    assert windowed.sigma(0.7, 0.6) == 0 and windowed.sigma(0.3, 0.2) == 0 and windowed.sigma(0.5, 0.4) > 0
    loop = SAMPLERS.build("remdm", {"schedule": "loop", "eta": 0.2})
    assert loop.window == (0.55, 0.05)
    assert loop.alpha(0.55) == pytest.approx(0.9) and loop.alpha(0.3) == pytest.approx(0.9)
    assert loop.alpha(0.0) == pytest.approx(1.0) and loop.alpha(1.0) == pytest.approx(0.0)
    assert loop.sigma(0.5, 0.45) == 0.2 and loop.sigma(0.8, 0.75) == 0 and loop.sigma(0.04, 0.0) == 0


def test_loop_remasks_only_inside_its_window():
    steps = 20
    gen, calls = decode({"schedule": "loop", "eta": 0.5, "steps": steps})
    events = remask_events(calls, 4)
    assert events
    for i, _, _ in events:
        t = 1 - i / steps
        assert 0.05 < t <= 0.55


def test_conf_remasks_unsure_tokens_first():
    """conf spreads sigma_max over committed tokens by softmax(-psi): with one sure and one unsure
    token the unsure one is re-masked more often."""
    from tests.samplers.toys import TableDenoiser

    # position 0 is certain (p=1 on token 3), position 1 is a coin flip.
    den = TableDenoiser([[1.0], [0.5, 0.5]], prompt_len=1)
    sampler = SAMPLERS.build("remdm", {"schedule": "conf", "steps": 8})
    psi = torch.tensor([[1.0, 0.5]])
    hits = torch.zeros(2)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        hits += sampler._remask(torch.ones(1, 2, dtype=torch.bool), psi, 1.0, 2, g)[0].float()
    p = torch.softmax(-psi[0], 0)
    assert hits[1] > hits[0]
    assert torch.allclose(hits / 2000, p, atol=0.04)
    gen = sampler(den, torch.tensor([[5]]), generator=torch.Generator().manual_seed(0), gen_length=2)
    assert gen.tokens[0, 0].item() == 3


def test_eta_zero_is_low_confidence_on_the_time_grid(tiny_addition, addition_prompts):
    ids, mask = addition_prompts
    a = SAMPLERS.build("remdm", {"eta": 0.0, "steps": 5})(tiny_addition, ids, generator=torch.Generator(),
                                                         prompt_mask=mask, gen_length=5)
    b = SAMPLERS.build("low_confidence", {})(tiny_addition, ids, generator=None, prompt_mask=mask, gen_length=5)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
