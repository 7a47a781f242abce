"""The namespaced levels' launcher: a minimal read-only view of the filesystem for the sandboxed program.

This file's source is run by the sandbox as `python -I -S -c JAIL CONFIG` (`sandbox.run_program`),
so it is self-contained and uses the standard library only (ctypes for the system calls Python
3.11 lacks). It runs trusted, before any untrusted code, and:
1. creates new mount, PID, network, IPC and UTS namespaces (and, at "user-ns", a user namespace
   in which it is root), then forks: the child is PID 1 of the new PID namespace and dies with
   its parent (PR_SET_PDEATHSIG), and when PID 1 dies the kernel kills every process it started;
2. in the child, builds a new root on a fresh tmpfs holding only the interpreter, its shared
   libraries and its standard library (bind mounts, read-only, nothing below them mounted),
   /dev/null, /dev/zero, /dev/random and /dev/urandom, a fresh /proc of the new PID namespace,
   private tmpfs folders for /tmp, /dev/shm and the program's work folder (a copy of the
   program only), and makes that its root (`pivot_root`, the host's tree detached); the root
   itself is then remounted read-only. No dataset, result, home or project file is in that view;
3. drops every privilege (as root: to the run's fresh uid; at "user-ns": into a second user
   namespace as an unprivileged uid, so the mounts above belong to a namespace the program has
   no capability in and can neither be unmounted nor made writable), then execs the wrapper;
4. exit statuses travel up unchanged, 128 + N for a program killed by signal N.
Every mount dies with the namespace, so nothing the program writes outlives it.
Exit status 97 (with a message on stderr) means the launcher itself failed.
"""
import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
LAUNCH_FAILED = 97


def _fail(what, err=None):
    os.write(2, ("sandbox launcher: %s%s\n" % (what, ": " + os.strerror(err) if err else "")).encode())
    os._exit(LAUNCH_FAILED)


def main():
    cfg = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

    def call(what, rc):
        if rc != 0:
            _fail(what, ctypes.get_errno())

    def mount(src, target, fstype, flags, data=None):
        def enc(s):
            return s.encode() if s is not None else None
        rc = libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data))
        call("mount %s on %s" % (src or fstype, target), rc)

    def write_file(path, text):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    user = cfg["mode"] == "user"
    outer_uid, outer_gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWUSER if user else 0)
    call("unshare", libc.unshare(flags))
    if user:  # root inside, the caller's uid outside
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", "0 %d 1" % outer_uid)
        write_file("/proc/self/gid_map", "0 %d 1" % outer_gid)

    pid = os.fork()
    if pid:  # the parent: outside the new PID namespace; report the child's status as its own
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                os._exit(LAUNCH_FAILED)
            except InterruptedError:
                continue
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status))

    # The child: PID 1 of the new namespace.
    call("prctl", libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
    with open(cfg["program"], "rb") as f:
        source = f.read()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = cfg["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID, "size=1m,nr_inodes=4096,mode=755")

    def make(target, is_dir):
        parts = target.strip("/").split("/")
        path = root
        for i, p in enumerate(parts):
            path = path + "/" + p
            last = i == len(parts) - 1
            if os.path.lexists(path):
                continue
            if last and not is_dir:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            else:
                os.mkdir(path, 0o755)
        return path

    def bind_ro(src, target=None, extra=0):
        dst = make(target or src, os.path.isdir(src))
        mount(src, dst, None, MS_BIND)
        mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | extra)

    for path in cfg["binds"]:
        if os.path.exists(path):
            bind_ro(path, extra=MS_NODEV)
    for path in cfg["hide"]:  # folders inside a bound one that are not part of the view (site-packages)
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,nr_inodes=2")
    for dev in ("null", "zero", "random", "urandom"):
        bind_ro("/dev/" + dev)
        mount(None, root + "/dev/" + dev, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)  # writable
    size = "size=%dm,nr_inodes=%d,mode=1777" % (cfg["tmpfs_mb"], cfg["inodes"])
    for folder in ("/tmp", "/dev/shm"):
        mount("tmpfs", make(folder, True), "tmpfs", MS_NOSUID | MS_NODEV, size)
    work = cfg["work"]
    mount("tmpfs", make(work, True), "tmpfs", MS_NOSUID | MS_NODEV, size.replace("1777", "700"))
    program = root + work + "/program.py"
    fd = os.open(program, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, source)
    os.close(fd)
    mount("proc", make("/proc", True), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    os.chdir(root)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        _fail("pivot_root: unknown system call number on " + os.uname().machine)
    call("pivot_root", libc.syscall(nr, b".", b"."))
    call("umount the host's tree", libc.umount2(b".", MNT_DETACH))
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)

    program_pid = os.fork()
    if program_pid == 0:
        _become_program(cfg, libc, call, write_file, user)
    # PID 1: trusted; reaps every orphan and ends (and with it the namespace) when the program ends.
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(LAUNCH_FAILED)
        except InterruptedError:
            continue
        if done == program_pid:
            os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status))


def _become_program(cfg, libc, call, write_file, user):
    uid, work = cfg["uid"], cfg["work"]
    if user:  # a second user namespace, as an unprivileged uid: no capability over the mounts above
        call("unshare the user namespace", libc.unshare(CLONE_NEWUSER))
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", "%d 0 1" % uid)
        write_file("/proc/self/gid_map", "%d 0 1" % uid)
    else:
        os.chown(work, uid, uid)
        os.chown(work + "/program.py", uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(work)
    os.execve(cfg["python"], cfg["argv"], cfg["env"])


main()
