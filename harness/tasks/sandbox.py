"""Run untrusted programs (generated code and its tests) in a contained child process.

Each program runs in its own process, in a fresh work folder (its cwd, HOME and TMPDIR) that is
removed afterwards, with an empty environment (no variable of the parent is passed), stdin at
/dev/null, in a new session whose whole process group is killed at the wall timeout, with
resource limits set by `setrlimit` before exec (address space, CPU seconds, file size, which also
caps captured output, processes, no core files) and, where the machine offers a writable cgroup
hierarchy (v2, else v1) with the memory and pids controllers, a cgroup of its own that caps the
memory and the number of processes of the whole run, not of each process (`limits_name()`).

Isolation levels, best first (`isolation()` takes the first that works on this machine; every
result and record names the level it ran at):
- "root-ns": the parent is root. The launcher (`_jail.py`) creates new mount, PID, network, IPC
  and UTS namespaces and gives the program a minimal read-only view of the filesystem: the
  interpreter, its shared libraries and its standard library (read-only), four /dev nodes, a
  fresh /proc, and private tmpfs folders for /tmp, /dev/shm and the work folder; nothing else of
  the host (no dataset copy, no result, no home, no project tree). The program runs as a fresh
  unprivileged uid/gid of its own (`fresh_uid`): no capability, no process of the host visible,
  no network; every process it starts dies with it and every file it writes is on a tmpfs that
  vanishes with the namespace.
- "user-ns": the same view and namespaces built inside an unprivileged user namespace; the
  program then runs in a second user namespace as an unprivileged uid, so it has no capability
  over the mounts (the interpreter stays read-only even where the harness's user owns it, e.g.
  pyenv or conda in $HOME). As root (e.g. without CAP_SYS_ADMIN, where "root-ns" fails) the
  launcher first drops to a fresh uid.
- otherwise generated code is refused (`UnsafeCodeRefused`) unless the user allowed it
  (`--allow-unsafe-code`, which sets DLM_HARNESS_ALLOW_UNSAFE_CODE=1): then "unsafe-uid" when
  root (a fresh uid, every process of that uid killed and the files it left in every folder it
  could reach deleted after the run; but it sees the host's processes, network and every world-
  readable file, the dataset copies included) or "unsafe" (as the current user: only the
  Python-level guard and rlimits; it can read what that user can, and a determined program can
  outlive the run). These levels have no mount namespace: their names say so.
On every level the in-process guard (`_guard.WRAPPER`) disables process creation, signals,
sockets and writes outside the sandbox folder at the Python level; that layer is not a
kernel-level guarantee (a determined program can undo it), which is why the levels above matter.

A run passes only if the program exits with status 0 AND prints a random per-run token that the
wrapper writes after the whole program ran. The program can find that token in its own memory, so
for scoring the code tasks never rely on it alone: the verdict comes from a second, trusted
program (`_trusted.py`). With `channel=True` the program may also write to file descriptor 3;
that text comes back as `SandboxResult.channel`. The captured output is kept in unnamed files
(no folder the program could find, chmod or unlink), and everything the harness removes after a
run is removed without recursion (`remove_tree`), so no directory depth can make it fail.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
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
from pathlib import Path

from harness.tasks._guard import WRAPPER
from harness.types import HarnessError

LEVELS = ("root-ns", "user-ns")  # namespaced (a minimal read-only filesystem view), best first
UNSAFE_LEVELS = ("unsafe-uid", "unsafe")  # no mount namespace: only with --allow-unsafe-code
ALLOW_ENV = "DLM_HARNESS_ALLOW_UNSAFE_CODE"
TAIL_CHARS = 2000
FIRST_UID = 1_500_000_000  # fresh uids: far above system users and the usual subuid ranges
SCRUB_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/run/shm")
SCRUB_MAX_ENTRIES = 200_000  # the unsafe-uid scrub looks at no more entries than this per run
JAIL = (Path(__file__).with_name("_jail.py")).read_text()
TMPFS_INODES = 50_000  # files a run may create in each of its tmpfs folders
# In a fresh PID namespace /proc lists only the launcher's PID 1 and the program; the view holds
# no /etc, no home, no dataset and no project tree.
_FRESH_PROC = ("import os, sys\nok = sorted(p for p in os.listdir('/proc') if p.isdigit()) == ['1', str(os.getpid())]\n"
               "if not ok or os.path.exists('/etc') or os.path.exists('/home'):\n    sys.exit(3)\n")
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
    python: str  # the interpreter's real path (the launcher and the program both run it)
    fresh_uid: bool  # each run as its own unprivileged uid (the parent is root)
    drop_first: bool  # drop to that uid before exec (else the launcher does it)
    jail: str | None = None  # "root" | "user": the launcher's mode (a mount namespace); None: none
    view: tuple[str, ...] = ()  # host paths bound read-only into the view
    hide: tuple[str, ...] = ()  # folders inside those that are covered by an empty one


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
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, env={},
                              preexec_fn=_drop(uid) if uid is not None else None).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pythons() -> list[str]:
    out = []
    for py in (sys.executable, shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(py) if py else None
        if real and os.path.isfile(real) and real not in out:
            out.append(real)
    return out


@functools.lru_cache(maxsize=None)
def _view(python: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """What the interpreter needs, as host paths to bind read-only: itself, its standard library
    (with lib-dynload), and the shared libraries `ldd` names for both (else the system library
    folders); plus the folders inside them to cover (site-packages). None if it cannot be asked."""
    ask = ("import json, sys, sysconfig\np = sysconfig.get_paths()\n"
           "print(json.dumps([sys.executable, p['stdlib'], p['platstdlib'], p['purelib'], p['platlib']]))")
    try:
        out = subprocess.run([python, "-I", "-S", "-c", ask], capture_output=True, text=True, timeout=20, env={})
        exe, stdlib, platstdlib, purelib, platlib = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    binds = {os.path.realpath(exe), os.path.realpath(stdlib), os.path.realpath(platstdlib)}
    objects = [python]
    for folder in {stdlib, platstdlib}:
        dynload = os.path.join(folder, "lib-dynload")
        if os.path.isdir(dynload):
            objects += [os.path.join(dynload, n) for n in sorted(os.listdir(dynload)) if n.endswith(".so")]
    ldd = shutil.which("ldd")
    libs: set[str] = set()
    if ldd:
        try:
            text = subprocess.run([ldd, *objects], capture_output=True, text=True, timeout=60, env={}).stdout
            libs = {m for m in re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x", text)}
        except (OSError, subprocess.SubprocessError):
            libs = set()
    if not libs:  # no ldd: the system library folders
        libs = {d for d in ("/lib", "/lib64", "/usr/lib", "/usr/lib64") if os.path.isdir(d)}
    hide = {os.path.realpath(p) for p in (purelib, platlib)
            if any(os.path.realpath(p).startswith(b + os.sep) for b in binds if os.path.isdir(b))}
    return tuple(sorted(binds | libs)), tuple(sorted(hide))


@functools.lru_cache(maxsize=None)
def probe(level: str) -> Isolation | None:
    """How `level` runs on this machine, or None where it does not work."""
    root = os.geteuid() == 0
    test_uid = FIRST_UID - 1
    if level in LEVELS and (level == "user-ns" or root):
        mode = "root" if level == "root-ns" else "user"
        for py in _pythons():
            view = _view(py)
            if view is None:
                continue
            iso = Isolation(level, py, fresh_uid=root, drop_first=root and mode == "user", jail=mode,
                            view=view[0], hide=view[1])
            try:
                res = _run(iso, _FRESH_PROC, timeout_s=20, memory_mb=512, cpu_s=10, max_procs=8,
                           max_output_mb=1, channel=False, uid=test_uid)
            except OSError:
                continue
            if res.passed:
                return iso
    if level == "unsafe-uid" and root:
        for py in _pythons():
            if _works([py, "-I", "-S", "-c", "pass"], test_uid):
                return Isolation(level, py, fresh_uid=True, drop_first=True)
    if level == "unsafe" and not root:
        for py in _pythons():
            if _works([py, "-I", "-S", "-c", "pass"], None):
                return Isolation(level, py, fresh_uid=False, drop_first=False)
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
            "(e.g. a container without CAP_SYS_ADMIN whose seccomp profile blocks unshare), so the program would "
            "see this machine's files (the dataset copies with their reference solutions, earlier results) and "
            "could write files as this user; pass --allow-unsafe-code (or set "
            f"{ALLOW_ENV}=1) to run it anyway at a weaker level (README: Sandbox)")
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


# -- cgroups: memory and processes of the whole run -------------------------------------------------
@dataclass(frozen=True)
class _CgroupBase:
    version: int  # 1 or 2
    dirs: tuple[tuple[str, str], ...]  # (controller or "", folder below which each run gets its own)


def _own_cgroups() -> dict[str, str]:
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                for c in (parts[1].split(",") if parts[1] else [""]):
                    out[c] = parts[2]
    return out


def _cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
                out.append((fields[2], fields[1], set(fields[3].split(","))))
    return out


def _try_mkdir(base: str) -> bool:
    probe_dir = os.path.join(base, f"dlm-probe-{os.getpid()}")
    try:
        os.mkdir(probe_dir)
        os.rmdir(probe_dir)
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _cgroup_base() -> _CgroupBase | None:
    """Where this process may create a cgroup per run with the memory and pids controllers (root
    only): a v2 hierarchy whose controllers can be enabled below this process's own cgroup, else
    the v1 memory and pids hierarchies; None (rlimits only) otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        own, mounts = _own_cgroups(), _cgroup_mounts()
    except OSError:
        return None
    for kind, mnt, _ in mounts:  # v2
        if kind != "cgroup2" or "" not in own:
            continue
        here = os.path.join(mnt, own[""].lstrip("/"))
        base = os.path.join(here, "dlm-sandbox")
        try:
            with open(os.path.join(here, "cgroup.controllers")) as f:
                if not {"memory", "pids"} <= set(f.read().split()):
                    continue
            os.makedirs(base, exist_ok=True)
            for folder in (here, base):
                with open(os.path.join(folder, "cgroup.subtree_control"), "w") as f:
                    f.write("+memory +pids")
        except OSError:
            continue
        if _try_mkdir(base):
            return _CgroupBase(2, (("", base),))
    dirs = []
    for controller in ("memory", "pids"):
        mnt = next((m for kind, m, opts in mounts if kind == "cgroup" and controller in opts), None)
        if mnt is None or controller not in own:
            return None
        base = os.path.join(mnt, own[controller].lstrip("/"), "dlm-sandbox")
        try:
            os.makedirs(base, exist_ok=True)
        except OSError:
            return None
        if not _try_mkdir(base):
            return None
        dirs.append((controller, base))
    return _CgroupBase(1, tuple(dirs))


