"""Run untrusted programs (generated code and its tests) in a contained child process.

Each program runs in its own process, in a fresh temporary folder (its cwd, HOME and TMPDIR) that
is deleted afterwards, with an empty environment (no variable of the parent is passed), stdin at
/dev/null, in a new session whose whole process group is killed at the wall timeout, and with
resource limits set by `setrlimit` before exec: address space, CPU seconds, file size (which also
caps captured output), processes, no core files.

Isolation levels, best first (`isolation()` takes the first that works on this machine; every
result and record names the level it ran at):
- "root-ns": the parent is root and can create namespaces. New PID, network, IPC, UTS and mount
  namespaces with a fresh /proc (no host process is visible or reachable; no network at all;
  every process the program starts dies with it), as a fresh unprivileged uid/gid of its own
  (`fresh_uid`), so the kernel refuses writes to any file it does not own, signals to other
  processes and raised limits, and enforces RLIMIT_NPROC for that run alone. Files it leaves in
  world-writable folders (/tmp, /var/tmp, /dev/shm, ...) are deleted after the run (`_scrub`).
- "user-ns": an unprivileged user namespace holding the same namespaces and fresh /proc. As root
  (e.g. without CAP_SYS_ADMIN, where "root-ns" fails) the parent first drops to a fresh uid, as
  above; as a normal user the program keeps that user's file permissions (only the Python-level
  guard stops it writing that user's files).
- otherwise generated code is refused (`UnsafeCodeRefused`) unless the user allowed it
  (`--allow-unsafe-code`, which sets DLM_HARNESS_ALLOW_UNSAFE_CODE=1): then "unsafe-uid" when
  root (a fresh uid, every process of that uid killed and its files deleted after the run; but it
  sees the host's processes and network) or "unsafe" (as the current user: only the
  Python-level guard and rlimits; it can read what that user can, and a determined program can
  outlive the run).
On every level the in-process guard (`_guard.WRAPPER`) disables process creation, signals,
sockets and writes outside the sandbox folder at the Python level; that layer is not a
kernel-level guarantee (a determined program can undo it), which is why the levels above matter.

A run passes only if the program exits with status 0 AND prints a random per-run token that the
wrapper writes after the whole program ran. The program can find that token in its own memory, so
for scoring the code tasks never rely on it alone: the verdict comes from a second, trusted
program (`_trusted.py`). With `channel=True` the program may also write to file descriptor 3;
that text comes back as `SandboxResult.channel`.
"""
from __future__ import annotations

import functools
import itertools
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.tasks._guard import WRAPPER
from harness.types import HarnessError

LEVELS = ("root-ns", "user-ns")  # namespaced, best first
UNSAFE_LEVELS = ("unsafe-uid", "unsafe")
ALLOW_ENV = "DLM_HARNESS_ALLOW_UNSAFE_CODE"
TAIL_CHARS = 2000
FIRST_UID = 1_500_000_000  # fresh uids: far above system users and the usual subuid ranges
SCRUB_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/run/shm")
# util-linux unshare, whose child was killed by a signal (e.g. SIGKILL at the CPU limit), tries to
# re-raise it on itself, fails with this message and exits 1: the signal is lost from the status.
UNSHARE_LOST_SIGNAL = "unshare: sigprocmask unblock failed"
NS_FLAGS = ("--net", "--pid", "--ipc", "--uts", "--mount-proc", "--kill-child")
# In a fresh PID namespace the program is PID 1 and /proc lists nothing else.
_FRESH_PROC = "import os, sys\nsys.exit(0 if [p for p in os.listdir('/proc') if p.isdigit()] == ['1'] else 3)"
_uids = itertools.count()


class UnsafeCodeRefused(HarnessError):
    """No namespace isolation on this machine and unsafe execution was not allowed."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: `passed` iff status == "passed" (exit 0 and the token printed)."""

    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "killed" | "error"
    returncode: int | None
    stdout: str  # tails, token removed
    stderr: str
    wall_s: float
    level: str = ""  # the isolation level it ran at
    channel: str = ""  # what it wrote to fd 3 (channel=True)


