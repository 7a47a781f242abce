"""Helpers of the reference-parity tests of rcr, pc_sampler and klass.

The reference decoders are called as their repositories call a model: `model(x).logits` on a
[1, T] canvas, with `model.device` (and `model.config.vocab_size`). `RefModel` serves a harness
denoiser that way, so the reference and the harness sampler see the very same logits. The
reference repositories themselves are not part of the project; `reference_module` imports one from
a checkout named by an environment variable and skips the test (with the reason) when it is unset.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.samplers._base import stop_ids, upto_first_stop
from harness.types import ArchInfo
from tests.samplers.toys import _Tok


class ContextDenoiser:
    """A hand-built masked denoiser whose predictions depend strongly on the rest of the canvas (one
    random attention layer over token and position embeddings), with spread-out, untied
    confidences and no probability on the mask token: a setting where committing, re-masking and
    re-deciding tokens changes what later steps propose. Pad 0, EOS 2; vocabulary 24 and mask 1
    unless given (a reference that hard-codes LLaDA's mask id 126336 needs LLaDA's vocabulary)."""

    eos_id, pad_id, shift_logits = 2, 0, False
    device = torch.device("cpu")
    arch = ArchInfo(n_params=1, n_layers=1, d_model=16)
    tokenizer = _Tok()

    def __init__(self, seed: int = 0, max_len: int = 64, scale: float = 2.5, vocab_size: int = 24, mask_id: int = 1):
        self.vocab_size, self.mask_id = vocab_size, mask_id
        g = torch.Generator().manual_seed(seed)
        d = 16
        self.tok = torch.randn(self.vocab_size, d, generator=g)
        self.pos = torch.randn(max_len, d, generator=g) * 0.5
        self.out = torch.randn(d, self.vocab_size, generator=g) * scale / d ** 0.5

    def logits(self, x, attention_mask=None):
        known = x != self.mask_id  # [B, T] attention reads the prompt and the committed tokens only
        q = self.pos[: x.shape[1]]  # [T, d]
        k = self.tok[x]  # [B, T, d]
        score = (q[None] @ k.transpose(1, 2)) / 2.0  # [B, T, T]
        att = torch.softmax(score.masked_fill(~known[:, None, :], -torch.inf), -1)
        out = (q[None] + 6.0 * att @ k) @ self.out  # [B, T, V]
        out[..., self.mask_id] = -torch.inf
        return out


class NoMaskDenoiser:
    """A denoiser whose logits never favour the mask token (-inf there), as a trained model's:
    the harness never proposes the mask token, the references keep its probability, so the
    comparison is made where the two agree by construction (a documented difference)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits(self, x, attention_mask=None):
        out = self.inner.logits(x, attention_mask).clone()
        out[..., self.inner.mask_id] = -torch.inf
        return out


class RefModel:
    """A denoiser called the references' way: model(x, attention_mask=None).logits."""

    def __init__(self, den):
        self.den = den
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(vocab_size=den.vocab_size)
        self.calls = 0

    def __call__(self, x, attention_mask=None):
        self.calls += 1
        return SimpleNamespace(logits=self.den.logits(x))


def cut(tokens: torch.Tensor, den) -> torch.Tensor:
    """A reference completion with the harness's post-stop padding (tokens after the first stop id -> EOS)."""
    tokens = tokens.clone()
    n = upto_first_stop(tokens, stop_ids(den))
    tokens[torch.arange(tokens.shape[1])[None, :] >= n[:, None]] = den.eos_id
    return tokens


def reference_module(env: str, relpath: str, repo: str, needs: dict[str, str] | None = None):
    """Load the file `relpath` of the checkout of `repo` named by $`env`, under a name of its own
    (the three repositories all call their package `src`); `needs`: modules the file imports by name
    (module name -> file), present in sys.modules only while it loads. Skips when the variable is
    unset or the file is missing."""
    root = os.environ.get(env)
    if not root:
        pytest.skip(f"${env} is unset: point it at a checkout of {repo} to run its own decoder")
    base = Path(root).expanduser()
    for rel in [relpath, *(needs or {}).values()]:
        if not (base / rel).is_file():
            pytest.skip(f"${env}={root}: no {rel} there (expected a checkout of {repo})")
    name = f"_reference_{repo.replace('/', '_').replace('-', '_')}_{Path(relpath).stem}"
    if name in sys.modules:
        return sys.modules[name]
    names = {".".join(m.split(".")[:i]) for m in (needs or {}) for i in range(1, m.count(".") + 2)}
    saved = {k: sys.modules.get(k) for k in names}
    try:
        for pkg in sorted(names - set(needs or {})):  # parent packages: empty stand-ins
            sys.modules[pkg] = types.ModuleType(pkg)
        for mod, rel in (needs or {}).items():
            sys.modules[mod] = _load(f"{name}__{mod.replace('.', '_')}", base / rel)
        module = _load(name, base / relpath)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    sys.modules[name] = module
    return module


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
