"""Open the HTML report in headless Chromium: the summary, the leaderboard, every figure and its
caption render, and no section is empty.

Skipped when Chromium is absent (`.ci/run` installs Debian's `chromium`).
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from harness.report.markdown import write_report


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


CHROMIUM = _chromium()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def _chrome(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, env=env)


class _Dom(HTMLParser):
    """The leaderboard table's rows (the first table after the "Leaderboard" heading) and the images."""

    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.after_board = False
        self.board_rows = 0
        self.board_headers = 0
        self.in_board = False
        self.board_done = False
        self.body: dict = {}
        self.h2: list[str] = []
        self._in_h2 = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "h2" and a.get("id") == "leaderboard":
            self.after_board = True
        if tag == "table" and self.after_board and not self.board_done:
            self.in_board = True
        if self.in_board and tag == "tr":
            self.board_rows += 1
        if self.in_board and tag == "th":
            self.board_headers += 1
        if tag == "img":
            self.imgs.append(a)
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2[-1] += data

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        if tag == "table" and self.in_board:
            self.in_board, self.board_done = False, True


def _decode(png: bytes) -> np.ndarray:
    import matplotlib.image as mpimg

    return np.asarray(mpimg.imread(io.BytesIO(png), format="png"), dtype=float)


def test_html_report_renders_in_chromium(report_runs, tmp_path):
    md = write_report(report_runs[0], tmp_path / "reports")
    page = md.parent / "index.html"
    url = page.resolve().as_uri()

    dom = _chrome(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Dom()
    parsed.feed(dom.stdout)
    assert parsed.body.get("data-loaded") == "yes", "the page's load handler did not run"
    # the leaderboard table: a header row and one row per rank group (tied cells share one row, and a
    # line under the table names them)
    assert parsed.board_done and parsed.board_headers == 7
    tied = "2 tied cells" in dom.stdout
    assert parsed.board_rows == 1 + (1 if tied else 2)
    for cell in ("lowconf", "rand"):
        assert (f"<code>{cell}</code> 0." in dom.stdout) if tied else (f"<td><code>{cell}</code></td>" in dom.stdout)
    # the report opens with a summary of headline sentences, before the leaderboard
    assert parsed.h2[:2] == ["Summary", "Leaderboard"], parsed.h2
    text = " ".join(parsed.text)
    assert "Samplers (the study's question" in text  # the sampler section states its question's answer
    # both cells spend the same NFE, so the accuracy-vs-NFE figure would be one x value: it is left out,
    # and the wall-time frontier (two distinct times) is drawn with its caption
    alts = [img.get("alt") for img in parsed.imgs]
    assert "Accuracy against model wall time per sequence" in alts
    assert "Accuracy against measured NFE per sequence" not in alts
    assert text.count("Figure:") == len(parsed.imgs) >= 1
    # no empty section: every h2 is followed by more than its own title
    assert "_no records" not in dom.stdout and "no records report" not in text
    for img in parsed.imgs:
        src = img.get("src", "")
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert img.get("data-rendered") == "yes", f"{img.get('alt')}: the browser did not render it"
        pixels = _decode(base64.b64decode(src.split(",", 1)[1]))
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
        assert pixels.std() > 0.01, f"{img.get('alt')}: blank image"

    shot = tmp_path / "shot.png"
    res = _chrome([f"--screenshot={shot}", "--window-size=1200,3000", url], tmp_path / "profile-shot")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = _decode(shot.read_bytes())
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels[..., :3].var() > 1e-3, "blank screenshot"
    # the figures are in view: the screenshot has far more distinct colours than text on white
    assert len(np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
