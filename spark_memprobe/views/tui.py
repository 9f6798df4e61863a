"""The live / replay screen: a pure function of a TuiState (rendered with Rich).

One screen answers: how much memory the target really holds, how each tool would report it,
which pages are counted twice or by nobody, and what CUDA thinks is free. It fits 80x24 and
adds panels (all columns, KV budget, trends, page-cache files, the CUDA allocation stream)
as the terminal grows.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from rich.console import Group
from rich.text import Text

from ..probe_report import ProbeReport
from ..ledger.model import Ledger
from ..samples import HostInfo, Sample
from .fmt import MISSING, fmt_bytes, sparkline
from .ledger import mem_available_line

# (column key, header) in the order they are dropped when the screen is narrow (last first)
COLUMNS = [("current", "memory.current"), ("working_set", "docker/k8s"), ("rss", "RSS sum"),
           ("host_used", "Total-Avail"), ("nvml_procs", "NVML procs"), ("cuda_used", "CUDA used"),
           ("stat_kernel", "stat kernel"), ("stat_file_mapped", "stat mapped"), ("host_nofree", "Total-Free"),
           ("nvml_used", "NVML used")]
TRENDS = [("memory.current", "current"), ("working set", "working_set"), ("MemAvailable", "MemAvailable"),
          ("MemFree", "MemFree"), ("CUDA free", "cuda_free"), ("NVML used", "nvml_used")]
HELP = ("keys: q quit   p pause/resume   ? help" +
        "\nreplay: ←/→ step   PgUp/PgDn ±10%   Home/End first/last   space pause")
SEVERITY_STYLE = {"critical": "bold red", "warning": "bold yellow", "info": "cyan"}


@dataclass
class TuiState:
    host: HostInfo
    target: str
    mode: str = "live"                       # "live" or "replay"
    paused: bool = False
    position: Optional[tuple[int, int]] = None   # replay: (index, count)
    rate_hz: Optional[float] = None
    probes: Optional[list[dict]] = None      # ProbeStatus dicts; None: eBPF off
    recording: Optional[str] = None          # "run.db 1.2 MiB"
    sample: Optional[Sample] = None
    ledger: Optional[Ledger] = None
    report: Optional[ProbeReport] = None
    history: deque = field(default_factory=lambda: deque(maxlen=240))
    events: list[str] = field(default_factory=list)
    show_help: bool = False
    ended: Optional[str] = None


def trend_point(sample: Sample, ledger: Optional[Ledger]) -> dict:
    """The values the trend lines follow, from one sample and its ledger."""
    cols = {c.key: c.total for c in ledger.columns} if ledger else {}
    mi = sample.meminfo.bytes if sample.meminfo else {}
    free = ledger.cuda[0].free_bytes if ledger and ledger.cuda else None
    return {"current": cols.get("current"), "working_set": cols.get("working_set"),
            "MemAvailable": mi.get("MemAvailable"), "MemFree": mi.get("MemFree"), "cuda_free": free,
            "nvml_used": cols.get("nvml_used")}


def _header(st: TuiState, width: int) -> Text:
    p = st.host.platform.kind if st.host.platform else MISSING
    mode = (f"REPLAY {st.position[0] + 1}/{st.position[1]}" if st.mode == "replay" and st.position else "LIVE")
    if st.paused:
        mode += " PAUSED"
    rate = f" {st.rate_hz:.1f} Hz" if st.rate_hz else ""
    t = Text()
    t.append("memprobe ", style="bold")
    t.append(f"{mode}{rate}", style="bold reverse" if st.paused else "bold green")
    t.append(f"  host {st.host.hostname}  platform {p}  ")
    if st.sample is not None:
        t.append(time.strftime("%H:%M:%S", time.localtime(st.sample.wall_ns / 1e9)))
    t.append(f"\ntarget {st.target}"[: max(20, width)])
    chosen = [p["name"] for p in (st.probes or []) if p.get("chosen")]
    t.append("\nprobes: " + (", ".join(sorted(set(chosen))) if chosen else
                             "eBPF off" if st.probes is None else "none attached"), style="dim")
    if st.recording:
        t.append(f"   recording {st.recording}", style="dim")
    if st.ended:
        t.append(f"\n{st.ended}", style="bold red")
    elif st.events:
        t.append(f"\n{st.events[-1]}", style="yellow")
    return t


def _ledger_table(st: TuiState, width: int, max_rows: int) -> Text:
    """The ledger as fixed-width text lines (a Rich Table costs several ms per frame)."""
    L = st.ledger
    label_w, col_w = 20, 12
    ncols = max(2, min(len(COLUMNS), (width - label_w) // col_w))
    have = {c.key for c in L.columns}
    cols = [c for c in COLUMNS if c[0] in have][:ncols]
    hot = {row.name: f.severity for f in L.findings for row in f.rows}     # the rows a finding points at
    t = Text("where the bytes are counted (rows: kinds of memory, columns: views)\n", style="bold")
    t.append(f"{'kind':<{label_w}}" + "".join(f"{h:>{col_w}}" for _, h in cols) + "\n", style="bold")
    t.append("─" * (label_w + col_w * len(cols)) + "\n")
    rows = [r for r in L.rows if r.parent is None and any(k in r.cells for k, _ in cols)][:max_rows]
    for r in rows:
        style = SEVERITY_STYLE.get(hot.get(r.key), "")
        t.append(f"{r.label[:label_w]:<{label_w}}", style=style)
        for k, _ in cols:
            if k not in r.cells:
                t.append(" " * col_w)
            elif r.cells[k] is None:
                t.append(f"{MISSING:>{col_w}}", style="dim")
            else:
                t.append(f"{fmt_bytes(r.cells[k]):>{col_w}}", style=style)
        t.append("\n")
    totals = {c.key: c.total for c in L.columns}
    t.append(f"{'the tool shows':<{label_w}}" + "".join(f"{fmt_bytes(totals.get(k)):>{col_w}}" for k, _ in cols),
             style="bold")
    return t


def _short(n: Optional[int]) -> str:
    """'23.1G', '127M', '512B': the screen's one-line MemAvailable needs every column."""
    s = fmt_bytes(n)
    return s[:-4] + s[-3] if s.endswith("iB") else s.replace(" ", "")


