"""Run Kamichanw/d2Cache's own decoding (src/generation/vanilla.py `vanilla_generate` with
src/cache/d2cache.py `d2Cache`) on a LLaDA checkpoint, in a process of its own; used by
tests/samplers/test_d2cache_reference.py.

    python _d2cache_reference_worker.py D2CACHE_DIR REAL_CODE_DIR CHECKPOINT CASES_JSON OUT_JSON

The reference's package imports tools it needs only for its evaluation entry points (omegaconf, hydra,
loguru, accelerate, python-dotenv); those that are not installed get empty stand-ins here, which the
decoding path never calls. Its LLaDA file (src/models/llada/modeling_llada.py, the public file with
d2Cache's hooks) is loaded with eager attention (the reference requires it for the attention weights)
through the real-code fixture's transformers-5 shim; its output dataclass, which transformers 5 cannot
build, is replaced by a plain namespace (the caller reads `.logits` only).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types
from functools import partial

import torch
import transformers  # noqa: F401  (imported before any stand-in: it probes for accelerate)


def _stand_in(name: str, **attrs) -> None:
    try:
        importlib.import_module(name)
    except ImportError:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


def main(d2cache_dir: str, real_code: str, checkpoint: str, cases_json: str, out_json: str) -> None:
    torch.set_num_threads(1)
    resolver = {"register_new_resolver": staticmethod(lambda *a, **k: None)}
    _stand_in("omegaconf", OmegaConf=type("OmegaConf", (), resolver), DictConfig=dict)
    _stand_in("accelerate")
    _stand_in("accelerate.utils", set_seed=lambda *a, **k: None)
    _stand_in("loguru", logger=_Quiet())
    _stand_in("dotenv", load_dotenv=lambda *a, **k: None)
    _stand_in("hydra", compose=None)
    _stand_in("hydra.utils", instantiate=None)
    _stand_in("hydra.core")
    _stand_in("hydra.core.hydra_config", HydraConfig=None)
    sys.path[:0] = [d2cache_dir, real_code]
    os.environ["MASK_TOKEN_ID"] = "126336"
    import tf5_shim
    from src.cache import d2Cache
    from src.generation.vanilla import vanilla_generate
    from src.models.llada import modeling_llada
    from src.models.llada.configuration_llada import LLaDAConfig

    tf5_shim.patch_class(modeling_llada.LLaDAModelLM)
    modeling_llada.LLaDAOutputWithPast = lambda **kw: types.SimpleNamespace(**kw)
    cfg = LLaDAConfig.from_pretrained(checkpoint)
    cfg._attn_implementation = "eager"
    model = modeling_llada.LLaDAModelLM.from_pretrained(checkpoint, config=cfg, dtype=torch.float32).eval()
    model.config._attn_implementation = "eager"
    spec = json.loads(open(cases_json).read())
    prompt = torch.tensor(spec["prompt"])
    out = {}
    for name, c in spec["cases"].items():
        cache = partial(d2Cache, **c["cache"]) if c.get("cache") is not None else None
        record = vanilla_generate(model, prompt, block_length=c["block"], gen_length=c["L"],
                                  num_transfer_tokens=c["n"], sigma=c.get("sigma"), threshold=c.get("threshold"),
                                  mask_token_id=126336, cache_cls=cache)
        out[name] = record[-1].generated_tokens.tolist()
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
