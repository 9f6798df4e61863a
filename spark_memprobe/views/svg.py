"""Line charts as inline SVG: no plotting library, no script, no external reference.

Long series are reduced to at most two points (min and max) per horizontal pixel column, so a
one-hour recording at 10 Hz draws as fast as a short one and keeps every peak. None values
break a line (missing is never drawn as 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional
from xml.sax.saxutils import escape

from .fmt import byte_unit

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]


@dataclass
class Line:
    label: str
    xs: list                     # seconds
    ys: list                     # bytes or None
    color: Optional[str] = None
    dashed: bool = False
    title: str = ""


@dataclass
class Mark:
    x: float
    label: str
    kind: str = "moment"


@dataclass
class Chart:
    title: str
    lines: list[Line]
    marks: list[Mark] = field(default_factory=list)
    width: int = 960
    height: int = 300
    y_label: str = "bytes"
    x_label: str = "seconds since the first sample"


def _esc(s: str) -> str:
    return escape(str(s), {'"': "&quot;"})


def _nice_step(span: float, target: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt_tick(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:g}"


def reduce_points(xs: list, ys: list, x0: float, x1: float, columns: int) -> list[list[tuple[float, float]]]:
    """Polyline segments (None splits), at most min and max per pixel column, in x order."""
    segs: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = []
    span = (x1 - x0) or 1.0
    col = None
    lo = hi = None
    first = None

    def flush():
        if col is None:
            return
        # keep the order in which the extremes occurred
        pts = sorted({first, lo, hi}, key=lambda p: p[0])
        cur.extend(pts)

    for x, y in zip(xs, ys):
        if y is None:
            flush()
            col, lo, hi, first = None, None, None, None
            if cur:
                segs.append(cur)
            cur = []
            continue
        c = int((x - x0) / span * columns)
        if c != col:
            flush()
            col, lo, hi, first = c, (x, y), (x, y), (x, y)
        else:
            if y < lo[1]:
                lo = (x, y)
            if y > hi[1]:
                hi = (x, y)
    flush()
    if cur:
        segs.append(cur)
    return segs


def render(chart: Chart) -> str:
    """The chart as an <svg> element (text)."""
    W, H = chart.width, chart.height
    left, right, top, bottom = 74, 16, 34, 46
    pw, ph = W - left - right, H - top - bottom
    xs_all = [x for ln in chart.lines for x, y in zip(ln.xs, ln.ys) if y is not None]
    ys_all = [y for ln in chart.lines for y in ln.ys if y is not None]
    out = [f'<svg class="chart" width="{W}" height="{H + 22 * _legend_rows(chart)}" '
           f'viewBox="0 0 {W} {H + 22 * _legend_rows(chart)}" role="img" aria-label="{_esc(chart.title)}">',
           f'<title>{_esc(chart.title)}</title>',
           f'<rect x="0" y="0" width="{W}" height="{H + 22 * _legend_rows(chart)}" fill="#ffffff"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold" fill="#222">{_esc(chart.title)}</text>']
    if not ys_all:
        out.append(f'<text x="{left + 10}" y="{top + ph / 2}" font-size="13" fill="#888">not read in this '
                   f'recording</text></svg>')
        return "\n".join(out)
    x0, x1 = min(xs_all), max(xs_all)
    if x1 <= x0:
        x1 = x0 + 1.0
    ymax = max(ys_all)
    ymin = min(0, min(ys_all))
    div, unit = byte_unit(max(abs(ymax), abs(ymin), 1))
    ystep = _nice_step((ymax - ymin) / div, 5) * div
    ytop = math.ceil(ymax / ystep) * ystep if ymax > 0 else ystep
    ybot = math.floor(ymin / ystep) * ystep if ymin < 0 else 0

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - ybot) / (ytop - ybot) * ph

    # grid and axes
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfbfb" stroke="#bbb"/>')
    y = ybot
    while y <= ytop + ystep / 2:
        py = sy(y)
        out.append(f'<line x1="{left}" y1="{py:.1f}" x2="{left + pw}" y2="{py:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 6}" y="{py + 4:.1f}" font-size="11" text-anchor="end" fill="#444">'
                   f'{_fmt_tick(y / div)} {unit}</text>')
        y += ystep
    xstep = _nice_step(x1 - x0, 8)
    x = math.ceil(x0 / xstep) * xstep
    while x <= x1 + 1e-9:
        px = sx(x)
        out.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + ph}" stroke="#eeeeee"/>')
        out.append(f'<text x="{px:.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle" fill="#444">'
                   f'{_fmt_tick(round(x, 6))}</text>')
        x += xstep
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 34}" font-size="11" text-anchor="middle" fill="#444">'
               f'{_esc(chart.x_label)}</text>')
    # markers: numbered dashed lines, labels in the legend below
    for k, m in enumerate(chart.marks, 1):
        if not (x0 <= m.x <= x1):
            continue
        px = sx(m.x)
        color = {"moment": "#555", "target": "#b00", "stopped": "#b00", "cuda": "#7a4"}.get(m.kind, "#555")
        out.append(f'<g><title>{_esc(f"{k}: {m.label} (t={m.x:.1f} s)")}</title>'
                   f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + ph}" stroke="{color}" '
                   f'stroke-dasharray="4 3" stroke-width="1"/>'
                   f'<rect x="{px - 8:.1f}" y="{top - 15}" width="16" height="14" rx="3" fill="{color}"/>'
                   f'<text x="{px:.1f}" y="{top - 4}" font-size="10" text-anchor="middle" fill="#fff">{k}</text></g>')
    # lines
    for idx, ln in enumerate(chart.lines):
        color = ln.color or PALETTE[idx % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
        for seg in reduce_points(ln.xs, ln.ys, x0, x1, pw):
            if len(seg) == 1:
                px, py = sx(seg[0][0]), sy(seg[0][1])
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="{color}"/>')
                continue
            pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in seg)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{pts}">'
                       f'<title>{_esc(ln.label)}</title></polyline>')
    # legend
    lx, ly = left, H + 4
    for idx, ln in enumerate(chart.lines):
        color = ln.color or PALETTE[idx % len(PALETTE)]
        text = ln.label + ("" if any(y is not None for y in ln.ys) else " (not read)")
        w = 26 + 7 * len(text)
        if lx + w > W - right:
            lx, ly = left, ly + 22
        dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
        out.append(f'<line x1="{lx}" y1="{ly + 8}" x2="{lx + 18}" y2="{ly + 8}" stroke="{color}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{lx + 22}" y="{ly + 12}" font-size="12" fill="#222">{_esc(text)}</text>')
        lx += w + 10
    out.append("</svg>")
    return "\n".join(out)


def _legend_rows(chart: Chart) -> int:
    rows, lx = 1, 74
    for ln in chart.lines:
        text = ln.label + ("" if any(y is not None for y in ln.ys) else " (not read)")
        w = 26 + 7 * len(text)
        if lx + w > chart.width - 16:
            rows, lx = rows + 1, 74
        lx += w + 10
    return rows
