"""Progress output: plain lines (no carriage returns) when stderr is not a terminal."""
from __future__ import annotations

import io

from harness import progress


def test_plain_lines_when_not_a_tty(monkeypatch):
    buf = io.StringIO()
    bar = progress.PlainProgress(range(5), desc="cell", every=0.0, stream=buf)
    assert list(bar) == [0, 1, 2, 3, 4]
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("cell: 5/5 (100%)") and "\r" not in buf.getvalue()
    assert len(lines) == 5  # one per update at every=0, and no repeat of the last one on close


def test_throttled_and_disabled():
    buf = io.StringIO()
    bar = progress.PlainProgress(total=100, desc="x", every=3600, stream=buf)
    for _ in range(100):
        bar.update()
    bar.close()
    assert buf.getvalue().splitlines() == [buf.getvalue().splitlines()[-1]] and "100/100" in buf.getvalue()
    quiet = io.StringIO()
    off = progress.PlainProgress(total=3, desc="y", disable=True, stream=quiet)
    off.update(3)
    off.close()
    assert quiet.getvalue() == ""


def test_bar_is_plain_when_stderr_is_not_a_tty(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress.bar(total=3, desc="z"), progress.PlainProgress)


def test_plain_lines_show_time_left_and_postfix():
    buf = io.StringIO()
    bar = progress.PlainProgress(total=4, desc="rl steps", every=0.0, stream=buf)
    bar.t0 -= 10.0  # 10 s spent on the first 2 steps: 10 s left for the other 2
    bar.set_postfix(reward="0.250")
    bar.update(2)
    line = buf.getvalue().splitlines()[-1]
    assert line.startswith("rl steps: 2/4 (50%) 10s, eta 10s reward=0.250"), line
