"""BD3-LM's public code for parity tests: `../shared/fixtures/real-code/block/bd3lm` (kuleshov-group/bd3lms
1c3e8f4: models/hf/modeling_bd3lm.py, diffusion.py), its checkpoint builder and its transformers-5 loader.
Tests skip with a reason when the fixture is absent."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.models._real_code import real_code_dir


def bd3lm_dir() -> Path:
    base = real_code_dir()
    d = None if base is None else base / "block" / "bd3lm"
    if d is None or not (d / "build_bd3lm.py").is_file():
        pytest.skip("../shared/fixtures/real-code/block/bd3lm (BD3-LM's public code) is absent; set "
                    "DLM_HARNESS_REAL_CODE")
    pytest.importorskip("einops", reason="modeling_bd3lm.py imports einops")
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    return d


def build(out: Path, block_size: int = 4, model_length: int = 64) -> Path:
    """build_bd3lm.py OUT: a 28 MB random-weight checkpoint of the real code, with a character-level
    stand-in tokenizer at GPT-2's special ids (the fixture has no GPT-2 tokenizer files)."""
    script = bd3lm_dir() / "build_bd3lm.py"
    res = subprocess.run([sys.executable, str(script), str(out), "--block-size", str(block_size),
                          "--model-length", str(model_length)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{res.stderr[-2000:]}")
    return out


def real_model(path: Path):
    """The public modeling_bd3lm.py's BD3LM on `path` (tf5_bd3lm: post_init, mask rebuilt), eval mode."""
    bd3lm_dir()
    import tf5_bd3lm

    model, _ = tf5_bd3lm.load(path)
    return model


def real_logits(model, x, sample_mode: bool):
    """The real forward: sample_mode=True is the plain block-causal pass, False the [x_t ; x_0] training pass."""
    import torch

    return model(input_ids=x, timesteps=torch.zeros(x.shape[0]), sample_mode=sample_mode, return_dict=True).logits
