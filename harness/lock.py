"""An exclusive lock per run directory: one writer at a time.

Two processes appending to one records.jsonl duplicate units, and their manifest writes erase each
other's fields; so every command that writes a run directory holds `RunLock(run_dir)` while it
does. The lock is an advisory `fcntl.flock` on `run_dir/.lock`, held by an open file: the kernel
releases it when the holder exits, however it exits, so a lock can never outlive a dead process.
The file also says who holds it (pid, host, start time): a second writer gets an error naming
them. A lock file left by a dead process (its pid gone on this host) is reported as stale and taken
over; on a host where flock is not available (some network file systems), the pid check alone
decides.

Parts of one run (`run --shard i/N`, `--cells`) each hold their own lock, `.lock.part-<name>`, for
as long as they run, and the run's lock only briefly (`wait`: they queue for it), while they start
and while they merge; `running_parts` says which parts' locks are held right now.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import time
from pathlib import Path

from harness.types import HarnessError

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_name(part: str | None) -> str:
    return LOCK if not part else f"{LOCK}.part-{part}"


def holder(run_dir: Path, part: str | None = None) -> dict:
    """What the lock file says about its holder ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(run_dir) / lock_name(part)).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """`with RunLock(run_dir):` or `lock = RunLock(run_dir).acquire(); ...; lock.release()`."""

    def __init__(self, run_dir: str | Path, command: str = "", part: str | None = None, wait: float = 0.0):
        self.run_dir = Path(run_dir)
        self.part = part
        self.path = self.run_dir / lock_name(part)
        self.command = command
        self.wait = wait  # seconds to wait for a held lock before giving up (0: fail at once)
        self._fh = None
        self.stale: dict | None = None  # the dead holder whose lock file was taken over, if any

    def acquire(self) -> "RunLock":
        if not self.run_dir.is_dir():
            raise HarnessError(f"{self.run_dir}: not a run directory (cannot lock it)")
        try:
            fh = self._open()
        except OSError as exc:
            raise HarnessError(f"{self.path}: cannot open the run directory's lock file ({exc.strerror})") from None
        exc = self._flock(fh)
        if exc is not None:
            fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise HarnessError(self._held_message(holder(self.run_dir, self.part))) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise HarnessError(f"{self.path}: cannot lock the run directory ({exc.strerror})") from None
            self._fallback()  # no flock here: the pid in the file decides
            fh = self._open()
        previous = holder(self.run_dir, self.part)
        if previous.get("pid") and previous.get("released_at") is None:
            self.stale = previous  # we hold the flock, so its writer is gone without releasing
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                             "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def _flock(self, fh) -> OSError | None:
        """Take the flock, waiting up to `self.wait` seconds for a holder; -> None, or the last error."""
        import fcntl

        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except OSError as exc:
                busy = exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN)
                if not busy or time.monotonic() >= deadline:
                    return exc
                time.sleep(0.05)

    def _open(self):
        """The lock file, never through a symbolic link (the holder note is written into it, and a link
        planted in a run directory could point at any file)."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        return os.fdopen(os.open(self.path, flags, 0o644), "a+", encoding="utf-8")

    def _fallback(self) -> None:
        info = holder(self.run_dir, self.part)
        if info.get("released_at") is None and info.get("host") == socket.gethostname() \
                and isinstance(info.get("pid"), int) and info["pid"] != os.getpid() and _pid_alive(info["pid"]):
            raise HarnessError(self._held_message(info))

    def _held_message(self, info: dict) -> str:
        what = f"part {self.part} of this run" if self.part else "this run directory"
        who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
        since = f" since {info['since']}" if info.get("since") else ""
        cmd = f" ({info['command']})" if info.get("command") else ""
        return (f"{self.run_dir}: another process is writing {what}: {who}{since}{cmd}. "
                "Wait for it to finish (or stop it) and try again.")

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            info = holder(self.run_dir, self.part)
            info["released_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.write(json.dumps(info) + "\n")
            self._fh.flush()
        except OSError:  # a full disk: the note is lost, the lock is still released (the kernel drops it)
            pass
        finally:
            try:
                self._fh.close()  # closing the file releases the flock
            except OSError:
                pass
            self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> "RunLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


def is_held(run_dir: Path, part: str | None = None) -> bool:
    """Whether the run's lock (or a part's) is held right now by a live process (here, or on another
    host that shares the file system). Probing takes the lock for an instant when it is free."""
    import fcntl

    path = Path(run_dir) / lock_name(part)
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return True
        info = holder(run_dir, part)  # no flock here: the holder note decides
        return info.get("released_at") is None and isinstance(info.get("pid"), int) and (
            info.get("host") != socket.gethostname() or _pid_alive(info["pid"]))
    finally:
        os.close(fd)


def running_parts(run_dir: Path, mine: str | None = None) -> list[str]:
    """The parts of a run whose lock is held right now; `mine` (held by the caller) is left out."""
    parts = sorted(p.name[len(LOCK + ".part-"):] for p in Path(run_dir).glob(LOCK + ".part-*"))
    return [part for part in parts if part != mine and is_held(run_dir, part)]
