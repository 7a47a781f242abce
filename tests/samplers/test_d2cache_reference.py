"""`cache: d2cache` and `prior_sigma` against Kamichanw/d2Cache's own code (opt-in).

Set DLM_HARNESS_D2CACHE to a checkout of https://github.com/Kamichanw/d2Cache (checked at 72feb60).
The reference decodes (`vanilla_generate` with `d2Cache`, in a subprocess:
tests/samplers/_d2cache_reference_worker.py) on its own LLaDA file with eager attention, loaded from
the real-code fixture's random-weight LLaDA checkpoint (LLaDA's vocabulary and special ids; its head
never predicts the mask); the harness decodes with `low_confidence` on its native LLaDA from the same
checkpoint. Every setting below gives the same tokens, three rows decoded together: the reference's
d2Cache defaults, its evaluation setting (with the certainty prior, one block), a small query budget
(current_k below the block's masks: non-query masks stay eligible with zero logits), semi-autoregressive
blocks with inflation, no rollout nucleus, the certainty prior alone, and parallel decoding (the
reference's `threshold`, the harness's adaptive `threshold` sampler, whose rows leave the batch when
their block is done). Skipped without the fixture or
the checkout (tests/samplers/test_d2cache.py holds the always-run transcription).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.registry import MODELS, SAMPLERS
from tests.models import _real_code as rc

pytestmark = pytest.mark.slow  # a 60-75 MB checkpoint; every pass has a 126k vocabulary

DEFAULT = {"rollout_p": 0.1, "current_k": 32, "sigma": 10.0, "inflate_w": 0}
CASES = {
    "prior_only": {"L": 32, "block": 32, "n": 1, "sigma": 10.0},
    "prior_semi_ar": {"L": 32, "block": 8, "n": 2, "sigma": 2.0},
    "defaults": {"L": 32, "block": 32, "n": 1, "cache": DEFAULT},
    "evaluation_setting": {"L": 32, "block": 32, "n": 1, "sigma": 10.0, "cache": DEFAULT},
    "small_query_budget": {"L": 32, "block": 32, "n": 1, "cache": dict(DEFAULT, current_k=4)},
    "semi_ar_inflate": {"L": 32, "block": 8, "n": 2, "cache": dict(DEFAULT, rollout_p=0.3, current_k=6, sigma=3.0,
                                                                    inflate_w=4)},
    "semi_ar_prior": {"L": 32, "block": 8, "n": 1, "sigma": 5.0, "cache": dict(DEFAULT, rollout_p=0.05, current_k=3)},
    "no_nucleus": {"L": 32, "block": 16, "n": 2, "cache": dict(DEFAULT, rollout_p=0.0, current_k=5)},
    # parallel decoding (the reference's `threshold`; the harness's adaptive `threshold` sampler): rows whose
    # block is done leave the batch and come back at the next block
    "threshold": {"L": 32, "block": 8, "n": 1, "threshold": 0.5, "cache": dict(DEFAULT, current_k=6, inflate_w=4)},
    "threshold_one_block": {"L": 32, "block": 32, "n": 1, "threshold": 0.5, "cache": DEFAULT},
}


def d2cache_checkout() -> Path:
    path = os.environ.get("DLM_HARNESS_D2CACHE")
    if not path or not (Path(path) / "src" / "cache" / "d2cache.py").is_file():
        pytest.skip("set DLM_HARNESS_D2CACHE to a checkout of Kamichanw/d2Cache to run its own code")
    return Path(path)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    repo = d2cache_checkout()
    real = rc.require()
    tmp = tmp_path_factory.mktemp("d2cache")
    path = rc.build("llada", tmp / "llada")
    prompt = torch.randint(0, 96, (3, 7), generator=torch.Generator().manual_seed(0))
    prompt[:, 0] = 126080  # BOS
    (tmp / "cases.json").write_text(json.dumps({"prompt": prompt.tolist(), "cases": CASES}))
    worker = Path(__file__).with_name("_d2cache_reference_worker.py")
    res = subprocess.run([sys.executable, str(worker), str(repo), str(real), str(path), str(tmp / "cases.json"),
                          str(tmp / "out.json")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    den = MODELS.build("llada", {"path": str(path), "dtype": "float32", "device": "cpu"}).load()
    return den, prompt, json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_tokens_equal_the_reference_code(outputs, name):
    den, prompt, ref = outputs
    c = CASES[name]
    name_ = "threshold" if "threshold" in c else "low_confidence"
    params = {"tau": c["threshold"]} if "threshold" in c else {"steps": c["L"] // c["n"]}
    params["block_length"] = c["block"]
    if "cache" in c:
        params.update(cache="d2cache", **c["cache"])
    if "sigma" in c:
        params["prior_sigma"] = c["sigma"]
    g = SAMPLERS.build(name_, params)(den, prompt, generator=None, gen_length=c["L"])
    want = torch.tensor(ref[name])
    for r in range(prompt.shape[0]):  # the harness cuts each row at its first stop token
        n = int(g.gen_len[r])
        assert torch.equal(g.tokens[r, :n], want[r, :n]), (name, r)
    assert int(g.gen_len.sum()) > 0
