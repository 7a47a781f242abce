"""The decoding options that reproduce each model's published setup, on hand-built denoisers:
Dream's step schedule, LLaDA's EOS/EOT options (ML-GSAI/LLaDA `generate.py`, `generate`:
`logits_eos_inf`, `confidence_eos_eot_inf`), the confidence dtype, and stop ids."""
from __future__ import annotations

import pytest
import torch

from harness.registry import SAMPLERS
from harness.samplers._schedule import dream_schedule, linear_schedule, resolve_schedule
from harness.types import HarnessError
from tests.samplers.toys import EOS, TableDenoiser

EOT = 11  # a second stop token, as LLaDA's <|eot_id|>
P = 2


def run_counts(schedule, n: int, steps: int) -> list[int]:
    m, out = torch.tensor([n]), []
    for s in range(steps):
        k = int(schedule(torch.tensor([n]), m, s, steps))
        out.append(k)
        m = m - k
    return out


def test_dream_schedule_counts():
    """int(m · (1 − t_{s+1}/t_s)) on t = linspace(1, 1e-3, steps + 1), the rest at the last step.
    16 tokens in 8 steps: the counts Dream's diffusion_generate committed on the real-code fixture
    (tests/samplers/test_parity_decode.py checks them against the reference step by step)."""
    assert run_counts(dream_schedule, 16, 8) == [1, 2, 2, 2, 2, 2, 2, 3]
    assert run_counts(dream_schedule, 16, 16)[0] == 0  # 16 · (1 − 0.93756) = 0.999 -> 0: a step may commit nothing
    assert sum(run_counts(dream_schedule, 24, 5)) == 24
    assert run_counts(linear_schedule, 10, 4) == [3, 3, 2, 2]  # LLaDA: remainder first


def test_schedule_auto_reads_the_model_family():
    den = TableDenoiser([[1.0]], P)
    assert resolve_schedule("auto", den) is linear_schedule
    den.decode_defaults = {"schedule": "dream"}
    assert resolve_schedule("auto", den) is dream_schedule
    den.decode_defaults = {"schedule": "cosine"}
    with pytest.raises(HarnessError, match="cosine"):
        resolve_schedule("auto", den)
    with pytest.raises(HarnessError, match="schedule.*cosine"):  # a plan-time error
        SAMPLERS.build("low_confidence", {"schedule": "cosine"})


def decode(den, **params):
    sampler = SAMPLERS.build("low_confidence", {"steps": 2, **params})
    prompt = torch.full((1, P), 5)
    return sampler(den, prompt, generator=torch.Generator().manual_seed(0), gen_length=2)


def eot_table():
    # position 0 proposes EOT (id 11) with p 0.95, position 1 proposes id 3 with p 0.6
    return TableDenoiser([[0.01] * 8 + [0.95], [0.6, 0.3]], P)


def test_generation_stops_at_a_declared_stop_id():
    den = eot_table()
    assert decode(den).gen_len.tolist() == [2]  # EOT is an ordinary token unless declared
    den.stop_ids = (EOS, EOT)
    out = decode(den)
    assert out.tokens.tolist() == [[EOT, EOS]] and out.gen_len.tolist() == [1]


def test_confidence_eos_eot_inf_commits_eot_last():
    den = eot_table()
    den.stop_ids = (EOS, EOT)
    assert decode(den).commit_step.tolist() == [[0, 1]]  # EOT is the most confident: first
    out = decode(den, confidence_eos_eot_inf=True)
    assert out.commit_step.tolist() == [[1, 0]]  # its confidence is 0 now: last
    assert out.tokens[0, 0].item() == EOT  # still proposed and committed


def test_confidence_eos_eot_inf_covers_eos_only_at_temperature_zero():
    """The reference writes EOS's -inf into the noised logits: the confidence sees it only when
    they are the logits themselves (temperature 0)."""
    den = TableDenoiser([[0.02], [0.6, 0.3]], P, eos=[0.97, 0.0])  # position 0 proposes EOS
    assert decode(den).commit_step.tolist() == [[0, 1]]
    assert decode(den, confidence_eos_eot_inf=True).commit_step.tolist() == [[1, 0]]
    probs = SAMPLERS.build("low_confidence", {"confidence_eos_eot_inf": True, "temperature": 1.0}).step_probs(
        den.log_probs[None].clone(), den)
    assert probs[0, 0, EOS] > 0.9  # at temperature > 0 EOS keeps its confidence


def test_logits_eos_inf_never_proposes_eos():
    den = TableDenoiser([[0.02], [0.6, 0.3]], P, eos=[0.97, 0.0])
    assert decode(den).tokens[0, 0].item() == EOS
    out = decode(den, logits_eos_inf=True)
    assert out.tokens[0].tolist() == [3, 3] and EOS not in out.tokens[0, :1].tolist()


@pytest.mark.parametrize("dtype,expected", [("float32", torch.float32), ("float64", torch.float64),
                                            ("model", torch.bfloat16)])
def test_confidence_dtype(dtype, expected):
    den = eot_table()
    logits = den.log_probs[None].to(torch.bfloat16)
    probs = SAMPLERS.build("low_confidence", {"confidence_dtype": dtype}).step_probs(logits, den)
    assert probs.dtype == expected
    with pytest.raises(HarnessError, match="confidence_dtype"):
        SAMPLERS.build("low_confidence", {"confidence_dtype": "float16"})
