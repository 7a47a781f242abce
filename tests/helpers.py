"""Helpers shared by the tests: small random tiny models and suite files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyMDLM

ROOT = Path(__file__).resolve().parent.parent


def make_tiny(seed: int = 0, max_len: int = 24, d_model: int = 32) -> TinyDenoiser:
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=max_len, d_model=d_model, n_layers=2, n_heads=2, d_ff=64)
    module = TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval()
    return TinyDenoiser(module, tok)


def write_suite(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class Recorder:
    """Forwards to a denoiser and keeps every input of its full passes (in `inputs`)."""

    def __init__(self, inner):
        self.inner, self.inputs = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits(self, x, attention_mask=None):
        self.inputs.append(x.clone())
        return self.inner.logits(x, attention_mask)


def crash_mid_run(runner, after: int, torn: bool = False) -> None:
    """Run `runner` until its `after`-th record write, then die like a killed process (with
    `torn`, half of that record is on disk first). The runner's run directory is left as is."""
    import pytest

    from harness import records as rec_mod

    real_write = rec_mod.RecordWriter.write
    writes = {"n": 0}

    def crashing_write(self, record):
        writes["n"] += 1
        if writes["n"] == after:
            if torn:
                self._fh.write(json.dumps(record)[:40])
                self._fh.flush()
            raise KeyboardInterrupt
        real_write(self, record)

    rec_mod.RecordWriter.write = crashing_write
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run()
    finally:
        rec_mod.RecordWriter.write = real_write
