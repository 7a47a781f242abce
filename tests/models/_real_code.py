"""The public LLaDA/Dream model code for parity tests: `../shared/fixtures/real-code` (see its README).

It holds NVlabs/Fast-dLLM's copies of the model files and of LLaDA's generate functions (commit
24cc59e), builders of small random-weight checkpoints with the real special ids, and `tf5_shim.py`,
which patches transformers 5 so those files load. Located from the repository root upwards (as
harness/tasks/data.py finds shared/data) or by $DLM_HARNESS_REAL_CODE; tests skip when it is absent.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def real_code_dir() -> Path | None:
    env = os.environ.get("DLM_HARNESS_REAL_CODE")
    if env:
        return Path(env).expanduser() if Path(env).expanduser().is_dir() else None
    for base in (REPO, *REPO.parents):
        candidate = base / "shared" / "fixtures" / "real-code"
        if candidate.is_dir():
            return candidate
    return None


def require() -> Path:
    d = real_code_dir()
    if d is None:
        pytest.skip("../shared/fixtures/real-code (the public LLaDA/Dream code) is absent; set DLM_HARNESS_REAL_CODE")
    pytest.importorskip("einops", reason="the public LLaDA file imports einops")
    return d


def build(kind: str, out: Path) -> Path:
    """Run build_<kind>.py OUT (a random-weight checkpoint directory, ~60-75 MB) in a subprocess."""
    script = require() / f"build_{kind}.py"
    res = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{res.stderr[-2000:]}")
    return out


def _module(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def shim():
    return _module("tf5_shim", require() / "tf5_shim.py")


def real_llada(path: Path):
    """The public modeling_llada.py (Fast-dLLM's copy, with past_key_values/replace_position) on `path`."""
    import transformers

    from harness.models.native.adapter import isolated_auto_registry

    with isolated_auto_registry():  # the file registers "llada" globally at import
        shim().patch(str(path), "modeling_llada.LLaDAModelLM")
        model = transformers.AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=torch.float32)
    return model.eval()


def real_dream(path: Path):
    """The public modeling_dream.py on `path` (the shim recomputes its RoPE inv_freq after loading)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from harness.models.native.adapter import isolated_auto_registry

    s = shim()
    with isolated_auto_registry():
        s.patch_dream()
        s.patch_dream_generation_config(str(path))
        cls = s.patch_class(get_class_from_dynamic_module("modeling_dream.DreamModel", str(path)))
        model = cls.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def fast_dllm_generate():
    """Fast-dLLM's llada/generate.py (generate, generate_with_prefix_cache, generate_with_dual_cache).
    Its `from model.modeling_llada import LLaDAModelLM` (used only by its main()) gets a stand-in
    module for the duration of the import."""
    name = "fast_dllm_llada_generate"
    if name in sys.modules:
        return sys.modules[name]
    pkg, mod = types.ModuleType("model"), types.ModuleType("model.modeling_llada")
    mod.LLaDAModelLM = None
    saved = {k: sys.modules.get(k) for k in ("model", "model.modeling_llada")}
    sys.modules.update({"model": pkg, "model.modeling_llada": mod})
    try:
        return _module(name, require() / "fast-dllm" / "llada" / "generate.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
