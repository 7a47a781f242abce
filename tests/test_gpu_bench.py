"""benchmarks/gpu.py end to end on the CPU with tiny presets (`--quick --device cpu`)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.helpers import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_cpu_run_writes_a_complete_summary(tmp_path):
    bench = load_bench()
    out = bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--rl-suite", str(tmp_path / "no-rl.yaml")])
    data = json.loads((out / "summary.json").read_text())
    assert data["environment"]["device"].startswith("cpu") and data["errors"] == []
    est = data["estimators"]
    labels = {r["label"] for r in est}
    assert labels >= {"mc_elbo[iid]", "coupled", "trace"} and "exact" not in labels  # exact: 2^L passes, left out
    assert all(r["nfe"] == r["nfe_expected"] and r["ratio"] > 0 for r in est)
    samp = data["samplers"]
    assert {(r["label"], r["batch"]) for r in samp} == {(c[0], b) for c in bench.SAMPLER_CONFIGS for b in (1, 2)}
    for r in samp:
        assert 0 < r["tokens"] <= r["batch"] * 32  # up to the first EOS of each row, gen_length 32
    naive = [r for r in samp if r["label"] == bench.NAIVE]
    assert all(r["speedup"] == 1.0 and r["nfe_per_seq"] == 32 for r in naive)  # one token per step
    dual = [r for r in samp if r["label"] == bench.TARGET_SAMPLER]
    assert all(r["nfe_cached"] > 0 for r in dual)
    parts = {r["part"]: r for r in data["studies"]}
    assert parts["train"]["status"] == "complete"
    assert parts["gpu-studies"]["status"] == "complete" and "(quick)" in parts["gpu-studies"]["what"]
    assert parts["no-rl"]["status"] == "skipped"
    derived = (out / "suites" / "gpu-studies.yaml").read_text()
    assert str(out / "tiny-large") in derived and "device: cpu" in derived
    md = (out / "summary.md").read_text()
    assert "## Estimators" in md and "## Samplers" in md and "## Studies" in md
    assert f"`{bench.TARGET_SAMPLER}` >= 10x naive at batch 1" in md
