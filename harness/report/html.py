"""A self-contained static HTML page from the report's markdown (no network needed to open it).

The markdown is rendered by markdown-it-py (CommonMark plus GFM tables) and placed in a Jinja2
template (`templates/report.html.j2`: inline CSS, a table of contents, click-to-sort tables).
Two render rules are the harness's own: headings get stable ids (for the contents and links), and
every local image is embedded as a base64 data URI so the page is one file; a missing or remote
image becomes a visible note instead of a reference that would need the network.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif"}
TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _data_uri(src: str, base_dir: Path | None) -> str | None:
    """A data URI for a local image under base_dir; None for a remote, unknown or missing one."""
    if src.startswith("data:image/"):
        return src
    mime = MIME.get(Path(src).suffix.lower())
    if mime is None or base_dir is None or re.match(r"^[a-z][a-z0-9+.-]*:", src) or src.startswith("//"):
        return None
    path = Path(base_dir) / src
    if not path.is_file():
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _markdown(base_dir: Path | None, toc: list[tuple[str, str]]):
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    ids: dict[str, int] = {}

    def heading_open(renderer, tokens, idx, options, env):
        inline = tokens[idx + 1]
        text = "".join(t.content for t in (inline.children or []) if t.type in ("text", "code_inline"))
        slug = _slug(text)
        n = ids.get(slug, 0)
        ids[slug] = n + 1
        hid = slug if n == 0 else f"{slug}-{n}"
        if tokens[idx].tag == "h2":
            toc.append((hid, text))
        return f'<{tokens[idx].tag} id="{hid}">'

    def image(renderer, tokens, idx, options, env):
        tok = tokens[idx]
        alt = "".join(t.content for t in (tok.children or [])) or tok.content
        src = tok.attrGet("src") or ""
        data = _data_uri(src, base_dir)
        if data is None:
            return f'<span class="missing">[missing figure: {html.escape(alt or src)}]</span>'
        return f'<img alt="{html.escape(alt, quote=True)}" src="{html.escape(data, quote=True)}">'

    md.add_render_rule("heading_open", heading_open)
    md.add_render_rule("image", image)
    return md


def to_html(markdown_text: str, base_dir: Path | None = None, title: str | None = None) -> str:
    """The whole page; images are looked up relative to `base_dir` and embedded."""
    import jinja2

    if title is None:
        m = re.search(r"^#\s+(.+)$", markdown_text, flags=re.M)
        title = re.sub(r"[`*_]", "", m.group(1)).strip() if m else "Report"
    toc: list[tuple[str, str]] = []
    body = _markdown(base_dir, toc).render(markdown_text)
    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    head, sep, rest = body.partition("</h1>")  # the contents go under the title
    if not sep:
        head, rest = "", body
    markup = jinja2.utils.markupsafe.Markup
    return template.render(title=title, head=markup(head + sep), body=markup(rest), toc=toc)


def write_html(markdown_text: str, out_dir: Path) -> Path:
    """Write `out_dir/index.html` (atomically) from the report's markdown; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from harness.paths import write_text_atomic

    return write_text_atomic(out_dir / "index.html", to_html(markdown_text, out_dir))