def limits_name() -> str:
    """How a run's memory and processes are capped here: "cgroup-v2", "cgroup-v1" or "rlimit"."""
    base = _cgroup_base()
    return f"cgroup-v{base.version}" if base else "rlimit"


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _cgroup_create(name: str, memory_mb: int, max_procs: int) -> list[str]:
    """The run's cgroup folders (created, limits set); [] where cgroups are not available."""
    base = _cgroup_base()
    if base is None:
        return []
    made = []
    try:
        for controller, parent in base.dirs:
            folder = os.path.join(parent, name)
            os.mkdir(folder)
            made.append(folder)
            if base.version == 2:
                _write(os.path.join(folder, "memory.max"), str(memory_mb << 20))
                if os.path.exists(os.path.join(folder, "memory.swap.max")):
                    _write(os.path.join(folder, "memory.swap.max"), "0")
                _write(os.path.join(folder, "pids.max"), str(max_procs))
            elif controller == "memory":
                _write(os.path.join(folder, "memory.limit_in_bytes"), str(memory_mb << 20))
            else:
                _write(os.path.join(folder, "pids.max"), str(max_procs))
    except OSError:
        _cgroup_remove(made)
        return []
    return made


def _cgroup_remove(folders: list[str]) -> None:
    """Kill what is left in the run's cgroups and remove them (never raises)."""
    for folder in folders:
        for _ in range(100):
            try:
                if os.path.exists(os.path.join(folder, "cgroup.kill")):
                    _write(os.path.join(folder, "cgroup.kill"), "1")
                with open(os.path.join(folder, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                os.rmdir(folder)
                break
            except OSError:
                time.sleep(0.02)


# -- one run ----------------------------------------------------------------------------------------
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


def _limits(memory_mb: int, cpu_s: int, nproc: int, fsize_mb: int, drop: int | None, cgroups: list[str]):
    values = [
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_CPU, cpu_s),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_FSIZE, fsize_mb << 20),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, nproc),
    ]
    procs = [os.path.join(c, "cgroup.procs") for c in cgroups]

    def apply() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        for path in procs:  # join the run's cgroups (as root, before any drop)
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for what, soft in values:
            hard = soft + 1 if what == resource.RLIMIT_CPU else soft
            resource.setrlimit(what, (soft, hard))
        if drop is not None:
            _drop(drop)()

    return apply


