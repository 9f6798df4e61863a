"""Render a Ledger (spark_memprobe/ledger) as Rich tables. Render only: no reading, no arithmetic
beyond picking what to show and the naive sum of views the screen sets against it (naive_sum).

Cells: a blank cell means the view never counts that kind of memory, "0 B" that it counts it
and there is none, and a dash that the view (or the estimate behind the cell) was not read.
"""
from __future__ import annotations

from typing import Callable, Optional

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..ledger.available import MemAvailableParts
from ..ledger.build import AVAIL_TOLERANCE_PAGES
from ..ledger.model import Ledger, Row
from .fmt import MISSING, fmt_bytes

TARGET_COLUMNS = [("current", "memory\ncurrent"), ("working_set", "docker\nwset"), ("stat_anon", "stat\nanon"),
                  ("stat_file", "stat\nfile"), ("stat_shmem", "stat\nshmem"), ("stat_kernel", "stat\nkernel"),
                  ("stat_file_mapped", "stat\nmapped"), ("rss", "RSS\nsum")]
HOST_COLUMNS = [("host_used", "MemTotal\n-Avail"), ("host_nofree", "MemTotal\n-Free"), ("nvml_used", "NVML\nused"),
                ("nvml_procs", "NVML\nprocs"), ("cuda_used", "CUDA\nused")]
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _cell(row: Row, key: str) -> str:
    if key not in row.cells:
        return ""
    return fmt_bytes(row.cells[key])


def _views_table(ledger: Ledger, title: str, columns: list[tuple[str, str]]) -> Optional[Table]:
    keys = [k for k, _ in columns]
    rows = [r for r in ledger.rows if any(k in r.cells for k in keys)]
    if not rows:
        return None
    # box.SIMPLE_HEAD separates columns with one space: 1 + 21 + 8 x 9 = 94 columns at most
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    t.add_column("kind of memory", no_wrap=True, min_width=20, max_width=21)
    for _, header in columns:
        t.add_column(header, justify="right", no_wrap=True, min_width=8)
    for r in rows:
        label = ("  " + r.label) if r.parent else r.label
        t.add_row(label, *[_cell(r, k) for k in keys], style="dim" if r.parent else None)
    cols = {c.key: c for c in ledger.columns}
    t.add_section()
    t.add_row("view shows", *[fmt_bytes(cols[k].total) for k in keys], style="bold")
    if any(cols[k].excess_bytes for k in keys):
        t.add_row("rows beyond view", *[fmt_bytes(cols[k].excess_bytes) if cols[k].excess_bytes else "" for k in keys])
    return t


def mem_available_line(a: Optional[MemAvailableParts], huge: Optional[int], page_size: Optional[int],
                       fmt: Callable[[Optional[int]], str] = fmt_bytes, width: Optional[int] = None) -> Optional[str]:
    """MemAvailable term by term (the kernel's si_mem_available, docs/ledger.md "Kernel causes")
    and the free memory in 2 MiB blocks (huge), as one line; None when neither was read. With a
    width, a shorter form (the cache terms net of what the kernel keeps) where the long one does
    not fit, cut with an ellipsis where that does not fit either. Each value is formatted once:
    the screen builds this line at every frame."""
    blocks = "" if huge is None else fmt(huge)
    if a is None:
        return None if huge is None else f"free in 2 MiB blocks {blocks}"
    total = fmt(a.computed_bytes)
    if a.difference_bytes is not None and page_size and abs(a.difference_bytes) > AVAIL_TOLERANCE_PAGES * page_size:
        total += f" (kernel {fmt(a.kernel_bytes)})"
    free = f" = free {fmt(a.free_bytes)} - reserve {fmt(a.reserve_bytes)}"
    line = (f"MemAvailable {total}{free} + cache {fmt(a.page_cache_bytes)} (- kept {fmt(a.page_cache_kept_bytes)})"
            f" + reclaimable {fmt(a.reclaimable_kernel_bytes)} (- kept {fmt(a.reclaimable_kernel_kept_bytes)})"
            + (blocks and f"; free in 2 MiB blocks {blocks}"))
    if width is None or len(line) <= width:
        return line
    net = a.page_cache_bytes - a.page_cache_kept_bytes + a.reclaimable_kernel_bytes - a.reclaimable_kernel_kept_bytes
    line = f"MemAvail {total}{free} + reclaimable {fmt(net)}" + (blocks and f"; 2M blocks {blocks}")
    return line if len(line) <= width else line[:width - 1] + "…"


