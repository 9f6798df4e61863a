"""Event and aggregate types of the eBPF probes (sources/bpf): what one probe run saw.

Stdlib dataclasses only, at the level of samples.py, so recordings and the ledger can hold
and replay them without importing sources/. A value that was not measured is None, never 0.

Keys: every kernel-side aggregate is keyed by the cgroup v2 id (bpf_get_current_cgroup_id(),
the inode of the cgroup's directory in the cgroup2 hierarchy) and the host PID (tgid) of the
task that caused it. The memcg stream is keyed by the id the memcg tracepoints carry, which is
cgroup_id() of the memory controller's own cgroup: the v2 directory inode on cgroup v2, the v1
memory-hierarchy directory inode on v1/hybrid hosts (include/trace/events/memcg.h).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from .samples import known


def host_page_size() -> int:
    """Bytes per page of this host (4 KiB on x86_64; 4, 16 or 64 KiB on arm64): the default for
    page counts made here. A report read back from a recording carries the page size of the
    host that counted the pages."""
    return os.sysconf("SC_PAGE_SIZE")


# CUDA allocation kinds, as the probes classify the driver entry points
CUDA_KINDS = ("device", "managed", "host-pinned", "vmm", "pool", "host-registered")

# Which memory.stat key (v2 names; v1 name second) a memcg stat item updates.
# mm/memcontrol.c memory_stats[] (v2) and mm/memcontrol-v1.c memcg1_stats[] (v1).
# Items missing here still appear in the stream under their kernel enum name.
MEMCG_ITEM_STAT_KEYS: dict[str, tuple[Optional[str], Optional[str]]] = {
    "NR_ANON_MAPPED": ("anon", "rss"),
    "NR_FILE_PAGES": ("file", "cache"),
    "MEMCG_KMEM": ("kernel", None),
    "NR_KERNEL_STACK_KB": ("kernel_stack", None),
    "NR_PAGETABLE": ("pagetables", None),
    "NR_SECONDARY_PAGETABLE": ("sec_pagetables", None),
    "MEMCG_PERCPU_B": ("percpu", None),
    "MEMCG_SOCK": ("sock", None),
    "MEMCG_VMALLOC": ("vmalloc", None),
    "NR_SHMEM": ("shmem", "shmem"),
    "MEMCG_ZSWAP_B": ("zswap", None),
    "MEMCG_ZSWAPPED": ("zswapped", None),
    "NR_FILE_MAPPED": ("file_mapped", "mapped_file"),
    "NR_FILE_DIRTY": ("file_dirty", "dirty"),
    "NR_WRITEBACK": ("file_writeback", "writeback"),
    "NR_SWAPCACHE": ("swapcached", "swapcached"),
    "NR_ANON_THPS": ("anon_thp", "rss_huge"),
    "NR_FILE_THPS": ("file_thp", None),
    "NR_SHMEM_THPS": ("shmem_thp", None),
    "NR_INACTIVE_ANON": ("inactive_anon", "inactive_anon"),
    "NR_ACTIVE_ANON": ("active_anon", "active_anon"),
    "NR_INACTIVE_FILE": ("inactive_file", "inactive_file"),
    "NR_ACTIVE_FILE": ("active_file", "active_file"),
    "NR_UNEVICTABLE": ("unevictable", "unevictable"),
    "NR_SLAB_RECLAIMABLE_B": ("slab_reclaimable", None),
    "NR_SLAB_UNRECLAIMABLE_B": ("slab_unreclaimable", None),
    "NR_HUGETLB": ("hugetlb", None),
}


def memcg_item_unit(name: Optional[str]) -> str:
    """Unit of a memcg tracepoint value. The kernel keeps *_B items in bytes and
    NR_KERNEL_STACK_KB in KiB, but the tracepoint is given the value after
    memcg_state_val_in_pages() (mm/memcontrol.c), which turns them into pages with a floor of
    one page per update: those deltas are only approximate. Every other item is in pages."""
    if name is None:
        return "unknown"
    if name.endswith("_B") or name.endswith("_KB"):
        return "approx-pages"
    return "pages"


@dataclass
class ProbeStatus:
    """One probe the tool considered: attached (chosen) or not, and why."""
    name: str                  # "faults", "fault_addresses", "pagecache", "memcg", "cuda", "uvm"
    mechanism: str             # "perf:software/page-faults", "tracepoint:memcg:mod_memcg_state", ...
    chosen: bool
    reason: str = ""           # why chosen or why refused (one line)
    target: Optional[str] = None   # e.g. the library a uprobe is on


@dataclass
class FaultCount:
    """Page faults (perf software event page-faults) per cgroup v2 id and process."""
    cgroup_id: int
    pid: int
    faults: int
    comm: Optional[str] = None
    cgroup_path: Optional[str] = None          # v2 path of cgroup_id, when found
    memory_cgroup: Optional[str] = None        # the pid's memory cgroup (v1 on hybrid hosts), when read


@dataclass
class FaultRegion:
    """User page faults (exceptions:page_fault_user) of one process in one mapping."""
    pid: int
    mapping: str               # pathname from /proc/<pid>/maps, "[anon]", or "?" when gone
    faults: int
    regions: int               # how many 2 MiB address regions these faults fell in


@dataclass
class PageCacheFile:
    """Page-cache pages of one file, owned by the cgroup v2 id that was current when they
    were added. Removals are subtracted from the owner, whoever removed them (reclaim by
    kswapd, truncation by another task); cgroup_id 0 collects removals of pages whose owner
    is unknown (cached before the probes started)."""
    cgroup_id: int
    dev_major: int
    dev_minor: int
    inode: int
    added_pages: int
    removed_pages: int
    removed_by_other_pages: int = 0            # removed while another cgroup was current
    last_pid: Optional[int] = None             # last process that added pages
    path: Optional[str] = None                 # when resolved
    path_source: Optional[str] = None          # "fd", "maps", "scan:<dir>"
    cgroup_path: Optional[str] = None
    page_size: int = field(default_factory=host_page_size)

    @property
    def net_pages(self) -> int:
        return self.added_pages - self.removed_pages

    @property
    def net_bytes(self) -> int:
        return self.net_pages * self.page_size


@dataclass
class MemcgDelta:
    """Sum of one memcg stat item's updates over the run, aggregated in the kernel."""
    memcg_id: int
    item: int
    delta: int                                  # in `unit`: increase + decrease
    item_name: Optional[str] = None             # kernel enum name, from BTF
    unit: str = "pages"                         # "pages", "approx-pages", "events", "unknown"
    source: str = "state"                       # "state", "lruvec", "event"
    stat_key: Optional[str] = None              # memory.stat key it feeds on this host
    cgroup_path: Optional[str] = None           # memory cgroup directory of memcg_id
    increase: Optional[int] = None              # sum of positive updates (None: polled)
    decrease: Optional[int] = None              # sum of negative updates, <= 0


