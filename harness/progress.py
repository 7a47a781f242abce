"""Progress on stderr: a tqdm bar on a terminal, plain lines elsewhere (CI logs, files, pipes).

A bar redrawn with carriage returns turns a log file into one unreadable line, so when stderr is
not a terminal the same calls print `desc: k/n (p%) elapsed, eta left [postfix]` lines, at most
one every `every` seconds plus the last one. The time left is the mean time per unit so far times
the units left (tqdm's estimate too). Under torchrun only rank 0 draws bars; the runner feeds them
every rank's units (read from the other ranks' record files), so they count the whole job's work.
"""
from __future__ import annotations

import sys
import time


class PlainProgress:
    """The subset of tqdm's interface the harness uses (`update`, `close`, iteration, context)."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", disable: bool = False, every: float = 10.0,
                 stream=None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.disable, self.every = desc, disable, every
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = self._last = time.monotonic()
        self._closed = False
        self._printed = -1
        self.postfix = ""

    def _line(self) -> None:
        self._printed = self.n
        elapsed = time.monotonic() - self.t0
        of = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", eta {elapsed / self.n * (self.total - self.n):.0f}s" if self.total and self.n else ""
        post = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {elapsed:.0f}s{eta}{post}", file=self.stream, flush=True)

    def set_postfix(self, **values) -> None:
        """Shown after the counts (tqdm's set_postfix): e.g. the last RL step's mean reward."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last >= self.every:
            self._last = now
            self._line()

    def close(self) -> None:
        if not self._closed and not self.disable and self.n and self._printed != self.n:
            self._line()
        self._closed = True

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bar(iterable=None, *, total=None, desc: str = "", disable: bool = False, leave: bool = True):
    """tqdm on a terminal, PlainProgress otherwise; both write to stderr."""
    if disable or not sys.stderr.isatty():
        return PlainProgress(iterable, total=total, desc=desc, disable=disable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, file=sys.stderr)
