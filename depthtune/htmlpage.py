"""A report's markdown as one self-contained HTML page: headings, lists, tables, bold, and every
plot inlined as base64 PNG, so the page can be mailed or archived as one file.

Hand-written (about 40 lines) because the subset our reports use is small and a markdown library
would add a dependency for it.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path


def render(md: str, folder: Path, title: str = "depthtune report") -> str:
    """The markdown report as one self-contained page: headings, lists, tables, plots inlined."""
    bold = re.compile(r"[*][*](.+?)[*][*]")
    image = re.compile(r"!\[(.*)\]\((.+)\)")
    out, table = [], []

    def inline(text: str) -> str:
        return bold.sub(r"<b>\1</b>", html.escape(text))

    def flush() -> None:
        if table:
            rows = [r for r in table if not r.startswith("|---")]
            out.append("<div class='scroll'><table>" + "".join(
                "<tr>" + "".join(f"<{t}>{inline(c.strip())}</{t}>" for c in r.strip().strip("|").split("|")) + "</tr>"
                for r, t in zip(rows, ["th"] + ["td"] * len(rows))) + "</table></div>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if out and out[-1].startswith("<li>") and not line.startswith("- "):
            out.append("</ul>")
        if line.startswith("- ") and not (out and out[-1].startswith("<li>")):
            out.append("<ul>")
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif image.match(line):
            alt, src = image.match(line).groups()
            data = base64.b64encode((folder / src).read_bytes()).decode()
            out.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(alt)}</figcaption></figure>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>" + html.escape(title) +
            "</title><style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;"
            "line-height:1.4;overflow-wrap:anywhere}.scroll{overflow-x:auto;margin:1em 0}table{border-collapse:collapse;"
            "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
            "td{max-width:28em}img{max-width:100%;height:auto}figure{margin:1em 0}</style>"
            "</head><body>" + "\n".join(out) + "</body></html>")
