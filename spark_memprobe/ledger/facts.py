"""The numbers the ledger works from, taken out of one Sample (None where not read).

This is the only module that knows where a number sits inside a Sample; the table, the KV
budget and the rules read Facts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..samples import HostInfo, Sample, Vmstat

# memory.stat keys that are parts of `kernel`: "kernel: Amount of total kernel memory,
# including (kernel_stack, pagetables, percpu, vmalloc, slab) in addition to other kernel
# memory use cases" (Documentation/admin-guide/cgroup-v2.rst). sec_pagetables are charged
# with __GFP_ACCOUNT too (KVM secondary page tables, mm/memcontrol.c memory_stats[]).
KERNEL_PARTS = ("slab", "kernel_stack", "pagetables", "sec_pagetables", "percpu", "vmalloc")


def add(*vals: Optional[int]) -> Optional[int]:
    """Sum, or None when any part is unknown."""
    return None if any(v is None for v in vals) else sum(vals)  # type: ignore[arg-type]


def sub(a: Optional[int], b: Optional[int]) -> Optional[int]:
    return None if a is None or b is None else a - b


def floor0(v: Optional[int]) -> Optional[int]:
    return None if v is None else max(0, v)


def under(path: Optional[str], root: str) -> bool:
    """path is root or a descendant of it (cgroup paths)."""
    if path is None:
        return False
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


@dataclass
class Facts:
    page_size: Optional[int]               # bytes per page of the host that was read; None: not recorded
    platform: str
    target: str
    # target memory cgroup (None everywhere when there is no cgroup)
    cg_path: Optional[str] = None
    cg_version: Optional[int] = None
    current: Optional[int] = None
    limit: Optional[int] = None            # memory.max / limit_in_bytes; None when unlimited or unread
    limit_read: bool = False
    stat: dict[str, int] = field(default_factory=dict)
    procs: Optional[list[int]] = None      # cgroup.procs of the target (detail reads only)
    # the target's processes (host PIDs)
    pids: list[int] = field(default_factory=list)
    rss_anon: Optional[int] = None
    rss_file: Optional[int] = None
    rss_shmem: Optional[int] = None
    mapped_max: Optional[int] = None       # max over processes of RssFile + RssShmem
    processes_unread: list[int] = field(default_factory=list)
    # host
    meminfo: dict[str, int] = field(default_factory=dict)
    vmstat: Optional[Vmstat] = None
    # GPUs
    gpus_read: bool = False
    nvml_used: Optional[int] = None        # sum over GPUs of NVML device used
    nvml_free: dict[int, Optional[int]] = field(default_factory=dict)
    nvml_total: dict[int, Optional[int]] = field(default_factory=dict)
    nvml_reserved: dict[int, Optional[int]] = field(default_factory=dict)
    gpu_indexes: list[int] = field(default_factory=list)
    gpu_target: Optional[int] = None       # NVML per-process bytes of the target's processes
    gpu_target_pids: list[int] = field(default_factory=list)
    gpu_all_procs: Optional[int] = None    # NVML per-process bytes of every process
    notes: list[str] = field(default_factory=list)

    def s(self, key: str) -> Optional[int]:
        """A memory.stat value (v2 names), None when not read."""
        return self.stat.get(key)

    def m(self, key: str) -> Optional[int]:
        """A /proc/meminfo value in bytes, None when not read."""
        return self.meminfo.get(key)

    @property
    def has_cgroup(self) -> bool:
        return self.cg_path is not None and bool(self.stat)


def _target_name(s: Sample) -> str:
    if s.cgroup is not None:
        return f"memory cgroup v{s.cgroup.version} {s.cgroup.path}"
    if s.processes:
        return "pids " + ",".join(str(p.pid) for p in sorted(s.processes, key=lambda p: p.pid))
    return "host"


def _processes(f: Facts, s: Sample) -> None:
    procs = sorted(s.processes, key=lambda p: p.pid)
    f.pids = [p.pid for p in procs]
    read = [p for p in procs if p.rss_anon_bytes is not None and p.rss_file_bytes is not None
            and p.rss_shmem_bytes is not None]
    f.processes_unread = [p.pid for p in procs if p not in read]
    if f.processes_unread:
        f.notes.append("processes " + ", ".join(map(str, f.processes_unread)) +
                       " could not be read; the RSS sums leave them out")
    if not procs and f.procs != []:
        # no process read and cgroup.procs not read (or no cgroup): the sums are unknown, not 0
        f.notes.append("no process of the target was read: the RSS column is empty")
        return
    if read or not procs:
        # no processes in a cgroup whose cgroup.procs was read empty is a real zero
        f.rss_anon = sum(p.rss_anon_bytes for p in read)
        f.rss_file = sum(p.rss_file_bytes for p in read)
        f.rss_shmem = sum(p.rss_shmem_bytes for p in read)
        f.mapped_max = max((p.rss_file_bytes + p.rss_shmem_bytes for p in read), default=0)


def _gpus(f: Facts, s: Sample) -> None:
    if s.gpus is None:
        f.notes.append("NVML not read: GPU columns are empty")
        return
    if not s.gpus:
        f.notes.append("NVML found no GPU")
        return
    f.gpus_read = True
    gpus = sorted(s.gpus, key=lambda g: g.index)
    f.gpu_indexes = [g.index for g in gpus]
    for g in gpus:
        f.nvml_free[g.index] = g.free_bytes
        f.nvml_total[g.index] = g.total_bytes
        f.nvml_reserved[g.index] = g.reserved_bytes
    f.nvml_used = add(*[g.used_bytes for g in gpus])
    target_pids = set(f.pids) | set(f.procs or [])
    known = [g for g in gpus if g.processes is not None]
    if len(known) < len(gpus):
        f.notes.append("NVML per-process memory not read on GPU " +
                       ", ".join(str(g.index) for g in gpus if g.processes is None))
    if not known:
        return
    mine, every, unknown = 0, 0, 0
    pids: set[int] = set()
    for g in known:
        for p in sorted(g.processes, key=lambda p: (p.pid, p.kind)):
            is_target = p.pid in target_pids or (f.cg_path is not None and under(p.owner_cgroup, f.cg_path))
            if p.used_bytes is None:
                # NVML_VALUE_NOT_AVAILABLE (nvml.h nvmlProcessInfo_t.usedGpuMemory)
                unknown += 1
                continue
            every += p.used_bytes
            if is_target:
                mine += p.used_bytes
                pids.add(p.pid)
    if unknown:
        f.notes.append(f"{unknown} GPU process entries have no memory figure (NVML_VALUE_NOT_AVAILABLE)")
    f.gpu_target, f.gpu_all_procs, f.gpu_target_pids = mine, every, sorted(pids)


def facts_from_sample(host: HostInfo, s: Sample) -> Facts:
    platform = host.platform.kind if host.platform is not None else "unknown"
    # the page size of the host that was read (4 KiB, 16 KiB or 64 KiB on arm64): never assumed
    f = Facts(page_size=host.page_size or None, platform=platform, target=_target_name(s))
    cg = s.cgroup
    if cg is not None:
        f.cg_path, f.cg_version = cg.path, cg.version
        f.current = cg.current_bytes
        f.limit_read = cg.max_bytes is not None
        f.limit = cg.max_bytes if isinstance(cg.max_bytes, int) else None
        f.stat = dict(cg.stat or {})
        f.procs = sorted(cg.procs) if cg.procs is not None else None
        if cg.stat is None:
            f.notes.append(f"memory.stat of {cg.path} not read: cgroup rows are empty")
    _processes(f, s)
    if s.meminfo is not None:
        f.meminfo = dict(s.meminfo.bytes)
    else:
        f.notes.append("/proc/meminfo not read: host columns are empty")
    f.vmstat = s.vmstat
    _gpus(f, s)
    return f


def kernel_itemised(f: Facts) -> Optional[int]:
    """Sum of the memory.stat parts of `kernel` that were read (None when none were: cgroup v1)."""
    parts = [f.s(k) for k in KERNEL_PARTS if f.s(k) is not None]
    return sum(parts) if parts else None
