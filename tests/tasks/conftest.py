"""The sandbox's isolation levels as a fixture: each test that asks for `sandbox_level` runs once
per level, skipped with the reason when this machine cannot provide it."""
from __future__ import annotations

import os

import pytest

from harness.tasks.sandbox import FIRST_UID, LEVELS, UNSAFE_LEVELS, probe

WHY_ABSENT = {
    "root-ns": "needs root with CAP_SYS_ADMIN and util-linux `unshare` on PATH",
    "user-ns": "needs `unshare` on PATH and user namespaces that may mount a fresh /proc",
    "unsafe-uid": "needs root (it drops to a fresh uid)",
    "unsafe": "only for a non-root parent (as root the unsafe level is unsafe-uid)",
}


@pytest.fixture(params=[*LEVELS, *UNSAFE_LEVELS])
def sandbox_level(request) -> str:
    if probe(request.param) is None:
        pytest.skip(f"sandbox level {request.param}: {WHY_ABSENT[request.param]}")
    return request.param


def fresh_uid_processes() -> list[str]:
    """Processes of the sandbox's fresh uids still alive (there should be none after a run)."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid) >= FIRST_UID - 1:
            out.append(pid)
    return out
