"""What every engine model reads and returns: EngineState (the host as an engine will see it,
built from one ledger) and Prediction (what the engine will compute there).

Free memory is kept in its two forms because engines differ in which one they read on an
integrated GPU: cudaMemGetInfo free, which follows MemFree there (ledger/cuda.py,
docs/facts.md#f-gb10-cuda-free), or MemAvailable (psutil / /proc/meminfo), which newer engine
versions read instead. On a discrete GPU both bases are the device's own free memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ...ledger.model import Ledger
from ...samples import Sample

GiB = 1 << 30

# which reading an engine compares with
BASIS_MEMFREE = "MemFree"            # cudaMemGetInfo on an integrated GPU
BASIS_AVAILABLE = "MemAvailable"     # psutil.virtual_memory().available, /proc/meminfo
BASIS_DEVICE = "device free"         # cudaMemGetInfo on a discrete GPU (NVML free)


@dataclass
class GpuProcess:
    pid: int
    bytes: int


@dataclass
class EngineState:
    """The host at one instant, in the terms engines use. None: not read."""
    platform: str                               # "integrated", "discrete", "coherent-numa", "unknown"
    gpu_index: Optional[int]
    cuda_free_bytes: Optional[int]              # cudaMemGetInfo free, modelled (ledger/cuda.py)
    cuda_total_bytes: Optional[int]             # cudaMemGetInfo total, modelled
    mem_total_bytes: Optional[int]
    mem_free_bytes: Optional[int]
    mem_available_bytes: Optional[int]
    page_cache_bytes: Optional[int] = None      # host LRU file pages (Active(file) + Inactive(file))
    page_cache_kept_bytes: Optional[int] = None # the part MemAvailable does not count (si_mem_available)
    target_page_cache_bytes: Optional[int] = None   # the target cgroup's LRU file pages
    reclaimable_kernel_bytes: Optional[int] = None
    swap_free_bytes: Optional[int] = None
    target: str = "host"
    cgroup_path: Optional[str] = None
    cgroup_current_bytes: Optional[int] = None
    cgroup_limit_bytes: Optional[int] = None    # memory.max; None: unlimited or not read
    gpu_processes: Optional[list[GpuProcess]] = None   # NVML per-process bytes, every process
    modelled_uma: bool = False                  # no GPU here: numbers are "if this host were integrated UMA"
    notes: list[str] = field(default_factory=list)

    @property
    def integrated(self) -> bool:
        return self.platform == "integrated" or self.modelled_uma

    def free(self, uma_basis: str) -> tuple[Optional[int], str]:
        """(free bytes, basis) an engine sees that reads uma_basis on an integrated GPU."""
        if not self.integrated:
            return self.cuda_free_bytes, BASIS_DEVICE
        if uma_basis == BASIS_AVAILABLE:
            return self.mem_available_bytes, BASIS_AVAILABLE
        return self.cuda_free_bytes, BASIS_MEMFREE

    @classmethod
    def from_ledger(cls, ledger: Ledger, sample: Optional[Sample] = None,
                    as_integrated: bool = False) -> "EngineState":
        """From a ledger (CUDA free/total, MemFree, MemAvailable and the MemAvailable terms);
        swap, memory.max and per-process GPU bytes come from the sample the ledger was built
        from, when given. as_integrated: model the host as integrated UMA whatever its GPU."""
        kv, gpu = ledger.kv, (ledger.cuda[0] if ledger.cuda else None)
        used = ledger.total("host_used")
        avail = kv.mem_available_bytes
        st = cls(platform=ledger.platform, gpu_index=gpu.gpu_index if gpu else None,
                 cuda_free_bytes=gpu.free_bytes if gpu else None, cuda_total_bytes=gpu.total_bytes if gpu else None,
                 mem_total_bytes=None if used is None or avail is None else used + avail,
                 mem_free_bytes=kv.mem_free_bytes, mem_available_bytes=avail, target=ledger.target,
                 cgroup_current_bytes=ledger.total("current"))
        st.target_page_cache_bytes = next((p.bytes for p in kv.parts if p.key == "target_page_cache"), None)
        parts = ledger.mem_available
        if parts is not None:
            st.page_cache_bytes, st.page_cache_kept_bytes = parts.page_cache_bytes, parts.page_cache_kept_bytes
            st.reclaimable_kernel_bytes = parts.reclaimable_kernel_bytes
        else:
            lru = [p.bytes for p in kv.parts if p.key in ("target_page_cache", "other_page_cache", "page_cache")]
            st.page_cache_bytes = sum(lru) if lru else None
            st.reclaimable_kernel_bytes = next((p.bytes for p in kv.parts if p.key == "kreclaimable"), None)
        if as_integrated and ledger.platform != "integrated":
            # asked for: what this host's memory would give on a GB10, whatever its GPU
            st.modelled_uma, st.cuda_free_bytes, st.cuda_total_bytes = True, kv.mem_free_bytes, st.mem_total_bytes
            st.notes.append(f"modelled as integrated UMA (GB10) on request, though this host is {ledger.platform}: "
                            "cudaMemGetInfo = MemFree / MemTotal")
        elif gpu is None and ledger.platform not in ("discrete", "coherent-numa"):
            # no GPU read: model the host as integrated UMA, as the ledger's KV budget does
            st.modelled_uma, st.cuda_free_bytes, st.cuda_total_bytes = True, kv.mem_free_bytes, st.mem_total_bytes
            st.notes.append("no GPU here: every number is what an engine would see if this host were "
                            "integrated UMA (GB10): cudaMemGetInfo = MemFree / MemTotal")
        if sample is not None:
            _from_sample(st, sample)
        return st


def _from_sample(st: EngineState, s: Sample) -> None:
    if s.meminfo is not None:
        st.swap_free_bytes = s.meminfo.get("SwapFree")
    if s.cgroup is not None:
        st.cgroup_path = s.cgroup.path
        st.cgroup_limit_bytes = s.cgroup.max_bytes if isinstance(s.cgroup.max_bytes, int) else None
    if s.gpus:
        procs = [p for g in s.gpus if g.index == st.gpu_index or st.integrated for p in (g.processes or [])]
        st.gpu_processes = [GpuProcess(p.pid, p.used_bytes) for p in procs if p.used_bytes is not None]


@dataclass
class Prediction:
    """What one engine computes on this host with these settings. Bytes; None: not known."""
    engine: str
    source: str                       # the engine source (file, version) the model follows
    settings: dict
    free_bytes: Optional[int]         # what the engine sees as free
    free_basis: str                   # BASIS_*
    total_bytes: Optional[int]
    requested_bytes: Optional[int]    # what its start-up check asks for, or what it will allocate
    admission_ok: Optional[bool]      # None: the engine has no such check, or inputs are missing
    kv_bytes: Optional[int] = None
    approx_bytes: Optional[int] = None   # error bound of kv_bytes; None with kv_bytes: exact by the arithmetic
    kv_upper_bound: bool = False      # kv_bytes leaves out a term that was not given
    message: str = ""                 # the engine's own error text when it will refuse
    passing: dict = field(default_factory=dict)   # flag -> the value nearest the request that passes
    detail: dict = field(default_factory=dict)    # engine-specific results (layers on the GPU, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def shortfall_bytes(self) -> Optional[int]:
        if self.free_bytes is None or self.requested_bytes is None:
            return None
        return max(0, self.requested_bytes - self.free_bytes)

    @property
    def fails(self) -> bool:
        return self.admission_ok is False or (self.kv_bytes is not None and self.kv_bytes <= 0)


def opt(settings: dict, key: str) -> Optional[int]:
    v = settings.get(key)
    return None if v is None else int(v)


def largest_fraction(free: Optional[int], total: Optional[int], step: float = 0.01) -> Optional[float]:
    """The largest multiple of step u with ceil(total x u) <= free (None when none is above 0)."""
    if free is None or not total:
        return None
    u = math.floor(free / total / step) * step
    while u > 0 and math.ceil(total * round(u, 6)) > free:
        u -= step
    return round(u, 6) if u > 0 else None


def gib(b: int) -> float:
    """Bytes as engines print GiB: round(b / 2**30, 2) (vllm/utils/mem_utils.py format_gib)."""
    return round(b / GiB, 2)
