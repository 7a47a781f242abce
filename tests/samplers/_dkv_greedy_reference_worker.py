"""Run horseee/dKV-Cache's own dKV-Cache-Greedy decoding (generation_utils/llada_dkv_cache_greedy.py
`generate` on models/modeling_llada_dkv_cache_greedy.py `LLaDAModelLM`) on a LLaDA checkpoint, in a
process of its own; used by tests/samplers/test_dkv_greedy_reference.py.

    python _dkv_greedy_reference_worker.py DKV_CACHE_DIR REAL_CODE_DIR CHECKPOINT CASES_JSON OUT_JSON

The reference's LLaDA file loads through the real-code fixture's transformers-5 shim. Its random
order (one `torch.rand` per block, `generate` line 125) is recorded as drawn, so that the caller can
give the harness's `random` sampler the same order; the reference itself runs unmodified.
"""
from __future__ import annotations

import json
import sys

import torch


class _RecordingTorch:
    """`torch` for the reference's generate module: every attribute is torch's own; `rand` also
    records what it drew."""

    def __init__(self, draws: list):
        self._draws = draws

    def __getattr__(self, name):
        return getattr(torch, name)

    def rand(self, *args, **kwargs):
        out = torch.rand(*args, **kwargs)
        self._draws.append(out.tolist())
        return out


def main(dkv_dir: str, real_code: str, checkpoint: str, cases_json: str, out_json: str) -> None:
    torch.set_num_threads(1)
    sys.path[:0] = [dkv_dir, real_code]
    import tf5_shim
    from generation_utils import llada_dkv_cache_greedy as greedy
    from models import modeling_llada_dkv_cache_greedy as modeling
    from models.configuration_llada import LLaDAConfig

    tf5_shim.patch_class(modeling.LLaDAModelLM)
    cfg = LLaDAConfig.from_pretrained(checkpoint)
    model = modeling.LLaDAModelLM.from_pretrained(checkpoint, config=cfg, dtype=torch.float32).eval()
    spec = json.loads(open(cases_json).read())
    out = {}
    for name, c in spec["cases"].items():
        rows = []
        for r, prompt in enumerate(spec["prompts"]):
            draws: list = []
            greedy.torch = _RecordingTorch(draws)
            torch.manual_seed(1000 * r + c["seed"])
            x = greedy.generate(model, None, torch.tensor([prompt]), steps=c["steps"], gen_length=c["L"],
                                block_length=c["block"], temperature=0.0, cfg_scale=0.0, remasking="random",
                                mask_id=126336, enable_cache=c["cache"], cache_reloading_step=c["R"],
                                window_size=c["W"])
            rows.append({"tokens": x[0, len(prompt):].tolist(), "x0_p": [d[0] for d in draws]})
        out[name] = rows
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
