"""Where the offline copies of benchmark data live (docs/architecture.md, "Data and models offline").

The files are never copied into the repository: they are read from `$DLM_HARNESS_DATA` when set,
else from the `shared/data` folder beside (or inside) an ancestor of the repository root, which is
where `shared/data/SOURCES.md` places them (`<repo>/../shared/data`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.types import HarnessError

ENV_VAR = "DLM_HARNESS_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The folder holding the offline data (it may not exist; `data_file` reports that)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    # Walk up from the repository root so a checkout nested deeper (worktrees, CI copies) still
    # finds the shared folder; the first `shared/data` found wins.
    for base in (REPO_ROOT, *REPO_ROOT.parents):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data"


def data_file(relpath: str, what: str = "") -> Path:
    """The path of `relpath` under `data_dir()`; a HarnessError that says how to fix it if absent."""
    root = data_dir()
    path = root / relpath
    if not path.is_file():
        source = f"${ENV_VAR}={os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR) else (
            f"found from the repository root {REPO_ROOT}"
        )
        expected = f" ({what})" if what else ""
        raise HarnessError(
            f"data file not found: {path}; expected {relpath!r}{expected} under the data "
            f"directory {root} ({source}). Set {ENV_VAR} to the folder holding the offline copies "
            f"listed in shared/data/SOURCES.md."
        )
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (recorded so results pin the exact data)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
