"""Sample types: what one reading of the machine holds.

Stdlib dataclasses only, no behaviour beyond lookups. A value that could not be read
is None, never 0: an accounting tool that writes 0 has invented a number. Everything
in bytes is named *_bytes (or lives in a dict documented as bytes); kB from the kernel
becomes bytes inside sources/ and nowhere else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional, Union

# A limit file (memory.max, memory.high, v1 memory.limit_in_bytes): bytes, or the
# string "max" when there is no limit, or None when it could not be read.
Limit = Optional[Union[int, str]]
UNLIMITED = "max"


@dataclass
class Meminfo:
    """/proc/meminfo, every field. `bytes` holds the fields the kernel prints in kB,
    converted to bytes; `counts` holds the unitless ones (HugePages_Total/Free/Rsvd/Surp)."""
    bytes: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)

    def get(self, key: str) -> Optional[int]:
        return self.bytes.get(key)


@dataclass
class Vmstat:
    """/proc/vmstat. Kernel names: nr_* are page counts, the rest are event counters."""
    counters: dict[str, int]


@dataclass
class Pressure:
    """memory.pressure (PSI): averages in percent, totals in microseconds. `full_*` are
    None where the file has no full line."""
    some_avg10: Optional[float] = None
    some_avg60: Optional[float] = None
    some_avg300: Optional[float] = None
    some_total_us: Optional[int] = None
    full_avg10: Optional[float] = None
    full_avg60: Optional[float] = None
    full_avg300: Optional[float] = None
    full_total_us: Optional[int] = None


@dataclass
class Zone:
    """One zone of the page allocator, in pages of the host's page size. From /proc/zoneinfo:
    free pages, watermarks (high includes boost, as the kernel prints it), managed pages and
    `protection` (lowmem_reserve[] against allocations that may use higher zones); from
    /proc/buddyinfo free blocks per order (order 0 first); from /proc/pagetypeinfo (root only,
    slow) the same per migrate type. None: not read."""
    node: int
    name: str
    free_pages: Optional[int] = None
    boost_pages: Optional[int] = None
    min_pages: Optional[int] = None
    low_pages: Optional[int] = None
    high_pages: Optional[int] = None
    managed_pages: Optional[int] = None
    present_pages: Optional[int] = None
    protection_pages: Optional[list[int]] = None
    free_blocks: Optional[list[int]] = None
    free_blocks_by_type: Optional[dict[str, list[int]]] = None


@dataclass
class KernelMemory:
    """The page allocator's state for the whole host, read about once a second: zones with
    their watermarks and free blocks, the sysctls that set the watermarks, and the host's
    memory pressure (/proc/pressure/memory). None: not read."""
    zones: list[Zone] = field(default_factory=list)
    min_free_kbytes: Optional[int] = None          # /proc/sys/vm/min_free_kbytes (the kernel's unit)
    watermark_scale_factor: Optional[int] = None   # /proc/sys/vm/watermark_scale_factor (1/10000)
    pressure: Optional[Pressure] = None


def known(cls, d: dict) -> dict:
    """The keys of d that cls has as fields: a dict written by a newer version with more fields
    still builds (recordings are additive: docs/record.md)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def kernel_from_dict(d: dict) -> KernelMemory:
    d = known(KernelMemory, d)
    d["zones"] = [Zone(**known(Zone, z)) for z in d.get("zones") or []]
    if d.get("pressure") is not None:
        d["pressure"] = Pressure(**known(Pressure, d["pressure"]))
    return KernelMemory(**d)


@dataclass
class CgroupSample:
    """One memory cgroup. v2 names throughout; on cgroup v1 only the fields whose meaning
    matches are filled (mapping in docs/snapshot.md and sources/cgroupfs.py), the rest
    stay None. `stat` and `peak_bytes` are hierarchical (this cgroup and its descendants)
    on both versions."""
    path: str                         # inside its hierarchy, "/" for the root
    version: int                      # 2 or 1
    current_bytes: Optional[int] = None
    peak_bytes: Optional[int] = None
    max_bytes: Limit = None
    high_bytes: Limit = None
    swap_current_bytes: Optional[int] = None
    stat: Optional[dict[str, int]] = None        # memory.stat, v2 key names, bytes or events
    events: Optional[dict[str, int]] = None      # memory.events
    numa_stat: Optional[dict[str, dict[int, int]]] = None   # key -> NUMA node -> bytes
    pressure: Optional[Pressure] = None
    procs: Optional[list[int]] = None            # cgroup.procs of this cgroup only
    v1_stat: Optional[dict[str, int]] = None     # v1 only: memory.stat as the kernel printed it

    def stat_get(self, key: str) -> Optional[int]:
        return None if self.stat is None else self.stat.get(key)


@dataclass
class ProcessSample:
    """One process, from /proc/<pid>/status (and smaps_rollup when asked for)."""
    pid: int                                   # host PID
    ns_pids: Optional[list[int]] = None        # NSpid: host PID first, innermost namespace last
    comm: Optional[str] = None
    rss_bytes: Optional[int] = None            # VmRSS
    rss_anon_bytes: Optional[int] = None       # RssAnon
    rss_file_bytes: Optional[int] = None       # RssFile
    rss_shmem_bytes: Optional[int] = None      # RssShmem
    swap_bytes: Optional[int] = None           # VmSwap
    hwm_bytes: Optional[int] = None            # VmHWM (peak RSS)
    vm_size_bytes: Optional[int] = None        # VmSize
    pte_bytes: Optional[int] = None            # VmPTE
    smaps_rollup: Optional[dict[str, int]] = None   # every field of smaps_rollup, bytes

    @property
    def container_pid(self) -> Optional[int]:
        """PID inside the innermost PID namespace (equals pid outside containers)."""
        return self.ns_pids[-1] if self.ns_pids else None


