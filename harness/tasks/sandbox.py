"""Run untrusted programs (generated code and its tests) in a contained child process.

Each program runs in its own process, in a fresh temporary folder (its cwd, HOME and TMPDIR) that
is deleted afterwards, with an empty environment (no variable of the parent is passed), stdin at
/dev/null, in a new session whose whole process group is killed at the wall timeout, and with
resource limits set by `setrlimit` before exec: address space, CPU seconds, file size (which also
caps captured output), processes, no core files.

Isolation levels (`isolation()`, decided once per process):
- "root-ns": the parent is root and `unshare` works. The program runs in new PID and network
  namespaces (no network at all; it cannot see or signal any process outside; every process it
  starts dies with it) as the unprivileged user `nobody`, so the kernel refuses writes to files
  it does not own, signals to other users' processes and raised limits, and enforces
  RLIMIT_NPROC (which Linux never enforces for real uid 0). The interpreter must be executable by
  `nobody`: sys.executable if it is, else the first system python3 that is.
- "user-ns": not root, but unprivileged user namespaces work: the same PID and network
  namespaces, as the current user.
- "plain": neither: a new session only; network is blocked by the Python-level guard alone.
On every level the in-process guard (`_guard.WRAPPER`) disables process creation, signals,
sockets and writes outside the sandbox folder at the Python level; that layer is not a
kernel-level guarantee (a determined program can undo it), which is why the levels above matter.

A run passes only if the program exits with status 0 AND prints a random per-run token that the
wrapper writes after the whole program (its tests included) ran, so `sys.exit(0)`/`os._exit(0)`
before the tests, or a patched `check`, cannot fake a pass.
"""
from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.tasks._guard import WRAPPER

NOBODY = 65534
TAIL_CHARS = 2000
# util-linux unshare, whose child was killed by a signal (e.g. SIGKILL at the CPU limit), tries to
# re-raise it on itself, fails with this message and exits 1: the signal is lost from the status.
UNSHARE_LOST_SIGNAL = "unshare: sigprocmask unblock failed"
_PROBE = ("-I", "-S", "-c", "pass")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: `passed` iff status == "passed" (exit 0 and the token printed)."""

    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "killed" | "error"
    returncode: int | None
    stdout: str  # tails, token removed
    stderr: str
    wall_s: float


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, env={}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[str, tuple[str, ...], str]:
    """(level, command prefix, interpreter) for this machine; see the module docstring."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0:
        prefix = (unshare, "--net", "--pid", "--kill-child", "--setuid", str(NOBODY), "--setgid", str(NOBODY))
        for py in (sys.executable, shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
            if py and _works([*prefix, py, *_PROBE]):
                return "root-ns", prefix, py
    if unshare and os.geteuid() != 0:
        prefix = (unshare, "--user", "--map-current-user", "--net", "--pid", "--kill-child")
        if _works([*prefix, sys.executable, *_PROBE]):
            return "user-ns", prefix, sys.executable
    return "plain", (), sys.executable


def _tasks_of(uid: int) -> int:
    """Threads currently owned by `uid` (RLIMIT_NPROC counts them all), from /proc."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            n += int(fields.get("Threads", "1").strip() or 1)
    return n


def _limits(memory_mb: int, cpu_s: int, nproc: int, fsize_mb: int):
    values = [
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_CPU, cpu_s),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_FSIZE, fsize_mb << 20),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, nproc),
    ]

    def apply() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        for what, soft in values:
            hard = soft + 1 if what == resource.RLIMIT_CPU else soft
            resource.setrlimit(what, (soft, hard))

    return apply


def _tail(path: str, token: str) -> tuple[str, bool]:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - TAIL_CHARS - 200))
        text = f.read().decode("utf-8", "replace")
    found = token in text
    return text.replace(token, "").rstrip("\n")[-TAIL_CHARS:], found


def run_program(source: str, *, timeout_s: float = 10, memory_mb: int = 1024, cpu_s: int | None = None,
                max_procs: int = 32, max_output_mb: int = 16) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; see the module docstring."""
    level, prefix, python = isolation()
    cpu_s = int(cpu_s if cpu_s is not None else max(1, int(timeout_s) + 1))
    uid = NOBODY if level == "root-ns" else os.getuid()
    nproc = _tasks_of(uid) + max_procs
    token = secrets.token_hex(16)
    work = tempfile.mkdtemp(prefix="dlm-sandbox-")
    logs = tempfile.mkdtemp(prefix="dlm-sandbox-logs-")
    start = time.perf_counter()
    try:
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        if level == "root-ns":
            os.chown(work, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [*prefix, python, "-I", "-S", "-c", WRAPPER, program], stdin=subprocess.PIPE, stdout=out,
                    stderr=err, cwd=work, env=env, start_new_session=True, close_fds=True,
                    preexec_fn=_limits(memory_mb, cpu_s, nproc, max_output_mb),
                )
            except OSError as exc:
                return SandboxResult(passed=False, status="error", returncode=None, stdout="",
                                     stderr=f"could not start the sandbox: {exc}", wall_s=0.0)
            try:
                proc.stdin.write(token.encode() + b"\n")
                proc.stdin.close()
            except OSError:
                pass
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
            if timed_out:
                rc = proc.wait()
        wall = time.perf_counter() - start
        stdout, found = _tail(out_path, token)
        stderr, _ = _tail(err_path, token)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
    if timed_out:
        status = "timeout"
    elif rc == 0 and found:
        status = "passed"
    elif rc < 0 or rc >= 128 or (prefix and UNSHARE_LOST_SIGNAL in stderr):  # killed by a signal
        status = "killed"
    else:
        status = "failed"
    return SandboxResult(passed=status == "passed", status=status, returncode=rc, stdout=stdout, stderr=stderr,
                         wall_s=wall)


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole process group (in namespaced levels this also ends the PID namespace)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(sources: list[str], *, workers: int = 4, **kwargs) -> list[SandboxResult]:
    """`run_program` on each source with a small thread pool; results in input order."""
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(sources)))) as pool:
        return list(pool.map(lambda s: run_program(s, **kwargs), sources))
