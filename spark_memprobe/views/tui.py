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
from ..ledger.inputs import MappedFile, PageCacheBytes
from ..ledger.model import Ledger
from ..samples import HostInfo, Sample
from .fmt import MISSING, fmt_bytes, sparkline
from .ledger import mem_available_line, naive_sum

# (column key, header) in the order they are dropped when the screen is narrow (last first)
COLUMNS = [("current", "memory.current"), ("working_set", "docker/k8s"), ("rss", "RSS sum"),
           ("host_used", "Total-Avail"), ("nvml_procs", "NVML procs"), ("cuda_used", "CUDA used"),
           ("stat_kernel", "stat kernel"), ("stat_file_mapped", "stat mapped"), ("host_nofree", "Total-Free"),
           ("nvml_used", "NVML used")]
# the target's own views a naive tool adds up (cgroup, GPU per process, processes)
NAIVE_COLUMNS = [("current", "memory.current"), ("nvml_procs", "NVML procs"), ("rss", "RSS")]
TRENDS = [("memory.current", "current"), ("working set", "working_set"), ("MemAvailable", "MemAvailable"),
          ("MemFree", "MemFree"), ("CUDA free", "cuda_free"), ("NVML used", "nvml_used")]
HELP = ("keys: q quit   p pause/resume   ? help (again to close)" +
        "\nreplay: ←/→ step   PgUp/PgDn ±10%   Home/End first/last   space pause")
# what each column counts, one line each (the wording of the ledger's Column titles, ledger/table.py)
COLUMN_HELP = [
    ("memory.current", "the cgroup's charged memory (v1: usage_in_bytes)"),
    ("docker/k8s", "working set of docker stats, kubelet: usage - inactive_file"),
    ("RSS sum", "sum of VmRSS of the target's processes (ps, top, psutil)"),
    ("Total-Avail", "host used: MemTotal - MemAvailable (free; nvtop 'used' on UMA)"),
    ("Total-Free", "host not free: MemTotal - MemFree (what CUDA free sees on UMA)"),
    ("NVML used", "NVML device used, all GPUs, every process (nvidia-smi)"),
    ("NVML procs", "NVML per-process GPU memory of the target's PIDs (no managed)"),
    ("CUDA used", "cudaMemGetInfo total - free, modelled per platform"),
    ("stat kernel", "memory.stat kernel: slab, stacks, page tables, driver pages"),
    ("stat mapped", "memory.stat file_mapped: file pages the cgroup's tasks map"),
]
SEVERITY_STYLE = {"critical": "bold red", "warning": "bold yellow", "info": "cyan"}
# a finding's number next to each cell that holds its bytes, one colour per finding
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
FINDING_COLOURS = ["bold magenta", "bold cyan", "bold yellow", "bold green", "bold blue", "bold red"]


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
    page_cache: Optional[list[PageCacheBytes]] = None   # the ledger's eBPF page cache input; None: not measured
    mapped_files: Optional[list[MappedFile]] = None      # the target's file mappings; None: not read


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


def finding_marks(L: Ledger) -> dict[str, list[int]]:
    """Row key -> the numbers (1-based, as listed) of the findings whose bytes sit in that row: the
    rows a finding gives an amount for, or all its rows where it gives none (first_touch names
    the page-cache row without an amount, and its bytes in "not charged here")."""
    marks: dict[str, list[int]] = {}
    for i, f in enumerate(L.findings, 1):
        sized = [p for p in f.rows if p.bytes is not None]
        for part in sized or f.rows:
            marks.setdefault(part.name, []).append(i)
    return marks


def _mark(nums: list[int]) -> str:
    return "".join(str(i).translate(SUPERSCRIPT) for i in nums)


