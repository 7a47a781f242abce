"""Where a result came from: git state, library versions, device (recorded in every manifest)."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def collect() -> dict:
    """Git sha and dirty flag, versions (without importing heavy packages), device."""
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git": {"sha": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)},
        "versions": {
            "python": platform.python_version(), "harness": _version("dlm-harness"),
            "torch": torch.__version__, "transformers": _version("transformers"),
            "lm_eval": _version("lm_eval") or _version("lm-eval"), "cuda": torch.version.cuda,
        },
        "device": device_name(),
        "platform": platform.platform(),
    }
