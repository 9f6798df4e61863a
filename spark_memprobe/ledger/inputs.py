"""Optional inputs beyond the Sample: eBPF results, the target's file mappings, other cgroups.

Every one is optional; None means "not measured" and the rules that need it say so. The
eBPF probe types live in spark_memprobe/probe_report.py (sample-type level, not sources/), and
`from_probe_report` turns one ProbeReport into what the ledger uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..samples import CgroupSample, KernelMemory, Vmstat

# CUDA allocation kinds the ledger reads (spark_memprobe/probe_report.py CUDA_KINDS)
CUDA_DEVICE_KINDS = ("device", "vmm", "pool")
CUDA_PINNED = "host-pinned"
CUDA_MANAGED = "managed"


@dataclass
class PageCacheBytes:
    """Page-cache bytes of one file charged to one cgroup (eBPF page-cache ownership)."""
    cgroup: Optional[str]          # cgroup path; None when the owner is unknown
    bytes: int
    dev: Optional[str] = None      # "major:minor"
    inode: Optional[int] = None
    path: Optional[str] = None


@dataclass
class MappedFile:
    """One file mapping of one of the target's processes (from /proc/<pid>/maps)."""
    pid: int
    path: str
    size_bytes: int                # length of the mapping (not what is resident)
    dev: Optional[str] = None      # "major:minor" as maps prints it (hex)
    inode: Optional[int] = None


@dataclass
class LedgerInputs:
    """Everything optional the ledger can use; defaults mean "not measured"."""
    page_cache: Optional[list[PageCacheBytes]] = None      # eBPF: page cache per (cgroup, file)
    cuda_bytes: Optional[dict[str, int]] = None            # eBPF: target's live CUDA bytes per kind
    mapped_files: Optional[list[MappedFile]] = None        # the target's file mappings
    others: Optional[list[CgroupSample]] = None            # other cgroups read at the same instant
    kernel: Optional[KernelMemory] = None                   # zones, watermarks, host PSI (about 1 Hz)
    vmstat_before: Optional[Vmstat] = None                  # /proc/vmstat about a second earlier...
    vmstat_before_s: Optional[float] = None                 # ...this many seconds before the sample
    notes: list[str] = field(default_factory=list)


def _dev(major: int, minor: int) -> str:
    # /proc/<pid>/maps prints the device as hex major:minor (fs/proc/task_mmu.c show_map_vma)
    return f"{major:02x}:{minor:02x}"


def from_probe_report(report, target_pids: list[int], adder_cgroup: Optional[str] = None) -> LedgerInputs:
    """LedgerInputs from a probe_report.ProbeReport: page cache per file with its owner's path,
    and the target's outstanding CUDA bytes per kind. Probes that did not run stay None.

    adder_cgroup: on hybrid hosts the probes key page cache by cgroup v2 id, while the memory
    controller (v1) charges a page to the memory cgroup of the task that added it
    (mm/filemap.c __filemap_add_folio charges the current task's memcg). Give the target's v1
    memory cgroup here to attribute files whose last adding process is one of target_pids to
    it; only the last adder is recorded, so a file filled by several cgroups is approximate."""
    out = LedgerInputs()
    pids = set(target_pids)
    if report.page_cache is not None:
        out.page_cache = []
        by_adder = 0
        for f in report.page_cache:
            owner = f.cgroup_path or report.cgroup_paths.get(f.cgroup_id)
            if f.cgroup_id == 0:
                owner = None      # removals of pages cached before the probes started
            if f.net_pages <= 0:
                continue
            if adder_cgroup is not None and f.last_pid in pids:
                owner, by_adder = adder_cgroup, by_adder + 1
            out.page_cache.append(PageCacheBytes(cgroup=owner, bytes=f.net_bytes, dev=_dev(f.dev_major, f.dev_minor),
                                                 inode=f.inode, path=f.path))
        if by_adder:
            out.notes.append(f"eBPF page cache: {by_adder} files attributed to {adder_cgroup} by the process that "
                             "added their pages (cgroup v2 ids do not name v1 memory cgroups)")
        if report.page_cache_untracked_pages:
            out.notes.append(f"eBPF page cache: {report.page_cache_untracked_pages} pages added while the owner "
                             f"table was full are not attributed to files")
    if report.cuda is not None:
        out.cuda_bytes = {}
        for c in report.cuda:
            if c.pid in pids:
                out.cuda_bytes[c.kind] = out.cuda_bytes.get(c.kind, 0) + max(0, c.outstanding_bytes)
        if report.cuda_lost_events:
            out.notes.append(f"eBPF CUDA: {report.cuda_lost_events} events lost; outstanding bytes may be short")
    return out
