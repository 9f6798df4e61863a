"""Readers for the page allocator's own files: /proc/zoneinfo, /proc/buddyinfo,
/proc/pagetypeinfo and the host's /proc/pressure/memory.

They give what MemAvailable and a GPU driver's large allocations depend on and no memory
counter shows: each zone's watermarks and lowmem reserves (the kernel subtracts them from
MemAvailable), and free memory by block size (a 2 MiB allocation needs a free 2 MiB block).
Every value here is in pages of the host's page size, as the kernel prints it; the ledger
converts with the page size of the host that was read (HostInfo.page_size).
"""
from __future__ import annotations

import re
from typing import Optional

from ..samples import KernelMemory, Pressure, Zone
from .parse import MalformedFile, parse_pressure
from .parse import parse_single
from .procfs import read_file

# zoneinfo's per-zone lines we keep (mm/vmstat.c zoneinfo_show_print); "high" there is
# high_wmark_pages(), which includes watermark_boost (include/linux/mmzone.h)
_ZONE_FIELDS = {"boost": "boost_pages", "min": "min_pages", "low": "low_pages", "high": "high_pages",
                "managed": "managed_pages", "present": "present_pages"}
_ZONE_HEAD = re.compile(rb"Node ([0-9]{1,6}), zone +([A-Za-z0-9_]{1,32})\Z")
_BUDDY_LINE = re.compile(rb"Node ([0-9]{1,6}), zone +([A-Za-z0-9_]{1,32})((?: +[0-9]{1,19}){1,64}) *\Z")
_TYPE_LINE = re.compile(rb"Node +([0-9]{1,6}), zone +([A-Za-z0-9_]{1,32}), type +([A-Za-z0-9_]{1,32})"
                        rb"((?: +[0-9]{1,19}){1,64}) *\Z")


def parse_zoneinfo(data: bytes, path: str = "zoneinfo") -> list[Zone]:
    """Zones in the kernel's order (node by node, zone index ascending: the order that
    `protection:` indexes). Per-node and per-zone vmstat lines are skipped."""
    zones: list[Zone] = []
    for raw in data.split(b"\n"):
        line = raw.strip()
        m = _ZONE_HEAD.match(raw)
        if m:
            zones.append(Zone(node=int(m.group(1)), name=m.group(2).decode()))
            continue
        if not zones or not line:
            continue
        z = zones[-1]
        parts = line.split()
        if parts[:2] == [b"pages", b"free"] and len(parts) == 3 and parts[2].isdigit():
            z.free_pages = int(parts[2])
        elif len(parts) == 2 and parts[0].decode("latin-1") in _ZONE_FIELDS and parts[1].isdigit():
            setattr(z, _ZONE_FIELDS[parts[0].decode()], int(parts[1]))
        elif parts[0] == b"protection:":
            # "protection: (0, 3019, 6475, 6475, 6475)": lowmem_reserve[] of this zone
            nums = re.findall(rb"[0-9]{1,19}", line)
            z.protection_pages = [int(n) for n in nums]
    if not zones:
        raise MalformedFile(path, "no 'Node N, zone NAME' line")
    return zones


def parse_buddyinfo(data: bytes, path: str = "buddyinfo") -> dict[tuple[int, str], list[int]]:
    """(node, zone) -> free blocks per order (order 0 first): mm/vmstat.c frag_show_print."""
    out: dict[tuple[int, str], list[int]] = {}
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        m = _BUDDY_LINE.match(raw)
        if not m:
            raise MalformedFile(path, f"unexpected line {raw[:60]!r}")
        out[(int(m.group(1)), m.group(2).decode())] = [int(n) for n in m.group(3).split()]
    return out


def parse_pagetypeinfo(data: bytes, path: str = "pagetypeinfo") -> dict[tuple[int, str], dict[str, list[int]]]:
    """(node, zone) -> migrate type -> free blocks per order (mm/vmstat.c pagetypeinfo_showfree_print).
    The block-count table that follows in the file is not kept."""
    out: dict[tuple[int, str], dict[str, list[int]]] = {}
    for raw in data.split(b"\n"):
        m = _TYPE_LINE.match(raw.rstrip())
        if m:
            key = (int(m.group(1)), m.group(2).decode())
            out.setdefault(key, {})[m.group(3).decode()] = [int(n) for n in m.group(4).split()]
    if not out:
        raise MalformedFile(path, "no 'Node N, zone NAME, type TYPE' line")
    return out


def read_zoneinfo(proc: str = "/proc", buddy: bool = True, page_types: bool = False,
                  notes: Optional[list[str]] = None) -> list[Zone]:
    """Zones with watermarks; with buddy=True also free blocks per order (/proc/buddyinfo);
    with page_types=True also per migrate type (/proc/pagetypeinfo: root only, and the kernel
    walks every free list under the zone lock to print it, 0.45-7 ms on the CI VM, so not per tick).
    Raises OSError or MalformedFile for zoneinfo itself; the others add a note when missing."""
    zones = parse_zoneinfo(read_file(f"{proc}/zoneinfo"), f"{proc}/zoneinfo")
    extra = [("buddyinfo", parse_buddyinfo, "free_blocks")] if buddy else []
    if page_types:
        extra.append(("pagetypeinfo", parse_pagetypeinfo, "free_blocks_by_type"))
    for name, parse, attr in extra:
        try:
            found = parse(read_file(f"{proc}/{name}"), f"{proc}/{name}")
        except (OSError, MalformedFile) as e:
            if notes is not None:
                notes.append(f"{proc}/{name}: {getattr(e, 'reason', None) or e.strerror}")
            continue
        for z in zones:
            # both files list populated zones only (mm/vmstat.c walk_zones_in_node)
            setattr(z, attr, found.get((z.node, z.name), type(next(iter(found.values())))()))
    return zones


def read_pressure_memory(proc: str = "/proc") -> Optional[Pressure]:
    """/proc/pressure/memory (the host's PSI; same format as a cgroup's memory.pressure).
    None where the kernel has no PSI (CONFIG_PSI off, or psi=0 on the command line)."""
    try:
        values = parse_pressure(read_file(f"{proc}/pressure/memory"))
    except OSError:
        return None
    return Pressure(**values) if values else None


def read_vm_sysctl(name: str, proc: str = "/proc") -> Optional[int]:
    """/proc/sys/vm/<name> as an integer; None when unreadable or not one number."""
    try:
        v = parse_single(read_file(f"{proc}/sys/vm/{name}"))
    except OSError:
        return None
    return v if isinstance(v, int) else None


def read_kernel_memory(proc: str = "/proc", notes: Optional[list[str]] = None,
                       page_types: bool = False) -> Optional[KernelMemory]:
    """Zones (zoneinfo + buddyinfo, + pagetypeinfo with page_types), the watermark sysctls and
    the host's PSI; None when /proc/zoneinfo cannot be read (the reason goes into notes)."""
    try:
        zones = read_zoneinfo(proc, page_types=page_types, notes=notes)
    except (OSError, MalformedFile) as e:
        if notes is not None:
            notes.append(f"{proc}/zoneinfo: {getattr(e, 'reason', None) or e.strerror}")
        return None
    return KernelMemory(zones=zones, min_free_kbytes=read_vm_sysctl("min_free_kbytes", proc),
                        watermark_scale_factor=read_vm_sysctl("watermark_scale_factor", proc),
                        pressure=read_pressure_memory(proc))
