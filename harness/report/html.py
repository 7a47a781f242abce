"""A self-contained static HTML page from the report's markdown (no network needed to open it).

A small converter for the markdown the report writes: ATX headings, paragraphs, `-` lists, pipe
tables, fenced code blocks, inline code, bold, italic, links and images. Every local image is
embedded as a base64 data URI (PNG, SVG, JPEG, GIF), so the page is one file; a missing image is
shown as a note. Tables sort by clicking a header (inline JavaScript, numeric where the cells
start with a number). Styling is a few lines of inline CSS.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:1em 0;font-size:.86em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f1f3f5;cursor:pointer;user-select:none;white-space:nowrap}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
tr:nth-child(even) td{background:#fafafa}
code{background:#f3f3f3;padding:0 .2em;border-radius:3px;font-size:.92em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;border-radius:4px}pre code{background:none;padding:0}
img{max-width:100%;height:auto;display:block;margin:.6em 0}.missing{color:#b00}
"""

JS = """
function cellKey(td){var t=td.textContent.trim().replace(/^=/,'');var m=t.match(/^-?\\d+(\\.\\d+)?(e[-+]?\\d+)?/i);
return m?[0,parseFloat(m[0]),t]:[1,0,t.toLowerCase()];}
function sortTable(th){var table=th.closest('table'),tbody=table.tBodies[0];if(!tbody)return;
var idx=Array.prototype.indexOf.call(th.parentNode.children,th);var asc=!th.classList.contains('asc');
Array.prototype.forEach.call(th.parentNode.children,function(h){h.classList.remove('asc','desc');});
th.classList.add(asc?'asc':'desc');var rows=Array.prototype.slice.call(tbody.rows);
rows.sort(function(a,b){var x=cellKey(a.cells[idx]),y=cellKey(b.cells[idx]);
var c=x[0]-y[0]||(x[0]===0?x[1]-y[1]:(x[2]<y[2]?-1:x[2]>y[2]?1:0));return asc?c:-c;});
rows.forEach(function(r){tbody.appendChild(r);});}
document.addEventListener('click',function(e){var th=e.target.closest('th');if(th)sortTable(th);});
window.addEventListener('load',function(){document.querySelectorAll('img').forEach(function(i){
i.setAttribute('data-rendered',i.complete&&i.naturalWidth>0?'yes':'no');});
document.body.setAttribute('data-loaded','yes');});
"""

_TOKEN = re.compile(r"`([^`]+)`|!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)")
_SEP = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _emphasis(escaped: str) -> str:
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"(?<![\w*])([_*])(?![\s_*])(.+?)(?<![\s_*])\1(?![\w*])", r"<em>\2</em>", escaped)