def _tail(f, token: str) -> tuple[str, bool]:
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
    return _run(iso, source, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, max_procs=max_procs,
                max_output_mb=max_output_mb, channel=channel, uid=uid)


def _run(iso: Isolation, source: str, *, timeout_s: float, memory_mb: int, cpu_s: int, max_procs: int,
         max_output_mb: int, channel: bool, uid: int) -> SandboxResult:
    nproc = max_procs if iso.fresh_uid else _tasks_of(uid) + max_procs
    token = secrets.token_hex(16)
    work = tempfile.mkdtemp(prefix=f"dlm-sandbox-{os.getpid()}-")  # the pid: a process can check its own are gone
    cgroups = _cgroup_create(os.path.basename(work), memory_mb + 64, max_procs + 2) if iso.fresh_uid else []
    start = time.perf_counter()
    rc, timed_out = None, False
    try:
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(source)
        if iso.fresh_uid and (iso.jail is None or iso.drop_first):  # it reads the file itself
            os.chown(work, uid, uid)
            os.chown(program, uid, uid)
        if iso.jail:
            inside = "/" + os.path.basename(work)
            root = os.path.join(work, "root")
            os.mkdir(root)
        else:
            inside = work
        env = {"PATH": "/usr/bin:/bin", "HOME": inside, "TMPDIR": inside, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as chan:
            fds = (chan.fileno(),) if channel else ()
            argv = [iso.python, "-I", "-S", "-c", WRAPPER, f"{inside}/program.py", *map(str, fds)]
            if iso.jail:
                cfg = {"mode": iso.jail, "uid": uid, "python": iso.python, "argv": argv, "env": env,
                       "binds": list(iso.view), "hide": list(iso.hide), "root": root, "work": inside,
                       "program": program, "tmpfs_mb": max(16, max_output_mb * 4), "inodes": TMPFS_INODES}
                cmd = [iso.python, "-I", "-S", "-c", JAIL, json.dumps(cfg)]
            else:
                cmd = argv
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work, env=env, start_new_session=True,
                    close_fds=True, pass_fds=fds,
                    preexec_fn=_limits(memory_mb, cpu_s, nproc, max_output_mb, uid if iso.drop_first else None,
                                       cgroups),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(passed=False, status="error", returncode=None, stdout="",
                                     stderr=f"could not start the sandbox: {exc}", wall_s=0.0, level=iso.level)
            try:
                proc.stdin.write(token.encode() + b"\n")
                proc.stdin.close()
            except OSError:
                pass
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                if iso.fresh_uid and not iso.jail:  # no PID namespace whose end kills them all
                    _reap(uid, iso.python)
                _cgroup_remove(cgroups)
                cgroups = []
            if timed_out:
                rc = proc.wait()
            wall = time.perf_counter() - start
            stdout, found = _tail(out, token)
            stderr, _ = _tail(err, token)
            chan_text = ""
            if channel:
                chan.seek(0)
                chan_text = chan.read().decode("utf-8", "replace")
    finally:
        _cgroup_remove(cgroups)
        remove_tree(work)
        if iso.fresh_uid and not iso.jail:
            _scrub(uid)
    if timed_out:
        status = "timeout"
    elif rc == 0 and found:
        status = "passed"
    elif rc < 0 or rc >= 128:  # killed by a signal (the launcher re-raises its child's)
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


# -- cleanup without recursion ------------------------------------------------------------------------
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def remove_tree(path: str, max_steps: int = 5_000_000) -> bool:
    """Delete `path` and everything below it, one directory at a time through directory file
    descriptors: no recursion and no long path, so neither depth nor name length can make it fail;
    folders the program made unreadable are made readable first. Never raises; -> whether it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
            return True
        except OSError:
            return False
    try:
        fd = _open_dir(path, None)
    except OSError:
        return False
    names: list[str] = []  # the path from `path` down to fd
    steps = 0
    try:
        while steps < max_steps:
            steps += 1
            sub = None
            try:
                with os.scandir(fd) as entries:
                    for e in entries:
                        steps += 1
                        if e.is_dir(follow_symlinks=False):
                            sub = e.name
                            break
                        try:
                            os.unlink(e.name, dir_fd=fd)
                        except FileNotFoundError:
                            pass
            except OSError:
                pass
            if sub is not None:
                try:
                    child = _open_dir(sub, fd)
                except OSError:
                    try:  # cannot enter it: try to remove it as it is, else give up on it
                        os.rmdir(sub, dir_fd=fd)
                        continue
                    except OSError:
                        return False
                os.close(fd)
                fd, names = child, [*names, sub]
                continue
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                return False
    except (OSError, ValueError, NotImplementedError):
        return False
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.rmdir(path)
        return True
    except OSError:
        return not os.path.lexists(path)


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:  # a folder the program made unreadable (found as a folder, not a link)
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _scrub(uid: int, dirs: tuple[str, ...] = SCRUB_DIRS) -> None:
    """Delete what the run's uid left in every folder below `dirs` it could reach (a fresh uid has
    no group: only folders whose "other" bits let it through, or its own), without recursion."""
    stack, seen = list(dirs), 0
    while stack and seen < SCRUB_MAX_ENTRIES:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                items = list(entries)
        except OSError:
            continue
        for e in items:
            seen += 1
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid == uid:
                remove_tree(e.path)
            elif stat.S_ISDIR(st.st_mode) and st.st_mode & 0o001:  # it could pass through (and maybe write)
                stack.append(e.path)


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
