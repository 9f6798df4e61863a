"""Render a report Document as one self-contained HTML file: inline CSS, charts as inline SVG,
no script, no font, image or link outside the file (only #anchors)."""
from __future__ import annotations

from html import escape

from .report_doc import Bold, Bullets, ChartBlock, Code, Details, Document, Heading, Para, Table
from .svg import render as render_svg

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d1d1f;
       margin: 0; background: #f4f5f7; }
main { max-width: 1180px; margin: 0 auto; padding: 18px 28px 60px; background: #fff; }
h1 { font-size: 1.55em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 2px solid #dde1e6; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
p.subtitle { color: #555; margin-top: 0; }
p.verdict { background: #f3f7fc; border-left: 4px solid #2b6cb0; padding: 8px 12px; margin: 8px 0; line-height: 1.45; }
p.muted { color: #666; font-size: 0.92em; }
nav { font-size: 0.92em; margin: 8px 0 4px; }
nav a { margin-right: 14px; color: #2b6cb0; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.88em; }
caption { caption-side: top; text-align: left; color: #555; font-style: italic; padding-bottom: 4px; }
th, td { border: 1px solid #d8dce1; padding: 3px 7px; vertical-align: top; }
th { background: #eef1f5; text-align: left; }
td.r, th.r { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.sub { padding-left: 22px; color: #555; }
tr.critical td { background: #fde4e4; }
tr.warning td { background: #fff5d9; }
tr.info td { background: #eaf4fc; }
tbody tr:nth-child(even) td { background-color: #fafbfc; }
tr.critical:nth-child(even) td { background: #fbdada; }
tr.warning:nth-child(even) td { background: #fcefc9; }
tr.info:nth-child(even) td { background: #e0eefa; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.92em; background: #f0f2f4;
       padding: 0 3px; border-radius: 3px; }
figure { margin: 12px 0 18px; }
svg.chart { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
details { margin: 6px 0 10px; }
summary { cursor: pointer; color: #2b6cb0; }
ul, ol { margin-top: 4px; }
li { margin: 2px 0; }
"""


def _inline(parts) -> str:
    if isinstance(parts, (str, Bold, Code)):
        parts = [parts]
    out = []
    for p in parts:
        if isinstance(p, Bold):
            out.append(f"<strong>{escape(p.text)}</strong>")
        elif isinstance(p, Code):
            out.append(f"<code>{escape(p.text)}</code>")
        elif isinstance(p, list):
            out.append(_inline(p))
        else:
            out.append(escape(str(p)))
    return "".join(out)


def _table(t: Table) -> str:
    al = (t.align or "").ljust(len(t.head), "l")
    out = ["<table>"]
    if t.caption:
        out.append(f"<caption>{escape(t.caption)}</caption>")
    if any(h for h in t.head):
        out.append("<thead><tr>" + "".join(f'<th class="{"r" if a == "r" else ""}">{escape(h)}</th>'
                                           for h, a in zip(t.head, al)) + "</tr></thead>")
    out.append("<tbody>")
    for k, row in enumerate(t.rows):
        cls = t.row_cls[k] if k < len(t.row_cls) else ""
        cells = []
        for j, c in enumerate(row):
            klass = "r" if al[j] == "r" else ""
            if isinstance(c, str) and c.startswith("  "):
                klass, c = "sub", c.lstrip()
            cells.append(f'<td class="{klass}">{_inline(c)}</td>' if klass else f"<td>{_inline(c)}</td>")
        out.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>" if cls else "<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _block(b) -> str:
    if isinstance(b, Heading):
        return f'<h{b.level} id="{escape(b.anchor)}">{escape(b.text)}</h{b.level}>'
    if isinstance(b, Para):
        cls = f' class="{b.cls}"' if b.cls else ""
        return f"<p{cls}>{_inline(b.parts)}</p>"
    if isinstance(b, Bullets):
        tag = "ol" if b.ordered else "ul"
        return f"<{tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + f"</{tag}>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, ChartBlock):
        return (f"<figure>{render_svg(b.chart)}"
                f"<details><summary>values of {escape(b.chart.title)}</summary>{_table(b.summary)}</details></figure>")
    if isinstance(b, Details):
        return (f"<details><summary>{escape(b.summary)}</summary>" + "\n".join(_block(x) for x in b.blocks)
                + "</details>")
    raise TypeError(f"unknown block {type(b).__name__}")


def render_html(doc: Document) -> str:
    toc = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    nav = "<nav>" + "".join(f'<a href="#{escape(h.anchor)}">{escape(h.text)}</a>' for h in toc) + "</nav>"
    body = "\n".join(_block(b) for b in doc.blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{escape(doc.title)}</h1>\n<p class=\"subtitle\">{escape(doc.subtitle)}</p>\n{nav}\n{body}\n"
            "</main>\n</body>\n</html>\n")