@dataclass(frozen=True)
class Isolation:
    level: str
    prefix: tuple[str, ...]  # "{uid}" stands for the run's uid
    python: str
    fresh_uid: bool  # each run as its own unprivileged uid (the parent is root)
    drop_first: bool  # drop to that uid before exec (else the prefix does it)


def allow_unsafe_code(allow: bool = True) -> None:
    """`--allow-unsafe-code`: let generated code run without namespaces (this process and its children)."""
    if allow:
        os.environ[ALLOW_ENV] = "1"
    else:
        os.environ.pop(ALLOW_ENV, None)


def unsafe_code_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").lower() in ("1", "true", "yes")


def _drop(uid: int):
    def apply() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return apply


def _works(cmd: list[str], uid: int | None) -> bool:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, env={},
                              preexec_fn=_drop(uid) if uid is not None else None).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pythons() -> list[str]:
    out = []
    for py in (sys.executable, shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if py and py not in out:
            out.append(py)
    return out


@functools.lru_cache(maxsize=None)
def probe(level: str) -> Isolation | None:
    """How `level` runs on this machine, or None where it does not work."""
    root, unshare = os.geteuid() == 0, shutil.which("unshare")
    test_uid = FIRST_UID - 1
    if level == "root-ns" and root and unshare:
        prefix = (unshare, *NS_FLAGS, "--setuid", "{uid}", "--setgid", "{uid}")
        for py in _pythons():
            cmd = [a.replace("{uid}", str(test_uid)) for a in prefix]
            if _works([*cmd, py, "-I", "-S", "-c", _FRESH_PROC], None):
                return Isolation(level, prefix, py, fresh_uid=True, drop_first=False)
    if level == "user-ns" and unshare:
        prefix = (unshare, "--user", "--map-current-user", *NS_FLAGS)
        for py in _pythons():
            if _works([*prefix, py, "-I", "-S", "-c", _FRESH_PROC], test_uid if root else None):
                return Isolation(level, prefix, py, fresh_uid=root, drop_first=root)
    if level == "unsafe-uid" and root:
        for py in _pythons():
            if _works([py, "-I", "-S", "-c", "pass"], test_uid):
                return Isolation(level, (), py, fresh_uid=True, drop_first=True)
    if level == "unsafe" and not root:
        for py in _pythons():
            if _works([py, "-I", "-S", "-c", "pass"], None):
                return Isolation(level, (), py, fresh_uid=False, drop_first=False)
    return None


def isolation(level: str | None = None) -> Isolation:
    """The isolation to run generated code with: `level` (HarnessError if it does not work here),
    else the best namespaced level, else (only when allowed) the unsafe one; UnsafeCodeRefused."""
    if level is not None:
        iso = probe(level)
        if iso is None:
            raise HarnessError(f"sandbox level {level!r} does not work on this machine")
        return iso
    for name in LEVELS:
        iso = probe(name)
        if iso is not None:
            return iso
    if not unsafe_code_allowed():
        raise UnsafeCodeRefused(
            "refusing to run generated code: this machine allows neither namespaces as root nor user namespaces "
            "(e.g. a container without CAP_SYS_ADMIN whose seccomp profile blocks unshare, or no `unshare`), so "
            "the program could read this process's secrets and write files as this user; pass "
            f"--allow-unsafe-code (or set {ALLOW_ENV}=1) to run it anyway at a weaker level (README: Sandbox)")
    iso = probe("unsafe-uid") or probe("unsafe")
    if iso is None:
        raise HarnessError("sandbox: no interpreter runs as an unprivileged uid here")
    return iso


def level_name() -> str:
    """The level generated code would run at here, or "refused"."""
    try:
        return isolation().level
    except UnsafeCodeRefused:
        return "refused"


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


def _limits(memory_mb: int, cpu_s: int, nproc: int, fsize_mb: int, drop: int | None):
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
        if drop is not None:
            _drop(drop)()

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
                max_procs: int = 32, max_output_mb: int = 16, level: str | None = None,
                channel: bool = False) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; see the module docstring."""
    iso = isolation(level)
    cpu_s = int(cpu_s if cpu_s is not None else max(1, int(timeout_s) + 1))
    uid = FIRST_UID + (os.getpid() % 100_000) * 1000 + next(_uids) % 1000 if iso.fresh_uid else os.getuid()
    nproc = max_procs if iso.fresh_uid else _tasks_of(uid) + max_procs
    token = secrets.token_hex(16)
    work = tempfile.mkdtemp(prefix="dlm-sandbox-")
    logs = tempfile.mkdtemp(prefix="dlm-sandbox-logs-")
    start = time.perf_counter()
    try:
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        if iso.fresh_uid:
            os.chown(work, uid, uid)
            os.chown(program, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        out_path, err_path, chan_path = (os.path.join(logs, n) for n in ("stdout", "stderr", "channel"))
        prefix = [a.replace("{uid}", str(uid)) for a in iso.prefix]
        with open(out_path, "wb") as out, open(err_path, "wb") as err, open(chan_path, "wb") as chan:
            fds = (chan.fileno(),) if channel else ()
            try:
                proc = subprocess.Popen(
                    [*prefix, iso.python, "-I", "-S", "-c", WRAPPER, program, *map(str, fds)],
                    stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work, env=env, start_new_session=True,
                    close_fds=True, pass_fds=fds,
                    preexec_fn=_limits(memory_mb, cpu_s, nproc, max_output_mb, uid if iso.drop_first else None),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(passed=False, status="error", returncode=None, stdout="",
                                     stderr=f"could not start the sandbox: {exc}", wall_s=0.0, level=iso.level)
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
                if iso.fresh_uid and not iso.prefix:  # no PID namespace whose end kills them all
                    _reap(uid, iso.python)
            if timed_out:
                rc = proc.wait()
        wall = time.perf_counter() - start
        stdout, found = _tail(out_path, token)
        stderr, _ = _tail(err_path, token)
        chan_text = ""
        if channel:
            with open(chan_path, "rb") as f:
                chan_text = f.read().decode("utf-8", "replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
        if iso.fresh_uid:
            _scrub(uid)
    if timed_out:
        status = "timeout"
    elif rc == 0 and found:
        status = "passed"
    elif rc < 0 or rc >= 128 or (prefix and UNSHARE_LOST_SIGNAL in stderr):  # killed by a signal
        status = "killed"
    else:
        status = "failed"
    return SandboxResult(passed=status == "passed", status=status, returncode=rc, stdout=stdout, stderr=stderr,
                         wall_s=wall, level=iso.level, channel=chan_text)


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole process group (in namespaced levels this also ends the PID namespace)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(uid: int, python: str) -> None:
    """SIGKILL every process of the run's own uid (kill(-1) as that uid), daemons included."""
    try:
        subprocess.run([python, "-I", "-S", "-c", "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass"],
                       stdin=subprocess.DEVNULL, capture_output=True, env={}, timeout=10, preexec_fn=_drop(uid))
    except (OSError, subprocess.SubprocessError):
        pass


def _scrub(uid: int, dirs: tuple[str, ...] = SCRUB_DIRS) -> None:
    """Delete what the run's uid left in world-writable folders (the only places it can write)."""
    for base in dirs:
        _scrub_dir(base, uid, 0)


def _scrub_dir(path: str, uid: int, depth: int) -> None:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == uid:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                try:
                    os.unlink(e.path)
                except OSError:
                    pass
        elif stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002 and depth < 2:
            _scrub_dir(e.path, uid, depth + 1)


def run_many(sources: list[str], *, workers: int = 4, **kwargs) -> list[SandboxResult]:
    """`run_program` on each source with a small thread pool; results in input order."""
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(sources)))) as pool:
        return list(pool.map(lambda s: run_program(s, **kwargs), sources))


def preflight(runs_code: bool) -> str | None:
    """Before any compute: the level generated code will run at (None when no task runs code);
    UnsafeCodeRefused when it would be refused, so a run fails at once and not unit by unit."""
    return isolation().level if runs_code else None
