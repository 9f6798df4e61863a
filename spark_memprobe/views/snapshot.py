"""Render one Sample, and the page allocator's state read with it, as text tables (Rich; plain
text when not on a terminal)."""
from __future__ import annotations

import time
from typing import Optional

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..ledger.available import MemAvailableParts, free_in_blocks_bytes
from ..samples import HostInfo, KernelMemory, Sample, Zone
from .fmt import MISSING, fmt_bytes, fmt_int
from .ledger import mem_available_line

HOST_KEYS = ["MemTotal", "MemFree", "MemAvailable", "Cached", "Buffers", "Shmem", "Mapped",
             "AnonPages", "Slab", "KernelStack", "PageTables", "SwapTotal", "SwapFree"]
CG_STAT_KEYS = ["anon", "file", "kernel", "shmem", "file_mapped", "file_dirty", "active_file",
                "inactive_file", "active_anon", "inactive_anon", "slab", "pagetables", "sock",
                "percpu", "vmalloc", "anon_thp", "file_thp", "unevictable"]


def _kv_table(title: str, pairs: list[tuple[str, str]], columns: int = 3) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE, show_header=False, pad_edge=False)
    for _ in range(columns):
        t.add_column(style="bold")
        t.add_column(justify="right")
    for i in range(0, len(pairs), columns):
        row = []
        for k, v in pairs[i:i + columns]:
            row += [k, v]
        row += [""] * (2 * columns - len(row))
        t.add_row(*row)
    return t


def render_sample(s: Sample, header: dict, host: Optional[HostInfo] = None, kernel: Optional[KernelMemory] = None,
                  avail: Optional[MemAvailableParts] = None) -> Group:
    """header: host, kernel, sampler, target description (strings); host: static facts; kernel:
    the page allocator's state read with the sample; avail: its MemAvailable taken apart."""
    parts = []
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.wall_ns / 1e9))
    parts.append(Text(f"memprobe snapshot  {when}  host {header.get('host', MISSING)}  "
                      f"kernel {header.get('kernel', MISSING)}  sampler {header.get('sampler', MISSING)}"
                      f"  read in {s.read_ns / 1e3:.0f} us" if s.read_ns else ""))
    if header.get("target"):
        parts.append(Text(f"target: {header['target']}"))
    if host is not None:
        parts.append(render_platform(host))
    if s.meminfo is not None:
        parts.append(_kv_table("host: /proc/meminfo",
                               [(k, fmt_bytes(s.meminfo.get(k))) for k in HOST_KEYS if k in s.meminfo.bytes]))
    if kernel is not None:
        parts.append(render_kernel(kernel, avail, host.page_size if host is not None else None))
    if s.cgroup is not None:
        cg = s.cgroup
        pairs = [("memory.current" if cg.version == 2 else "usage_in_bytes", fmt_bytes(cg.current_bytes)),
                 ("peak", fmt_bytes(cg.peak_bytes)), ("max", fmt_bytes(cg.max_bytes)),
                 ("high", fmt_bytes(cg.high_bytes)), ("swap", fmt_bytes(cg.swap_current_bytes))]
        if cg.stat:
            pairs += [(k, fmt_bytes(cg.stat[k])) for k in CG_STAT_KEYS if k in cg.stat]
        if cg.events:
            pairs += [(f"events.{k}", fmt_int(v)) for k, v in cg.events.items()]
        parts.append(_kv_table(f"cgroup v{cg.version} {cg.path}", pairs))
    if s.processes:
        t = Table(title=f"processes ({len(s.processes)})", title_justify="left", box=box.SIMPLE)
        for c in ("pid", "ns pid", "comm", "rss", "anon", "file", "shmem", "swap"):
            t.add_column(c, justify="left" if c == "comm" else "right")
        for p in s.processes:
            t.add_row(str(p.pid), MISSING if p.container_pid is None else str(p.container_pid), p.comm or MISSING, fmt_bytes(p.rss_bytes),
                      fmt_bytes(p.rss_anon_bytes), fmt_bytes(p.rss_file_bytes),
                      fmt_bytes(p.rss_shmem_bytes), fmt_bytes(p.swap_bytes))
        parts.append(t)
    parts.append(render_gpus(s))
    if s.notes:
        parts.append(Text("notes:\n" + "\n".join(f"  - {n}" for n in s.notes)))
    return Group(*parts)


