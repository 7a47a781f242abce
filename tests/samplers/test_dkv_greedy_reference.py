"""`cache: dkv_greedy` against horseee/dKV-Cache's own code (opt-in).

Set DLM_HARNESS_DKV_CACHE to a checkout of https://github.com/horseee/dKV-Cache (checked at 49a76fc).
The reference decodes (generation_utils/llada_dkv_cache_greedy.py `generate` on its
models/modeling_llada_dkv_cache_greedy.py, in a subprocess: tests/samplers/_dkv_greedy_reference_worker.py)
from the real-code fixture's random-weight LLaDA checkpoint (LLaDA's vocabulary and special ids; its
head never predicts the mask), one row at a time (its cached pass needs equal column counts per
row); the harness decodes with `random` on its native LLaDA from the same checkpoint, given the
reference's recorded random order as its scores (tests/samplers/test_dkv_greedy.py `same_order`).
Every case gives the same tokens: the reference's uncached path, its README setting (cache-steps 2,
window 4), no window, a cache never refreshed after step 0, and two blocks. Skipped without the
fixture or the checkout (tests/samplers/test_dkv_greedy.py holds the always-run transcription).
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
from tests.samplers.test_dkv_greedy import same_order

pytestmark = pytest.mark.slow  # a 60-75 MB checkpoint; every pass has a 126k vocabulary

CASES = {  # the reference's generate arguments; cache False: its uncached path (enable_cache=False)
    "uncached": {"L": 16, "block": 16, "steps": 16, "R": 1, "W": 0, "cache": False, "seed": 1},  # readme's order
    "readme": {"L": 16, "block": 16, "steps": 16, "R": 2, "W": 4, "cache": True, "seed": 1},
    "no_window": {"L": 16, "block": 16, "steps": 16, "R": 3, "W": 0, "cache": True, "seed": 2},
    "never_refreshed": {"L": 16, "block": 16, "steps": 16, "R": 1000, "W": 2, "cache": True, "seed": 3},
    "two_blocks": {"L": 16, "block": 8, "steps": 8, "R": 2, "W": 1, "cache": True, "seed": 4},
}


def dkv_checkout() -> Path:
    path = os.environ.get("DLM_HARNESS_DKV_CACHE")
    if not path or not (Path(path) / "generation_utils" / "llada_dkv_cache_greedy.py").is_file():
        pytest.skip("set DLM_HARNESS_DKV_CACHE to a checkout of horseee/dKV-Cache to run its own code")
    return Path(path)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    repo = dkv_checkout()
    real = rc.require()
    tmp = tmp_path_factory.mktemp("dkv_greedy")
    path = rc.build("llada", tmp / "llada")
    g = torch.Generator().manual_seed(0)
    prompts = [[126080] + torch.randint(0, 96, (n,), generator=g).tolist() for n in (4, 6, 9)]  # BOS + text
    (tmp / "cases.json").write_text(json.dumps({"prompts": prompts, "cases": CASES}))
    worker = Path(__file__).with_name("_dkv_greedy_reference_worker.py")
    res = subprocess.run([sys.executable, str(worker), str(repo), str(real), str(path), str(tmp / "cases.json"),
                          str(tmp / "out.json")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    den = MODELS.build("llada", {"path": str(path), "dtype": "float32", "device": "cpu"}).load()
    return den, prompts, json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_tokens_equal_the_reference_code(outputs, name, monkeypatch):
    den, prompts, ref = outputs
    c = CASES[name]
    params = {"steps": c["steps"], "block_length": c["block"]}
    if c["cache"]:
        params.update(cache="dkv_greedy", refresh=c["R"], window_size=c["W"])
    compared = 0
    for r, prompt in enumerate(prompts):
        want = ref[name][r]
        x0_p = [torch.tensor(d) for d in want["x0_p"]]
        assert len(x0_p) == c["L"] // c["block"]  # one draw per block (generate line 125)
        with monkeypatch.context() as m:
            same_order(m, x0_p, c["steps"] // (c["L"] // c["block"]), len(prompt), c["block"])
            gen = SAMPLERS.build("random", params)(den, torch.tensor([prompt]), generator=[torch.Generator()],
                                                   gen_length=c["L"])
        n = int(gen.gen_len[0])  # the harness cuts the row at its first stop token
        assert torch.equal(gen.tokens[0, :n], torch.tensor(want["tokens"][:n])), (name, r)
        compared += n
    assert compared > 0


def test_the_cache_changes_the_reference_output(outputs):
    """The parity tests the cache: with the same random order (the same seed), the reference's
    cached decode differs from its uncached one on some row."""
    _, prompts, ref = outputs
    assert all(a["x0_p"] == b["x0_p"] for a, b in zip(ref["readme"], ref["uncached"]))
    assert any(a["tokens"] != b["tokens"] for a, b in zip(ref["readme"], ref["uncached"]))
