"""Render a report Document as Markdown for issue trackers: CommonMark plus pipe tables (the
GitHub / GitLab table extension; a plain CommonMark reader shows them as text). No raw HTML:
trackers strip it. Charts become a table of first / min / max / last values with a sparkline.
"""
from __future__ import annotations

import re

from .report_doc import Bold, Bullets, ChartBlock, Code, Details, Document, Heading, Para, Table

# characters that can start markup anywhere in a line
_ALWAYS = set("\\`*[]<>|~&")


def esc(text: str) -> str:
    out = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch in _ALWAYS:
            out.append("\\" + ch)
        elif ch == "_":
            prev = text[i - 1] if i else " "
            nxt = text[i + 1] if i + 1 < n else " "
            # intraword underscores never emphasise (CommonMark 6.2); others might
            out.append("_" if prev.isalnum() and nxt.isalnum() else "\\_")
        elif ch == "\n":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _lead(text: str) -> str:
    """Escape what would turn the start of a line into a block (heading, list, quote, rule)."""
    m = re.match(r"^(\s*)(#|>|-|\+|=|\d+[.)])", text)
    if m:
        i = len(m.group(1))
        tok = m.group(2)
        return text[:i] + tok[:-1] + "\\" + tok[-1] + text[i + len(tok):]
    return text


def code(text: str) -> str:
    text = text.replace("\n", " ")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")
                                                                    and text.strip()) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def inline(parts) -> str:
    if isinstance(parts, (str, Bold, Code)):
        parts = [parts]
    out = []
    for p in parts:
        if isinstance(p, Bold):
            t = esc(p.text)
            core = t.strip()
            if not core:
                out.append(t)
                continue
            # delimiters hug the text: "**Confidence:** high", never "**Confidence: **high"
            lead, trail = t[:len(t) - len(t.lstrip())], t[len(t.rstrip()):]
            out.append(f"{lead}**{core}**{trail}")
        elif isinstance(p, Code):
            out.append(code(p.text))
        elif isinstance(p, list):
            out.append(inline(p))
        else:
            out.append(esc(str(p)))
    return "".join(out)


def _cell(c) -> str:
    if isinstance(c, str) and c.startswith("  "):
        c = "· " + c.lstrip()
    text = inline(c)
    # a pipe inside a code span must be escaped too (GFM tables); esc() did it outside code
    if isinstance(c, (Code, list)):
        text = re.sub(r"(?<!\\)\|", r"\\|", text)
    return text.strip() or " "


def table(t: Table) -> list[str]:
    out = []
    if t.caption:
        out += [f"*{esc(t.caption)}*", ""]
    head = [esc(h) or " " for h in t.head]
    if not any(h.strip() for h in head):
        head = ["item", "value"][:len(head)] + [" "] * max(0, len(head) - 2)
    out.append("| " + " | ".join(head) + " |")
    al = (t.align or "").ljust(len(t.head), "l")
    out.append("|" + "|".join("---:" if a == "r" else "---" for a in al) + "|")
    for row in t.rows:
        cells = [_cell(c) for c in row] + [" "] * (len(t.head) - len(row))
        out.append("| " + " | ".join(cells) + " |")
    return out


def render_markdown(doc: Document) -> str:
    lines = [f"# {_lead(esc(doc.title))}", "", _lead(esc(doc.subtitle)), ""]
    for b in doc.blocks:
        lines += _block(b)
    return "\n".join(lines).rstrip() + "\n"


def _block(b) -> list[str]:
    if isinstance(b, Heading):
        return [f"{'#' * b.level} {esc(b.text)}", ""]
    if isinstance(b, Para):
        text = _lead(inline(b.parts))
        if b.cls == "muted":
            text = f"*{text}*" if text and not text.endswith("\\") else text
        return [text, ""]
    if isinstance(b, Bullets):
        out = []
        for k, item in enumerate(b.items, 1):
            mark = f"{k}." if b.ordered else "-"
            out.append(f"{mark} {_lead(inline(item))}")
        return out + [""]
    if isinstance(b, Table):
        return table(b) + [""]
    if isinstance(b, ChartBlock):
        return [f"**{esc(b.chart.title)}**", ""] + table(b.summary) + [""]
    if isinstance(b, Details):
        if b.in_markdown:
            out = [f"**{esc(b.summary)}**", ""]
            for x in b.blocks:
                out += _block(x)
            return out
        return [f"*{esc(b.summary)}: in the HTML report.*", ""]
    raise TypeError(f"unknown block {type(b).__name__}")