def _ledger_table(st: TuiState, width: int, max_rows: int) -> Text:
    """The ledger as fixed-width text lines (a Rich Table costs several ms per frame). Every
    cell of a row a finding names carries the finding's number, in the finding's colour: the
    same bytes, shown by several views."""
    L = st.ledger
    label_w, col_w = 20, 12
    ncols = max(2, min(len(COLUMNS), (width - label_w) // col_w))
    have = {c.key for c in L.columns}
    cols = [c for c in COLUMNS if c[0] in have][:ncols]
    hot = {row.name: f.severity for f in L.findings for row in f.rows}     # the rows a finding points at
    marks = finding_marks(L)
    title = "where the bytes are counted (rows: memory kinds, columns: views, ¹²: findings)"
    t = Text()
    t.append(title[:width] + "\n", style="bold")
    t.append(f"{'kind':<{label_w}}" + "".join(f"{h:>{col_w}}" for _, h in cols) + "\n", style="bold")
    t.append("─" * (label_w + col_w * len(cols)) + "\n")
    rows = [r for r in L.rows if r.parent is None and any(k in r.cells for k, _ in cols)][:max_rows]
    for r in rows:
        style = SEVERITY_STYLE.get(hot.get(r.key), "")
        nums = marks.get(r.key, [])
        mark, colour = _mark(nums), FINDING_COLOURS[(nums[0] - 1) % len(FINDING_COLOURS)] if nums else ""
        t.append(f"{r.label[:label_w]:<{label_w}}", style=style)
        for k, _ in cols:
            if k not in r.cells:
                t.append(" " * col_w)
            elif r.cells[k] is None:
                t.append(f"{MISSING:>{col_w}}", style="dim")
            elif mark and r.cells[k]:
                t.append(f"{fmt_bytes(r.cells[k]):>{col_w - len(mark)}}{mark}", style=colour)
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
    t = Text()
    t.append("findings", style="bold")
    if not L.findings:
        t.append(": none raised")
        return t
    for i, f in enumerate(L.findings[:n], 1):
        amount = fmt_bytes(f.bytes)
        # titles lead with their amount ("1 GiB of managed ..."): show it once
        line = f.title if f.title.startswith(amount) else f"{amount:>9}  {f.title}"
        line = line if len(line) + 4 <= width else line[: width - 5] + "…"
        # the finding's number, as its cells in the table carry it
        t.append("\n" + _mark([i]).rjust(2) + " ", style=FINDING_COLOURS[(i - 1) % len(FINDING_COLOURS)])
        t.append(line, style=SEVERITY_STYLE.get(f.severity, ""))
    if len(L.findings) > n:
        t.append(f"\n   (+{len(L.findings) - n} more; see `memprobe report`)", style="dim")
    return t


def _naive(st: TuiState, width: int) -> Optional[Text]:
    """What a tool adding the target's views would show, against the bytes behind them
    (views/ledger.py naive_sum: each row's bytes once)."""
    got = naive_sum(st.ledger, [k for k, _ in NAIVE_COLUMNS])
    if got is None:
        return None
    cols, naive, twice = got
    names = [n for k, n in NAIVE_COLUMNS if k in cols]
    line = (f"naive sum {' + '.join(names)} = {fmt_bytes(naive)}; physical {fmt_bytes(naive - twice)}; "
            f"counted twice {fmt_bytes(twice)}")
    if len(line) > width:
        line = (f"naive {'+'.join(names)} {_short(naive)}; physical {_short(naive - twice)}; "
                f"counted twice {_short(twice)}")
    return Text(line if len(line) <= width else line[: width - 1] + "…", style="bold")


def _kv(st: TuiState, width: int) -> Optional[Text]:
    """The KV-cache budget, where a GPU was read; on hosts where CUDA free does not follow
    MemFree the loss is what integrated UMA would lose, and says so first."""
    kv = st.ledger.kv
    if not st.ledger.cuda or kv.cuda_free_bytes is None:
        return None
    line1 = f"KV cache at {kv.fraction:g} x CUDA free ({fmt_bytes(kv.cuda_free_bytes)}): {fmt_bytes(kv.kv_from_cuda_free_bytes)}"
    t = Text(line1[:width] + "\n")
    if kv.prediction:
        line2 = (f"  PREDICTION, not this host: integrated UMA would lose {fmt_bytes(kv.lost_bytes)} of KV vs "
                 "MemAvailable")
        t.append(line2[:width], style="italic yellow")
    else:
        t.append(f"  KV lost vs MemAvailable: {fmt_bytes(kv.lost_bytes)} (applies here)"[:width])
    return t


def _trends(st: TuiState, width: int, n: int) -> Text:
    # scaled from zero: a drop of 164 KiB out of 128 MiB stays at full height
    t = Text()
    t.append("trends (bars from 0 to the largest value)", style="bold")
    hist = list(st.history)
    w = max(10, width - 28)
    for name, key in TRENDS[:n]:
        vals = [h.get(key) for h in hist]
        last = vals[-1] if vals else None
        t.append(f"\n{name:<15}{sparkline(vals[-w:], w, from_zero=True)} {fmt_bytes(last):>9}")
    return t


def _files(st: TuiState, width: int, n: int) -> Optional[Text]:
    """Page cache of the target's own files, then of the files it maps that other cgroups own
    (the host's other files are left out). A file is named by its path, by the path the target
    maps it at, or else as the inode on its device."""
    if st.page_cache is None:
        return None
    target = st.sample.cgroup.path if st.sample is not None and st.sample.cgroup is not None else None
    mapped = {(m.dev, m.inode): m.path for m in st.mapped_files or [] if m.inode}
    mine = [f for f in st.page_cache if f.cgroup is not None and f.cgroup == target]
    others = [f for f in st.page_cache if f.cgroup != target and (f.dev, f.inode) in mapped]
    t = Text("page cache by file (eBPF): the target's files, and those it maps that others own"[:width], style="bold")
    shown = [(f, "") for f in sorted(mine, key=lambda f: -f.bytes)[:n]] + \
        [(f, f"  [owned by {f.cgroup or 'an unknown cgroup'}]") for f in sorted(others, key=lambda f: -f.bytes)[:n]]
    for f, owner in shown:
        name = f.path or mapped.get((f.dev, f.inode)) or f"inode {f.inode} on {f.dev}"
        t.append(f"\n{fmt_bytes(f.bytes):>9}  {name}{owner}"[:width])
    if not mine and not others:
        t.append(": none added since the probes started")
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


def _help(width: int) -> Text:
    """The ? overlay: keys, then what each column counts."""
    t = Text(HELP + "\n", style="bold")
    t.append("columns (each a view of the same memory; a row is one kind of memory):", style="bold")
    for name, what in COLUMN_HELP:
        t.append(f"\n{name:<15}{what}"[:width])
    t.append(f"\n{'cells':<15}blank: never counted there; 0 B: none now; {MISSING}: not read"[:width], style="dim")
    t.append(f"\n{'¹²…':<15}finding n's cells: the same bytes, in each view counting them"[:width],
             style="dim")
    return t


def render_screen(st: TuiState, width: int, height: int) -> Group:
    width -= 1          # a line as wide as the terminal wraps there (seen in tmux): keep one column free
    parts: list = [_header(st, width)]
    used = 3 + (1 if st.ended or st.events else 0)
    if st.show_help:
        parts.append(_help(width))
        return Group(*parts)
    if st.ledger is None:
        parts.append(Text("\nwaiting for the first sample..." if not st.ended else ""))
        return Group(*parts)
    big = height >= 40
    nfind = min(3 if height < 30 else 6, len(st.ledger.findings))
    find_lines = 1 + nfind + (1 if len(st.ledger.findings) > nfind else 0)
    # the table takes its rows + 4 lines (title, header, rule, totals); keep room for the
    # naive-sum line, the findings and the key line at the bottom
    L = st.ledger
    shown = [r for r in L.rows if r.parent is None]
    avail = mem_available_line(L.mem_available, L.free_in_2mib_blocks_bytes, L.page_size, _short, width)
    naive = _naive(st, width)
    max_rows = max(3, min(len(shown), height - used - 4 - find_lines - 1 - (avail is not None) - (naive is not None)))
    table = _ledger_table(st, width, max_rows)
    parts.append(table)
    used += table.plain.count("\n") + 1
    for line in (naive, avail and Text(avail, style="dim")):
        if line is not None:
            parts.append(line)
            used += 1
    parts.append(_findings(st, width, nfind))
    used += find_lines
    left = height - used - 1
    kv = _kv(st, width)
    if left >= 2 and kv is not None:
        parts.append(kv)
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
