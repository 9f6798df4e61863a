"""The report's two formats, checked by real readers:
  - the HTML opens in headless Debian chromium without console errors, and its screenshot is a
    page of text and charts (many colours, the chart palette present), not a blank one;
  - the Markdown parses as CommonMark (markdown-it-py), every heading and table we wrote parses as
    one, no raw HTML, no stray emphasis, and paths with underscores survive the round trip.
Each check is first shown to fail on a page that is wrong (controls), so it cannot pass vacuously."""
from __future__ import annotations

import html as htmlmod
import os
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from report_recordings import fixture_recording
from spark_memprobe.analysis.compare import compare
from spark_memprobe.analysis.report import analyse, open_recording
from spark_memprobe.views.report_compare import build_comparison
from spark_memprobe.views.report_doc import ChartBlock, Details, Table, build_report
from spark_memprobe.views.report_html import render_html
from spark_memprobe.views.report_md import render_markdown
from spark_memprobe.views.svg import PALETTE

CHROMIUM = shutil.which("chromium")
SCENARIOS = ("h100-cgroup2-scenario", "h100-inference-scenario", "gb10-synthetic")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    datas = {}
    for sc in SCENARIOS:
        rec = open_recording(fixture_recording(sc, str(d / f"{sc}.db")))
        datas[sc] = analyse(rec)
        rec.close()
    out = {sc: build_report(x) for sc, x in datas.items()}
    out["compare"] = build_comparison(compare(datas["h100-inference-scenario"], datas["h100-cgroup2-scenario"]))
    return out


# -- PNG, decoded with the standard library -------------------------------------------------------
def read_png(path: str) -> tuple[int, int, list[tuple]]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        ftype, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    pixels = [tuple(r[x:x + 3]) for r in rows for x in range(0, stride, bpp)]
    return w, h, pixels


def chromium(page: str, out_dir: str, *extra: str) -> subprocess.CompletedProcess:
    profile = os.path.join(out_dir, "profile")
    shutil.rmtree(profile, ignore_errors=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *extra, "file://" + page]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    # chromium logs page console messages as "INFO:CONSOLE(line)] ..." and load failures as net errors
    return [l for l in stderr.splitlines() if ":CONSOLE" in l or "ERR_FILE_NOT_FOUND" in l
            or "Failed to load resource" in l]


def screenshot_stats(png: str) -> tuple[int, float, dict]:
    """(distinct colours, share of non-white pixels, counts of strongly green / red pixels). The
    report's CSS has no saturated green or red: those pixels come from the chart lines (palette)."""
    w, h, px = read_png(png)
    nonwhite = sum(1 for p in px if sum(p) < 3 * 245) / len(px)
    hues = {"green": sum(1 for r, g, b in px if g > r + 40 and g > b + 40),
            "red": sum(1 for r, g, b in px if r > g + 60 and r > b + 60)}
    return len(set(px)), nonwhite, hues


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed "
                                                             "(scripts/setup.sh --test installs it)")