@dataclass
class GpuProcess:
    pid: int                                   # host PID, as NVML reports it
    kind: str                                  # "compute", "graphics" or "mps"
    used_bytes: Optional[int]                  # None: NVML_VALUE_NOT_AVAILABLE
    owner_cgroup: Optional[str] = None         # memory cgroup of the PID (/proc/<pid>/cgroup)
    ns_pids: Optional[list[int]] = None        # NSpid: host PID first, innermost namespace last


@dataclass
class GpuSample:
    """One GPU's memory as NVML reports it. None where NVML said NOT_SUPPORTED (GB10)."""
    index: int
    total_bytes: Optional[int] = None
    free_bytes: Optional[int] = None
    used_bytes: Optional[int] = None
    reserved_bytes: Optional[int] = None
    memory_error: Optional[str] = None         # e.g. "NOT_SUPPORTED"
    processes: Optional[list[GpuProcess]] = None
    processes_error: Optional[str] = None


@dataclass
class GpuInfo:
    """What does not change while a GPU is watched (read once, kept in headers)."""
    index: int
    name: Optional[str] = None
    uuid: Optional[str] = None
    pci_bus_id: Optional[str] = None
    memory_total_bytes: Optional[int] = None
    addressing_mode: Optional[str] = None      # "NONE", "HMM", "ATS" (NVML R580+); None before
    c2c_enabled: Optional[bool] = None         # NVLink-C2C to the CPU (GH200/GB200)
    numa_node: Optional[int] = None            # the GPU's own NUMA node (coherent hosts)
    integrated: Optional[bool] = None          # CUDA integrated attribute (GB10), when obtainable
    notes: list[str] = field(default_factory=list)


@dataclass
class PlatformProfile:
    """How CPU and GPU memory relate on this host, decided from readings (never names).
    kind: "discrete" (own HBM, addressing NONE), "integrated" (GPU memory is system RAM:
    GB10), "coherent-numa" (GPU memory is a NUMA node: GH200/GB200), "no-gpu", "unknown"."""
    kind: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class HostInfo:
    """Static facts about the host, for headers of snapshots and recordings."""
    hostname: Optional[str] = None
    kernel: Optional[str] = None
    machine: Optional[str] = None
    page_size: Optional[int] = None
    cgroup_layout: Optional[str] = None        # "v2", "v1", "hybrid", "none"
    driver_version: Optional[str] = None
    nvml_version: Optional[str] = None
    cuda_driver_version: Optional[int] = None  # e.g. 13000
    gpus: list[GpuInfo] = field(default_factory=list)
    platform: Optional[PlatformProfile] = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Sample:
    """Host + one target cgroup + its processes (+ GPUs) at one instant."""
    mono_ns: int                               # CLOCK_MONOTONIC at the start of the reading
    wall_ns: int                               # CLOCK_REALTIME at the start of the reading
    meminfo: Optional[Meminfo] = None
    vmstat: Optional[Vmstat] = None
    cgroup: Optional[CgroupSample] = None
    processes: list[ProcessSample] = field(default_factory=list)
    gpus: Optional[list[GpuSample]] = None     # None: NVML not read; [] : no GPU
    read_ns: Optional[int] = None              # how long the reading took
    notes: list[str] = field(default_factory=list)   # what was missing, and why


def sample_to_dict(s: Sample) -> dict:
    """Plain dict (JSON-ready apart from int keys in numa_stat, which json turns into str)."""
    return asdict(s)


def cgroup_from_dict(d: dict) -> CgroupSample:
    """A CgroupSample from its dict, also after JSON (numa_stat node keys back to int)."""
    cg = known(CgroupSample, d)
    if cg.get("pressure") is not None:
        cg["pressure"] = Pressure(**known(Pressure, cg["pressure"]))
    if cg.get("numa_stat") is not None:
        cg["numa_stat"] = {k: {int(n): v for n, v in nodes.items()} for k, nodes in cg["numa_stat"].items()}
    return CgroupSample(**cg)


def sample_from_dict(d: dict) -> Sample:
    """Inverse of sample_to_dict, also for dicts that went through JSON."""
    d = known(Sample, d)
    if d.get("meminfo") is not None:
        d["meminfo"] = Meminfo(**known(Meminfo, d["meminfo"]))
    if d.get("vmstat") is not None:
        d["vmstat"] = Vmstat(**known(Vmstat, d["vmstat"]))
    if d.get("cgroup") is not None:
        d["cgroup"] = cgroup_from_dict(d["cgroup"])
    d["processes"] = [ProcessSample(**known(ProcessSample, p)) for p in d.get("processes") or []]
    if d.get("gpus") is not None:
        gpus = []
        for g in d["gpus"]:
            g = known(GpuSample, g)
            if g.get("processes") is not None:
                g["processes"] = [GpuProcess(**known(GpuProcess, p)) for p in g["processes"]]
            gpus.append(GpuSample(**g))
        d["gpus"] = gpus
    return Sample(**d)
