"""Load a benchmark's rows from the Hugging Face hub when reachable, else from the offline copy.

`HF_DATASETS_OFFLINE=1` / `HF_HUB_OFFLINE=1` skip the hub outright; otherwise one quick TCP probe
of the hub's host (2 s, cached for the process) decides, so an unreachable hub costs no retries.
Both paths yield the same rows (the offline copies are exact copies of the hub files;
shared/data/SOURCES.md). `load` returns the rows and a source string for the manifest.
"""
from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from harness.tasks.data import data_file, sha256_file

PROBE_TIMEOUT_S = 2.0


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "DLM_HARNESS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connection to the hub's host within PROBE_TIMEOUT_S (DNS included)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(PROBE_TIMEOUT_S + 0.5)
    return bool(ok)


def load(hub_id: str, config: str | None, split: str, local: str, read_local) -> tuple[list[dict], str]:
    """Rows of `split`: `datasets.load_dataset(hub_id, config, split=split)` when the hub is
    reachable, else `read_local(path)` on `data_file(local)`; plus "hub:..." or "local:... sha256=...".
    """
    if not offline() and hub_reachable():
        try:
            import datasets

            rows = [dict(r) for r in datasets.load_dataset(hub_id, config, split=split)]
            return rows, f"hub:{hub_id}" + (f"/{config}" if config else "") + f"[{split}]"
        except Exception:  # noqa: BLE001 - any hub failure falls back to the offline copy
            pass
    path: Path = data_file(local, f"offline copy of {hub_id}")
    return read_local(path), f"local:{path} sha256={sha256_file(path)}"
