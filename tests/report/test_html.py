"""The report page (markdown-it-py + the Jinja2 template): tables, code blocks, images embedded, bold
around inline code, no external references."""
from __future__ import annotations

import base64
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.report.html import to_html, write_html  # noqa: E402

SAMPLE = """# Suite `demo`: run `r1`

Status: **complete**. **Best: `lowconf` at 0.9** and a _short_ note with `a<b` & a [link](https://example.org).

## Leaderboard

| rank | cell | value |
|---|---|---|
| 1 | `x\\|y` | 0.9 |
| =2 | b | 0.5 |

```json
{"html": "<script>alert(1)</script>", "amp": "&"}
```

- first item
- second item

![A figure](fig.png) ([svg](fig.svg))

![Gone](missing.png)
"""


def _png(path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def test_converter_tables_code_images(tmp_path):
    _png(tmp_path / "fig.png")
    page = to_html(SAMPLE, tmp_path)
    assert page.startswith("<!DOCTYPE html>") and "<title>Suite demo: run r1</title>" in page
    assert '<h1 id="suite-demo-run-r1">' in page and '<h2 id="leaderboard">Leaderboard</h2>' in page
    assert "<strong>complete</strong>" in page and "<em>short</em>" in page
    # bold around inline code is bold (the old hand-written converter printed literal asterisks)
    assert "<strong>Best: <code>lowconf</code> at 0.9</strong>" in page and "**" not in page
    assert "<code>a&lt;b</code> &amp; a" in page
    # the table: header cells, body rows, and an escaped pipe inside a code span stays in its cell (GFM)
    table = re.search(r"<table>.*?</table>", page, flags=re.S).group(0)
    assert table.count("<th>") == 3 and table.count("<tr>") == 3
    assert "<td><code>x|y</code></td>" in table and "<td>=2</td>" in table
    # code blocks are escaped, never live markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert '<pre><code class="language-json">' in page
    assert re.search(r"<ul>\s*<li>first item</li>\s*<li>second item</li>\s*</ul>", page)
    # the PNG is embedded as a data URI and decodes to the same bytes; a missing one is a note
    imgs = re.findall(r'<img alt="([^"]*)" src="([^"]+)"', page)
    assert [a for a, _ in imgs] == ["A figure"]
    assert imgs[0][1].startswith("data:image/png;base64,")
    assert base64.b64decode(imgs[0][1].split(",", 1)[1]) == (tmp_path / "fig.png").read_bytes()
    assert "missing figure: Gone" in page
    # self-contained: no external scripts, styles or images
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page)
    assert "sortTable" in page and "<style>" in page


def test_write_html(tmp_path):
    _png(tmp_path / "fig.png")
    path = write_html(SAMPLE, tmp_path)
    assert path == tmp_path / "index.html" and "data:image/png;base64," in path.read_text()