class Converter:
    def __init__(self, base_dir: Path | None):
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._ids: dict[str, int] = {}

    def image(self, alt: str, src: str) -> str:
        data = self._data_uri(src)
        if data is None:
            return f'<span class="missing">[missing figure: {html.escape(alt or src)}]</span>'
        return f'<img alt="{html.escape(alt, quote=True)}" src="{data}">'

    def _data_uri(self, src: str) -> str | None:
        if src.startswith("data:"):
            return html.escape(src, quote=True)
        mime = MIME.get(Path(src).suffix.lower())
        if mime is None or self.base_dir is None or re.match(r"^[a-z]+://", src):
            return None
        path = self.base_dir / src
        if not path.is_file():
            return None
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    def inline(self, text: str) -> str:
        out, pos = [], 0
        for m in _TOKEN.finditer(text):
            out.append(_emphasis(html.escape(text[pos:m.start()], quote=False)))
            code, alt, src, label, href = m.groups()
            if code is not None:
                out.append(f"<code>{html.escape(code, quote=False)}</code>")
            elif src is not None:
                out.append(self.image(alt, src))
            else:
                out.append(f'<a href="{html.escape(href, quote=True)}">{self.inline(label)}</a>')
            pos = m.end()
        out.append(_emphasis(html.escape(text[pos:], quote=False)))
        return "".join(out)

    def heading_id(self, text: str) -> str:
        slug = _slug(re.sub(r"[`*_]", "", text))
        n = self._ids.get(slug, 0)
        self._ids[slug] = n + 1
        return slug if n == 0 else f"{slug}-{n}"

    @staticmethod
    def _cells(line: str) -> list[str]:
        s = line.strip()
        if s.startswith("|"):
            s = s[1:]
        if s.endswith("|") and not s.endswith("\\|"):
            s = s[:-1]
        # split on pipes that are neither escaped nor inside a code span
        cells, cur, in_code, i = [], [], False, 0
        while i < len(s):
            ch = s[i]
            if ch == "\\" and i + 1 < len(s) and s[i + 1] == "|":
                cur.append("|")
                i += 2
                continue
            if ch == "`":
                in_code = not in_code
            if ch == "|" and not in_code:
                cells.append("".join(cur).strip())
                cur = []
            else:
                cur.append(ch)
            i += 1
        cells.append("".join(cur).strip())
        return cells

    def table(self, lines: list[str]) -> str:
        head = self._cells(lines[0])
        body = [self._cells(x) for x in lines[2:]]
        out = ["<table>", "<thead><tr>" + "".join(f"<th>{self.inline(c)}</th>" for c in head) + "</tr></thead>",
               "<tbody>"]
        for row in body:
            row = (row + [""] * len(head))[: max(len(head), len(row))]
            out.append("<tr>" + "".join(f"<td>{self.inline(c)}</td>" for c in row) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def convert(self, md: str) -> str:
        lines = md.replace("\r\n", "\n").split("\n")
        out: list[str] = []
        para: list[str] = []
        i = 0

        def flush():
            if para:
                out.append("<p>" + self.inline(" ".join(x.strip() for x in para)) + "</p>")
                para.clear()

        while i < len(lines):
            line = lines[i]
            s = line.strip()
            if s.startswith("```"):
                flush()
                lang = s[3:].strip()
                j = i + 1
                code = []
                while j < len(lines) and not lines[j].strip().startswith("```"):
                    code.append(lines[j])
                    j += 1
                cls = f' class="language-{html.escape(lang, quote=True)}"' if lang else ""
                out.append(f"<pre><code{cls}>" + html.escape("\n".join(code), quote=False) + "</code></pre>")
                i = j + 1
                continue
            m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", s)
            if m:
                flush()
                level, text = len(m.group(1)), m.group(2)
                out.append(f'<h{level} id="{self.heading_id(text)}">{self.inline(text)}</h{level}>')
                i += 1
                continue
            if s.startswith("|") and i + 1 < len(lines) and _SEP.match(lines[i + 1].strip()):
                flush()
                j = i + 2
                while j < len(lines) and lines[j].strip().startswith("|"):
                    j += 1
                out.append(self.table([x for x in lines[i:j]]))
                i = j
                continue
            if re.match(r"^[-*]\s+", s):
                flush()
                items = []
                while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                    items.append("<li>" + self.inline(re.sub(r"^[-*]\s+", "", lines[i].strip())) + "</li>")
                    i += 1
                out.append("<ul>" + "".join(items) + "</ul>")
                continue
            if not s:
                flush()
            elif re.fullmatch(r"-{3,}|\*{3,}", s):
                flush()
                out.append("<hr>")
            else:
                para.append(line)
            i += 1
        flush()
        return "\n".join(out)


def to_html(markdown_text: str, base_dir: Path | None = None, title: str | None = None) -> str:
    """The whole page; images are looked up relative to `base_dir` and embedded."""
    if title is None:
        m = re.search(r"^#\s+(.+)$", markdown_text, flags=re.M)
        title = re.sub(r"[`*_]", "", m.group(1)) if m else "Report"
    body = Converter(base_dir).convert(markdown_text)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title, quote=False)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"{body}\n<script>{JS}</script>\n</body>\n</html>\n")


def write_html(markdown_text: str, out_dir: Path) -> Path:
    """Write `out_dir/index.html` (atomically) from the report's markdown; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(to_html(markdown_text, out_dir), encoding="utf-8")
    tmp.replace(path)
    return path
