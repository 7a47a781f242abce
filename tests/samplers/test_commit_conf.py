"""The decoders with their own loops (klass, rcr, remdm, wino) record each token's confidence at commit
(`Generation.commit_conf`) as the shared loop does: the probability the committing step's distribution
gave the committed token, NaN where nothing is committed (re-masked tokens lose theirs)."""
import pytest
import torch

from harness.registry import SAMPLERS
from tests.samplers.test_low_confidence import FixedConfidence

CONF = [0.6, 0.9, 0.7, 0.95, 0.8, 0.65, 0.75, 0.85]


@pytest.mark.parametrize("name, params", [
    ("klass", {"temperature": 0.0}),
    ("klass", {"temperature": 0.0, "block_length": 4, "steps": 4}),
    ("rcr", {"temperature": 0.0, "steps": 4}),
    ("rcr", {"temperature": 0.0, "block_length": 4, "steps": 8, "confidence": "margin"}),
    ("remdm", {"temperature": 0.0, "steps": 8}),
])
def test_commit_conf_is_the_committed_tokens_probability(name, params):
    # every position's proposal has a fixed probability whatever the context, so a token committed (or
    # re-committed after a re-mask) at any step must carry exactly its position's probability
    den = FixedConfidence(CONF, prompt_len=2)
    gen = SAMPLERS.build(name, params)(den, torch.tensor([[5, 5]]), generator=torch.Generator().manual_seed(0),
                                       gen_length=len(CONF))
    assert gen.commit_conf is not None and gen.commit_conf.shape == gen.commit_step.shape
    done = gen.commit_step >= 0
    assert done.all(), (name, params, gen.commit_step)
    torch.testing.assert_close(gen.commit_conf[0], torch.tensor(CONF), atol=1e-6, rtol=0)


def test_wino_records_confidence_only_where_a_token_stands():
    from tests.helpers import make_tiny

    den = make_tiny()
    prompt = torch.tensor([[3, 4, 5, 6], [6, 5, 4, 3]])
    gen = SAMPLERS.build("wino", {"block_length": 4})(den, prompt, generator=torch.Generator().manual_seed(0),
                                                       gen_length=8)
    done = gen.commit_step >= 0
    assert done.any() and gen.commit_conf.shape == gen.commit_step.shape
    assert torch.isfinite(gen.commit_conf[done]).all() and not torch.isfinite(gen.commit_conf[~done]).any()
    assert ((gen.commit_conf[done] > 0) & (gen.commit_conf[done] <= 1)).all()