def _zone_row(z: Zone, page: Optional[int]) -> list[str]:
    def b(pages: Optional[int]) -> str:
        return fmt_bytes(None if pages is None or not page else pages * page)

    types = z.free_blocks_by_type or {}
    # free pages of a migrate type: its blocks per order (order 0 first), each 2^order pages
    by_type = [b(sum(n << o for o, n in enumerate(types[t]))) if t in types else MISSING
               for t in ("Movable", "Unmovable", "Reclaimable")]
    return [f"{z.node}/{z.name}", b(z.managed_pages), b(z.free_pages), fmt_bytes(free_in_blocks_bytes([z], page)),
            b(z.min_pages), b(z.low_pages), b(z.high_pages)] + by_type


def render_kernel(k: KernelMemory, avail: Optional[MemAvailableParts], page: Optional[int]) -> Group:
    """MemAvailable term by term, then per zone: watermarks and free memory by block size and
    migrate type (migrate types only where /proc/pagetypeinfo was read: root)."""
    parts: list = [Text("host: page allocator (/proc/zoneinfo, buddyinfo, pagetypeinfo)", style="italic")]
    line = mem_available_line(avail, free_in_blocks_bytes(k.zones, page), page)
    if line is not None:
        parts.append(Text(line))
    t = Table(box=box.SIMPLE, pad_edge=False)
    for c in ("node/zone", "managed", "free", "in 2 MiB+ blocks", "min", "low", "high", "free movable",
              "free unmovable", "free reclaimable"):
        t.add_column(c, justify="left" if c == "node/zone" else "right")
    shown = [z for z in k.zones if z.managed_pages != 0]       # empty zones (Movable, Device here) left out
    for z in shown:
        t.add_row(*_zone_row(z, page))
    parts.append(t)
    p = k.pressure
    psi = MISSING if p is None else (f"some {_n(p.some_avg10)} % (10 s), {_secs(p.some_total_us)} in all; "
                                     f"full {_n(p.full_avg10)} % (10 s), {_secs(p.full_total_us)} in all")
    parts.append(Text(f"vm.min_free_kbytes {_n(k.min_free_kbytes)}, watermark_scale_factor "
                      f"{_n(k.watermark_scale_factor)}; memory pressure (PSI): {psi}"))
    return Group(*parts)


def _n(v) -> str:
    return MISSING if v is None else str(v)


def _secs(us: Optional[int]) -> str:
    return MISSING if us is None else f"{us / 1e6:.1f} s"


def render_gpus(s: Sample, extra: Optional[list[str]] = None):
    if s.gpus is None:
        return Text("gpus: NVML not read" + ("" if not extra else "; " + "; ".join(extra)))
    if not s.gpus:
        return Text("gpus: none found by NVML")
    t = Table(title="gpus (NVML)", title_justify="left", box=box.SIMPLE)
    for c in ("gpu", "total", "used", "free", "reserved", "processes"):
        t.add_column(c, justify="right")
    for g in s.gpus:
        procs = ", ".join(f"{p.pid}:{fmt_bytes(p.used_bytes)}" for p in (g.processes or [])) or MISSING
        if g.memory_error:
            t.add_row(str(g.index), g.memory_error, g.memory_error, g.memory_error, g.memory_error, procs)
        else:
            t.add_row(str(g.index), fmt_bytes(g.total_bytes), fmt_bytes(g.used_bytes), fmt_bytes(g.free_bytes),
                      fmt_bytes(g.reserved_bytes), procs)
    return t


def render_platform(host: HostInfo) -> Text:
    p = host.platform
    lines = [f"platform: {p.kind if p else MISSING}"
             + (f"  driver {host.driver_version}" if host.driver_version else "")
             + (f"  CUDA {host.cuda_driver_version // 1000}.{host.cuda_driver_version % 1000 // 10}"
                if host.cuda_driver_version else "")]
    for e in (p.evidence if p else []):
        lines.append(f"  evidence: {e}")
    for g in host.gpus:
        lines.append(f"  GPU {g.index}: {g.name or MISSING} {g.uuid or ''}  addressing {g.addressing_mode or MISSING}"
                     f"  C2C {MISSING if g.c2c_enabled is None else ('on' if g.c2c_enabled else 'off')}"
                     f"  NUMA node {MISSING if g.numa_node is None else g.numa_node}"
                     f"  integrated {MISSING if g.integrated is None else int(g.integrated)}")
    return Text("\n".join(lines))