def _findings(st: TuiState, width: int, n: int) -> Text:
    L = st.ledger
    t = Text("findings", style="bold")
    if not L.findings:
        t.append(": none raised")
        return t
    for i, f in enumerate(L.findings[:n], 1):
        amount = fmt_bytes(f.bytes)
        line = f"{i}. {amount:>9}  {f.title}"
        t.append("\n" + (line if len(line) <= width else line[: width - 1] + "…"),
                 style=SEVERITY_STYLE.get(f.severity, ""))
    if len(L.findings) > n:
        t.append(f"\n   (+{len(L.findings) - n} more; see `memprobe report`)", style="dim")
    return t


def _kv(st: TuiState, width: int) -> Text:
    kv = st.ledger.kv
    what = "PREDICTION if this host were UMA" if kv.prediction else "applies here"
    line1 = f"KV cache at {kv.fraction:g} x CUDA free ({fmt_bytes(kv.cuda_free_bytes)}): {fmt_bytes(kv.kv_from_cuda_free_bytes)}"
    line2 = f"  lost vs MemAvailable: {fmt_bytes(kv.lost_bytes)} ({what})"
    return Text(f"{line1[:width]}\n{line2[:width]}")


def _trends(st: TuiState, width: int, n: int) -> Text:
    t = Text("trends", style="bold")
    hist = list(st.history)
    w = max(10, width - 28)
    for name, key in TRENDS[:n]:
        vals = [h.get(key) for h in hist]
        last = vals[-1] if vals else None
        t.append(f"\n{name:<15}{sparkline(vals[-w:], w)} {fmt_bytes(last):>9}")
    return t


def _files(st: TuiState, width: int, n: int) -> Optional[Text]:
    r = st.report
    if r is None or r.page_cache is None:
        return None
    files = sorted((f for f in r.page_cache if f.net_pages > 0), key=lambda f: -f.net_pages)[:n]
    t = Text("page cache by file (eBPF)", style="bold")
    for f in files:
        owner = f.cgroup_path or r.cgroup_paths.get(f.cgroup_id) or str(f.cgroup_id)
        t.append(f"\n{fmt_bytes(f.net_bytes):>9}  {(f.path or f'inode {f.inode}')[: width - 30]}  [{owner}]"[:width])
    if not files:
        t.append(": nothing added since the probes started")
    return t


def _cuda(st: TuiState, width: int, n: int) -> Optional[Text]:
    r = st.report
    if r is None or r.cuda is None:
        return None
    t = Text("CUDA allocations (uprobes on libcuda)", style="bold")
    by_kind: dict[str, int] = {}
    for c in r.cuda:
        by_kind[c.kind] = by_kind.get(c.kind, 0) + c.outstanding_bytes
    t.append("\noutstanding: " + ("  ".join(f"{k} {fmt_bytes(v)}" for k, v in sorted(by_kind.items())) or "none"))
    for c in (r.cuda_calls or [])[-n:]:
        t.append(f"\n  pid {c.pid} {c.func} {fmt_bytes(c.size_bytes)}{'' if c.result == 0 else f' failed ({c.result})'}"[:width], style="dim")
    return t


def render_screen(st: TuiState, width: int, height: int) -> Group:
    width -= 1          # a line as wide as the terminal wraps there (seen in tmux): keep one column free
    parts: list = [_header(st, width)]
    used = 3 + (1 if st.ended or st.events else 0)
    if st.show_help:
        parts.append(Text(HELP, style="bold"))
        used += HELP.count("\n") + 1
    if st.ledger is None:
        parts.append(Text("\nwaiting for the first sample..." if not st.ended else ""))
        return Group(*parts)
    big = height >= 40
    nfind = min(3 if height < 30 else 6, len(st.ledger.findings))
    find_lines = 1 + nfind + (1 if len(st.ledger.findings) > nfind else 0)
    # the table takes its rows + 4 lines (title, header, rule, totals); keep room for the
    # findings and the key line at the bottom
    L = st.ledger
    shown = [r for r in L.rows if r.parent is None]
    avail = mem_available_line(L.mem_available, L.free_in_2mib_blocks_bytes, L.page_size, _short, width)
    max_rows = max(3, min(len(shown), height - used - 4 - find_lines - 1 - (avail is not None)))
    table = _ledger_table(st, width, max_rows)
    parts.append(table)
    used += table.plain.count("\n") + 1
    if avail is not None:
        parts.append(Text(avail, style="dim"))
        used += 1
    parts.append(_findings(st, width, nfind))
    used += find_lines
    left = height - used - 1
    if left >= 2:
        parts.append(_kv(st, width))
        left -= 2
    if left >= 3:
        n = min(len(TRENDS), left - 1)
        parts.append(_trends(st, width, n))
        left -= n + 1
    for block in (_files(st, width, 5 if big else 2), _cuda(st, width, 5 if big else 2)):
        if block is not None:
            lines = block.plain.count("\n") + 1
            if lines <= left:
                parts.append(block)
                left -= lines
    parts.append(Text("q quit  p pause  ? help", style="dim"))
    return Group(*parts)