def naive_sum(ledger: Ledger, columns: list[str]) -> Optional[tuple[list[str], int, int]]:
    """What adding the views' totals gives and how much of it is counted twice: (the columns
    read, naive sum, counted twice); None when fewer than two of them were read. A row is one
    kind of physical memory and each view's cell in it is a part of the same pages (the ledger
    clips RSS to memory.stat, ledger/table.py), so the row holds max(cells) bytes and every byte
    beyond that is counted twice:
        counted twice = sum over top-level rows of (sum(cells) - max(cells))
        physical      = naive sum - counted twice"""
    cols = [k for k in columns if ledger.total(k) is not None]
    if len(cols) < 2:
        return None
    twice = 0
    for r in ledger.rows:
        if r.parent is None:
            cells = [r.cells.get(k) or 0 for k in cols]
            twice += sum(cells) - max(cells)
    return cols, sum(ledger.total(k) for k in cols), twice


def _findings(ledger: Ledger):
    if not ledger.findings:
        return Text("findings: none")
    t = Table(title="findings (ranked)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
              pad_edge=False)
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("severity", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("finding (rule) / evidence", ratio=1)
    for i, f in enumerate(ledger.findings, 1):
        amount = fmt_bytes(f.bytes) if f.bytes_low is None or f.bytes_low == f.bytes else \
            f"{fmt_bytes(f.bytes_low)}..{fmt_bytes(f.bytes)}"
        t.add_row(str(i), Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")), amount,
                  Text(f"{f.title} ({f.rule}, confidence {f.confidence})", style="bold"))
        for e in f.evidence:
            t.add_row("", "", "", Text("- " + e, style="dim"))
        t.add_row("", "", "", Text("source: " + "; ".join(f.sources), style="dim italic"))
    return t


def _kv(ledger: Ledger):
    kv = ledger.kv
    head = (f"KV-cache budget at fraction {kv.fraction}" + (f", GPU {kv.gpu_index}" if kv.gpu_index is not None else "")
            + (": PREDICTION (if this host were integrated UMA)" if kv.prediction else ""))
    lines = [head, f"  {kv.note}",
             f"  CUDA free (modelled) {fmt_bytes(kv.cuda_free_bytes)}   MemFree {fmt_bytes(kv.mem_free_bytes)}   "
             f"MemAvailable {fmt_bytes(kv.mem_available_bytes)}",
             f"  KV from CUDA free {fmt_bytes(kv.kv_from_cuda_free_bytes)}   lost vs MemAvailable "
             f"{fmt_bytes(kv.lost_bytes)}"]
    for p in kv.parts:
        lines.append(f"    {p.label:<58} {fmt_bytes(p.bytes):>9}  KV {fmt_bytes(p.kv_bytes):>9}")
    return Text("\n".join(lines))


def render_ledger(ledger: Ledger) -> Group:
    parts: list = [Text(f"memprobe ledger   target: {ledger.target}   platform: {ledger.platform}")]
    for e in ledger.platform_evidence:
        parts.append(Text(f"  {e}", style="dim"))
    for title, cols in (("target views: bytes each view counts, by kind of memory", TARGET_COLUMNS),
                        ("host and GPU views", HOST_COLUMNS)):
        t = _views_table(ledger, title, cols)
        if t is not None:
            parts.append(t)
    parts.append(Text("blank: the view never counts that kind; " + MISSING + ": not read; (est.): modelled",
                      style="dim"))
    avail = mem_available_line(ledger.mem_available, ledger.free_in_2mib_blocks_bytes, ledger.page_size)
    if avail is not None:
        parts.append(Text(avail))
    parts.append(_findings(ledger))
    parts.append(_kv(ledger))
    silent = [r for r in ledger.rules if r.status == "silent"]
    if silent:
        parts.append(Text("rules silent here:\n" + "\n".join(f"  {r.rule}: {r.reason}" for r in silent)))
    if ledger.notes:
        parts.append(Text("notes:\n" + "\n".join(f"  - {n}" for n in ledger.notes)))
    return Group(*parts)