@dataclass
class CudaOutstanding:
    """Live CUDA driver allocations of one process and kind at the end of the run:
    bytes allocated minus bytes freed through the hooked entry points (successful calls only)."""
    pid: int
    kind: str
    outstanding_bytes: int
    allocs: int
    frees: int
    failed_calls: int = 0
    cgroup_id: Optional[int] = None
    comm: Optional[str] = None


@dataclass
class CudaCall:
    """One hooked CUDA driver call (allocation stream)."""
    ts_ns: int                                  # CLOCK_MONOTONIC
    pid: int
    tid: int
    cgroup_id: int
    func: str
    kind: str
    size_bytes: Optional[int]                   # None for frees of unknown allocations
    ptr: int
    result: int                                 # CUresult, 0 = CUDA_SUCCESS
    stack: Optional[list[str]] = None
    comm: Optional[str] = None


@dataclass
class ProbeReport:
    """What one `memprobe probes --run` measured, with the inventory of probes."""
    started_mono_ns: int
    ended_mono_ns: int
    probes: list[ProbeStatus] = field(default_factory=list)
    target: Optional[str] = None
    page_size: int = field(default_factory=host_page_size)
    faults: Optional[list[FaultCount]] = None          # None: not measured
    fault_source: Optional[str] = None                 # "/proc/<pid>/stat" or "perf:software/page-faults"
    fault_regions: Optional[list[FaultRegion]] = None
    page_cache: Optional[list[PageCacheFile]] = None
    page_cache_untracked_pages: Optional[int] = None   # added while the owner table was full
    memcg: Optional[list[MemcgDelta]] = None
    memcg_source: Optional[str] = None                 # "tracepoint" or "memory.stat poll"
    cuda: Optional[list[CudaOutstanding]] = None
    cuda_calls: Optional[list[CudaCall]] = None        # calls since the previous report (capped)
    cuda_lost_events: Optional[int] = None
    cgroup_paths: dict[int, str] = field(default_factory=dict)   # v2 id -> path
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.ended_mono_ns - self.started_mono_ns) / 1e9


_LISTS = {"probes": ProbeStatus, "faults": FaultCount, "fault_regions": FaultRegion,
          "page_cache": PageCacheFile, "memcg": MemcgDelta, "cuda": CudaOutstanding,
          "cuda_calls": CudaCall}


def report_to_dict(r: ProbeReport) -> dict:
    d = asdict(r)
    d["cgroup_paths"] = {str(k): v for k, v in r.cgroup_paths.items()}
    return d


def report_from_dict(d: dict) -> ProbeReport:
    d = known(ProbeReport, d)
    for key, cls in _LISTS.items():
        if d.get(key) is not None:
            names = {f.name for f in fields(cls)}
            d[key] = [cls(**{k: v for k, v in x.items() if k in names}) for x in d[key]]
    d["cgroup_paths"] = {int(k): v for k, v in (d.get("cgroup_paths") or {}).items()}
    return ProbeReport(**d)
