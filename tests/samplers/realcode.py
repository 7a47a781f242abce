"""Locating and loading the real LLaDA / Dream code of `../shared/fixtures/real-code` for the
parity tests (see that folder's README): building its small real-vocabulary checkpoints, loading
them through the harness with the fixture's transformers-5 shim, and importing the reference
decoders (Fast-dLLM's `llada/generate.py`; Dream's `diffusion_generate` lives on the model)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ENV = "DLM_HARNESS_FIXTURES"  # a real-code folder elsewhere (default: <repo>/../shared/fixtures/real-code)
REPO = Path(__file__).resolve().parents[2]


def real_code_dir() -> Path | None:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    for base in (REPO, *REPO.parents):  # worktrees sit deeper than a plain clone
        p = base / "shared" / "fixtures" / "real-code"
        if p.is_dir():
            return p
    return None


RC = real_code_dir()
needs_real_code = pytest.mark.skipif(
    RC is None or not (RC / "build_llada.py").is_file(),
    reason=f"real model code fixtures absent (../shared/fixtures/real-code or ${ENV})")


def build(kind: str, out: Path) -> Path:
    """Run the fixture's build_<kind>.py into `out` (a random-weight checkpoint with real ids)."""
    proc = subprocess.run([sys.executable, str(RC / f"build_{kind}.py"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(RC)})
    if proc.returncode != 0:
        raise RuntimeError(f"build_{kind}.py failed:\n{proc.stderr[-2000:]}")
    return out


def shim():
    if str(RC) not in sys.path:
        sys.path.insert(0, str(RC))
    import tf5_shim

    return tf5_shim


def load_llada(path: Path):
    """The harness `llada` adapter over the REAL modeling_llada.py (patched for transformers 5)."""
    from harness.registry import MODELS

    shim().patch(str(path), "modeling_llada.LLaDAModelLM")
    return MODELS.build("llada", {"path": str(path), "dtype": "float32", "device": "cpu"}).load()


def load_dream(path: Path):
    from harness.registry import MODELS

    s = shim()
    s.patch_dream()
    s.patch(str(path), "modeling_dream.DreamModel")
    s.patch_dream_generation_config(str(path))
    return MODELS.build("dream", {"path": str(path), "dtype": "float32", "device": "cpu"}).load()


def fast_dllm_generate():
    """Fast-dLLM's llada/generate.py as a module. Its top-level `from model.modeling_llada import
    LLaDAModelLM` would import a second copy of the model file, which registers itself with
    AutoModel and shadows the patched class; a stub module stands in (generate never uses it)."""
    stub = types.ModuleType("model.modeling_llada")
    stub.LLaDAModelLM = None
    saved = {k: sys.modules.get(k) for k in ("model", "model.modeling_llada")}
    sys.modules["model"], sys.modules["model.modeling_llada"] = types.ModuleType("model"), stub
    try:
        spec = importlib.util.spec_from_file_location("fastdllm_llada_generate", RC / "fast-dllm/llada/generate.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def dream_generation_config(den, **kw):
    """A DreamGenerationConfig of the model's own module (transformers 5 cannot derive one from the
    model config: `from_model_config` trips on Dream's extra fields), special ids from the model."""
    cls = sys.modules[type(den.module).__module__].DreamGenerationConfig
    return cls(mask_token_id=den.mask_id, eos_token_id=den.eos_id, pad_token_id=den.pad_id,
               bos_token_id=den.eos_id, **kw)