@needs_chromium
def test_checks_fail_on_wrong_pages(tmp_path):
    """Controls: a page that logs an error is caught, a blank page is seen as blank."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>console.error('boom')</script><p>x</p></body></html>")
    r = chromium(str(bad), str(tmp_path), f"--screenshot={tmp_path / 'bad.png'}", "--window-size=800,600")
    assert console_errors(r.stderr), r.stderr[-2000:]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    chromium(str(blank), str(tmp_path), f"--screenshot={tmp_path / 'blank.png'}", "--window-size=800,600")
    n, nonwhite, hues = screenshot_stats(str(tmp_path / "blank.png"))
    assert n <= 2 and nonwhite == 0 and hues == {"green": 0, "red": 0}


@needs_chromium
@pytest.mark.parametrize("name", ["h100-inference-scenario", "compare"])
def test_html_opens_in_chromium(docs, tmp_path, name):
    page = tmp_path / f"{name}.html"
    page.write_text(render_html(docs[name]))
    png = tmp_path / f"{name}.png"
    # the whole page in one picture (it is about 9000 CSS pixels tall), at half scale to keep the
    # PNG small enough to decode in Python
    r = chromium(str(page), str(tmp_path), f"--screenshot={png}", "--window-size=1280,12000",
                 "--force-device-scale-factor=0.5", "--hide-scrollbars")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_errors(r.stderr) == []
    n, nonwhite, hues = screenshot_stats(str(png))
    assert n > 200 and nonwhite > 0.05, (n, nonwhite)
    if name != "compare":
        # the charts were drawn: the palette's green and red lines (PALETTE[1], PALETTE[2])
        assert PALETTE[1] == "#d62728" and PALETTE[2] == "#2ca02c"
        assert hues["green"] > 200 and hues["red"] > 200, hues
    # the DOM chromium built holds every section and chart
    dom = chromium(str(page), str(tmp_path), "--dump-dom").stdout
    assert dom.count("<h2") == render_html(docs[name]).count("<h2") >= 5
    if name != "compare":
        assert dom.count("<svg") >= 3 and "<polyline" in dom


# -- Markdown ------------------------------------------------------------------------------------
def md_parsers():
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark"), MarkdownIt("commonmark").enable("table")


def expected_tables(doc) -> list[int]:
    """Column counts of the tables the Markdown renderer writes, in order."""
    out = []
    for b in doc.blocks:
        if isinstance(b, Table):
            out.append(len(b.head))
        elif isinstance(b, ChartBlock):
            out.append(len(b.summary.head))
        elif isinstance(b, Details) and b.in_markdown:
            out += [len(x.head) for x in b.blocks if isinstance(x, Table)]
    return out


def text_of(html: str) -> str:
    return htmlmod.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.parametrize("name", list(SCENARIOS) + ["compare"])
def test_markdown_is_commonmark(docs, name):
    cm, gfm = md_parsers()
    doc = docs[name]
    md = render_markdown(doc)
    for parser in (cm, gfm):
        tokens = parser.parse(md)
        assert not [t for t in tokens if t.type == "html_block"]
        inl = [c for t in tokens if t.type == "inline" for c in (t.children or [])]
        assert not [c for c in inl if c.type == "html_inline"], "raw HTML in the Markdown"
        # every heading written parses as a heading, and nothing else does
        heads = [t for t in tokens if t.type == "heading_open"]
        assert len(heads) == len(re.findall(r"^#{1,6} ", md, re.M))
        # emphasis only where the renderer put it: whole muted paragraphs and captions
        for t in tokens:
            if t.type != "inline":
                continue
            ch = t.children or []
            for k, c in enumerate(ch):
                if c.type == "em_open":
                    assert k == 0 and ch[-1].type == "em_close", t.content[:200]
    tokens = gfm.parse(md)
    tables = [t for t in tokens if t.type == "table_open"]
    assert len(tables) == len(expected_tables(doc))
    # column counts: header cells of each table
    cols, cur = [], None
    for t in tokens:
        if t.type == "thead_open":
            cur = 0
        elif t.type == "th_open" and cur is not None:
            cur += 1
        elif t.type == "thead_close":
            cols.append(cur)
            cur = None
    assert cols == expected_tables(doc)
    # what the reader sees is what the report says: underscores and paths survive
    seen = text_of(gfm.render(md))
    assert doc.title in seen
    if name == "h100-cgroup2-scenario":
        assert "__GFP_ACCOUNT" in seen and "file_mapped > file" in seen and "memprobe_fixture" in seen
    if name == "gb10-synthetic":
        assert "/system.slice/docker-gb10synthetic.scope" in seen
    if name == "h100-inference-scenario":
        assert "/tmp/model/model.safetensors" in seen and "`kv_cache_thief`" not in seen


def test_markdown_control_catches_stray_markup():
    """The checks above do fail on Markdown with accidental markup."""
    cm, _ = md_parsers()
    tokens = cm.parse("A *not meant* emphasis and <b>html</b>\n")
    ch = tokens[1].children
    assert ch[1].type == "em_open" and any(c.type == "html_inline" for c in ch)
