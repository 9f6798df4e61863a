"""Readers for /proc: meminfo, vmstat, <pid>/status, <pid>/smaps_rollup, <pid>/cgroup.

Every reader takes the procfs root as a parameter (`proc="/proc"`), so tests run on
captured trees. Readers raise OSError (the file is gone or unreadable) or
MalformedFile (the text is unusable); lines they had to skip go into `notes`.
"""
from __future__ import annotations

import os
from typing import Optional

from ..samples import Meminfo, ProcessSample, Vmstat
from .parse import KvParse, MalformedFile, parse_kv

# /proc/<pid>/status lines we keep, and where they go (fs/proc/task_mmu.c task_mem()).
STATUS_FIELDS = {
    "VmRSS": "rss_bytes",
    "RssAnon": "rss_anon_bytes",
    "RssFile": "rss_file_bytes",
    "RssShmem": "rss_shmem_bytes",
    "VmSwap": "swap_bytes",
    "VmHWM": "hwm_bytes",
    "VmSize": "vm_size_bytes",
    "VmPTE": "pte_bytes",
}


def read_file(path: str) -> bytes:
    """Read a kernel file whole, refusing symlinks (kernel files are never links; one
    found here was planted, and we run as root)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return pread_all(fd)
    finally:
        os.close(fd)


def pread_all(fd: int, size: int = 65536) -> bytes:
    """Read from offset 0 to the end with pread: procfs and cgroupfs regenerate the
    text on a read at offset 0, so an open descriptor can be read again and again."""
    chunks, off = [], 0
    while True:
        b = os.pread(fd, size, off)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        off += len(b)


MALFORMED_KV = "no line in the expected 'key value' form"


def note_kv_problems(path: str, bad_lines: int, truncated: bool, notes: Optional[list[str]]) -> None:
    if notes is not None:
        if bad_lines:
            notes.append(f"{path}: skipped {bad_lines} malformed line(s)")
        if truncated:
            notes.append(f"{path}: text was cut (last line had no newline); dropped it")


def checked_kv(path: str, data: bytes, notes: Optional[list[str]], wanted=None) -> KvParse:
    kv = parse_kv(data, wanted)
    if wanted is None and not kv.values:
        raise MalformedFile(path, MALFORMED_KV)
    note_kv_problems(path, kv.bad_lines, kv.truncated, notes)
    return kv


def meminfo_from_kv(kv: KvParse) -> Meminfo:
    """Split meminfo into kB fields (now bytes) and unitless counts (HugePages_*)."""
    return Meminfo(bytes={k: v for k, v in kv.values.items() if kv.kb[k]},
                   counts={k: v for k, v in kv.values.items() if not kv.kb[k]})


def read_meminfo(proc: str = "/proc", notes: Optional[list[str]] = None) -> Meminfo:
    path = f"{proc}/meminfo"
    return meminfo_from_kv(checked_kv(path, read_file(path), notes))


def read_vmstat(proc: str = "/proc", notes: Optional[list[str]] = None) -> Vmstat:
    path = f"{proc}/vmstat"
    return Vmstat(counters=checked_kv(path, read_file(path), notes).values)


def status_fields(values: dict[str, int]) -> dict[str, Optional[int]]:
    """ProcessSample keyword arguments from parsed status values (kernel threads have
    no Vm* lines: those stay None)."""
    return {attr: values.get(key) for key, attr in STATUS_FIELDS.items()}


def parse_status_identity(data: bytes) -> tuple[Optional[str], Optional[list[int]]]:
    """Name and NSpid of a status file (NSpid needs Linux 4.1+)."""
    comm = ns = None
    for line in data.split(b"\n"):
        if line.startswith(b"Name:"):
            comm = line[5:].strip().decode("utf-8", "replace")
        elif line.startswith(b"NSpid:"):
            try:
                ns = [int(x) for x in line[6:].split()]
            except ValueError:
                ns = None
    return comm, ns


def read_pid_status(pid: int, proc: str = "/proc", notes: Optional[list[str]] = None) -> ProcessSample:
    path = f"{proc}/{pid}/status"
    data = read_file(path)
    kv = checked_kv(path, data, notes, wanted=STATUS_FIELDS)
    comm, ns = parse_status_identity(data)
    return ProcessSample(pid=pid, comm=comm, ns_pids=ns, **status_fields(kv.values))


def read_smaps_rollup(pid: int, proc: str = "/proc", notes: Optional[list[str]] = None) -> dict[str, int]:
    """Every field of /proc/<pid>/smaps_rollup in bytes (Linux 4.14+). The first line is
    the '[rollup]' pseudo-mapping header and is not a field."""
    path = f"{proc}/{pid}/smaps_rollup"
    data = read_file(path)
    nl = data.find(b"\n")
    if nl < 0 or not data[:nl].rstrip().endswith(b"[rollup]"):
        raise MalformedFile(path, "first line is not the [rollup] header")
    return checked_kv(path, data[nl + 1:], notes).values


def read_pid_cgroup(pid: int, proc: str = "/proc") -> bytes:
    return read_file(f"{proc}/{pid}/cgroup")


def read_maps(pid: int, proc: str = "/proc", smaps: bool = False) -> list[dict]:
    """File mappings of one process, merged per file: {"pid", "path", "size_bytes" (total length
    of its mappings), "dev" ("major:minor" in hex, as maps prints it), "inode", "rss_bytes"}.
    With smaps=True, /proc/<pid>/smaps adds the resident bytes of those mappings (it walks the
    page tables: milliseconds for a large process); else rss_bytes is None. Deleted files,
    anonymous and special mappings ([heap], [stack]) and devices other than /dev/shm are
    skipped; paths are as the kernel prints them (never opened)."""
    data = read_file(f"{proc}/{pid}/{'smaps' if smaps else 'maps'}").decode("utf-8", "replace")
    out: dict[tuple, dict] = {}
    cur = None
    for line in data.splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
            cur = None
            # fs/proc/task_mmu.c show_map_vma: start-end perms offset dev inode [path]
            if len(head) < 6 or not head[5].startswith("/") or head[5].endswith(" (deleted)"):
                continue
            if head[5].startswith("/dev/") and not head[5].startswith("/dev/shm/"):
                continue            # device mappings (/dev/nvidia-uvm, /dev/zero) are not files
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            key = (head[3], int(head[4]), head[5])
            cur = out.setdefault(key, {"pid": pid, "path": head[5], "size_bytes": 0, "dev": head[3],
                                       "inode": int(head[4]), "rss_bytes": 0 if smaps else None})
            cur["size_bytes"] += hi - lo
        elif smaps and cur is not None and line.startswith("Rss:"):
            cur["rss_bytes"] += int(line.split()[1]) * 1024
    return list(out.values())
