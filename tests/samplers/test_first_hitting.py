"""`first_hitting` against BD3-LM's own sampler: the fixture's `bd3lm_reference.BD3LMReference` runs the
real `Diffusion._semi_ar_sampler` (kuleshov-group/bd3lms 1c3e8f4 `diffusion.py`, first_hitting, no KV
cache, nucleus_p 1) on build_bd3lm.py's random-weight checkpoint (block 4); the harness decodes the
same checkpoint through the shared loop (`bd3lm` impl native) from the prompt [BOS] with a generator
seeded as the reference's global RNG. Token-identical up to the first EOS (after it the harness's
completion is padding), every block decoded (neither stops early on BD3-LM) with the reference's NFE.
Plus the rule itself on the tiny block model: one position per pass."""
from __future__ import annotations

import sys

import pytest
import torch

from harness.budget import Meter
from harness.registry import MODELS, SAMPLERS
from tests.models import _bd3lm_real as real

EOS = 50256


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    return real.build(tmp_path_factory.mktemp("bd3lm") / "ckpt")


def test_first_hitting_is_bd3lms_semi_ar_sampler(ckpt):
    d = real.bd3lm_dir()
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    from bd3lm_reference import BD3LMReference

    ref = BD3LMReference(ckpt)
    den = MODELS.build("bd3lm", {"path": str(ckpt), "device": "cpu", "dtype": "float32"}).load()
    sampler = SAMPLERS.build("first_hitting", {})
    seqlen = 16
    for seed in range(4):
        want, nfe = ref.sample(seqlen=seqlen, seed=seed)
        want = want[0, 1:]  # after BOS
        m = Meter(den)
        got = sampler(m, torch.tensor([[EOS]]), generator=[torch.Generator().manual_seed(seed)],
                      gen_length=seqlen - 1)
        raw = got.tokens[0]  # cut after the first EOS: compare up to it, and the rest by the commit record
        eos = (want == EOS).nonzero()
        upto = int(eos[0, 0]) + 1 if eos.numel() else seqlen - 1
        print(f"seed {seed}: reference nfe {nfe} harness nfe {m.cost.nfe}, first EOS at {upto} of {seqlen - 1}, "
              f"agree {bool(torch.equal(raw[:upto], want[:upto]))}")
        assert torch.equal(raw[:upto], want[:upto]), (seed, raw.tolist(), want.tolist())
        assert m.cost.nfe == nfe == seqlen - 1  # one pass per masked position, every block decoded
        assert bool((got.commit_step[0] >= 0).all())


def test_one_position_per_pass_on_a_block_model():
    from tests.models.test_tiny_block import _tokens, make_tiny_block

    den = make_tiny_block(4, scale=4.0)
    gen = SAMPLERS.build("first_hitting", {})(Meter(den), _tokens(2, 6), generator=[torch.Generator().manual_seed(i)
                                                                                for i in range(2)], gen_length=6)
    steps = gen.commit_step[0][gen.commit_step[0] >= 0]
    assert len(set(steps.tolist())) == steps.numel()  # every pass commits one position
    with pytest.raises(Exception, match="Generator"):
        SAMPLERS.build("first_hitting", {})(den, _tokens(1, 6), generator=None, gen_length=6)
