"""The ledger table: rows are physical kinds of memory, columns are the views tools show.

Each column is split over the rows it counts so that, for every column,
    sum(cells of the top-level rows it counts) - excess_bytes == total
where one residual row per column takes what no counter itemises, and `excess_bytes` records
the rare opposite (memory.stat, flushed lazily, ahead of the exact page counter).
"""
from __future__ import annotations

from typing import Optional

from .cuda import cuda_used_total
from .derive import Derived
from .facts import Facts, add, floor0, sub, under
from .inputs import CUDA_MANAGED, CUDA_PINNED, LedgerInputs
from .available import MemAvailableParts
from .model import Column, CudaFree, Row

CG2 = "Documentation/admin-guide/cgroup-v2.rst (memory.stat)"

ROWS = [
    ("anon", "anon", "anonymous memory: heap, stacks, private mappings", CG2 + " anon"),
    ("page_cache", "page cache", "file pages in the page cache, reclaimable: memory.stat file - shmem",
     CG2 + " file, shmem"),
    ("shmem", "shmem / pinned", "shmem, tmpfs and shared anonymous mmap; CUDA pinned host memory "
     "(cudaHostAlloc) lands here; not reclaimable", CG2 + " shmem"),
    ("kernel", "kernel", "slab, kernel stacks, page tables, percpu, vmalloc", CG2 + " kernel and its parts"),
    ("driver_kernel", "kernel, not itemised", "kernel memory in no memory.stat part: driver allocations made "
     "with __GFP_ACCOUNT, such as UVM managed CPU pages", CG2 + " kernel minus its parts"),
    ("sock", "socket buffers", "network buffers charged to the cgroup", CG2 + " sock"),
    ("unitemised", "charged, unitemised", "in memory.current but in no memory.stat key: per-CPU charge "
     "batches and stat updates not flushed yet", "mm/memcontrol.c (memcg_stock, rstat flush)"),
    ("elsewhere", "not charged here", "mapped by the target's processes but charged to other cgroups "
     "(first touch; charged before the process moved in), or shared between its processes",
     "Documentation/admin-guide/cgroup-v2.rst (Memory Ownership)"),
    ("gpu_target", "GPU, target", "GPU memory of the target's processes (NVML per-process)",
     "NVML nvmlDeviceGetComputeRunningProcesses usedGpuMemory"),
    ("gpu_other", "GPU, others", "GPU memory of other processes and the driver (NVML device used - the "
     "target's processes and its managed memory on the GPU)", "NVML nvmlDeviceGetMemoryInfo_v2"),
    ("reserve", "kernel reserve", "free pages MemAvailable leaves out: zone high watermarks and lowmem reserves "
     "(vm.min_free_kbytes raises them)", "mm/page_alloc.c calculate_totalreserve_pages; mm/show_mem.c "
     "si_mem_available"),
    ("host_other", "rest of host", "memory of other cgroups, the host kernel and reserves",
     "/proc/meminfo (Documentation/filesystems/proc.rst)"),
]

GPU_TARGET_TITLES = {
    "integrated": "GPU allocations of the target's processes: system RAM that no memory cgroup charges",
    "discrete": "GPU-resident memory of the target's processes (the card's own memory)",
    "coherent-numa": "GPU memory of the target's processes (the GPU's NUMA node)",
}

CURRENT_SRC = {2: CG2 + " memory.current", 1: "Documentation/admin-guide/cgroup-v1/memory.rst usage_in_bytes"}
WS_SRC = ("docker/cli cli/command/container/stats_helpers.go calculateMemUsageUnixNoCache; cAdvisor "
          "container/libcontainer/handler.go (working set = usage - inactive_file, v1 total_inactive_file)")


def _fill(col: Column, rows: dict[str, Row], parts: list[tuple[str, Optional[int]]],
          residual: Optional[str] = None) -> None:
    """Put each part in its row and the rest of the column's total in the residual row."""
    col.counts = [k for k, _ in parts] + ([residual] if residual else [])
    unknown = col.total is None
    for k, v in parts:
        rows[k].cells[col.key] = None if unknown or v is None else max(0, v)
    known = [rows[k].cells[col.key] for k, _ in parts]
    if unknown or any(v is None for v in known):
        if residual:
            rows[residual].cells[col.key] = None
        return
    rest = col.total - sum(known)
    if residual:
        rows[residual].cells[col.key] = max(0, rest)
    col.excess_bytes = max(0, -rest)
    if rest > 0 and not residual:
        col.note = f"{rest} bytes not placed in a row"


def _cgroup_parts(f: Facts, d: Derived, page_cache: Optional[int]) -> list[tuple[str, Optional[int]]]:
    parts = [("anon", f.s("anon")), ("page_cache", page_cache), ("shmem", f.s("shmem"))]
    if d.driver_kernel is not None:
        parts += [("kernel", d.kernel_items), ("driver_kernel", d.driver_kernel)]
    else:
        # cgroup v1 (or a kernel without the parts): kernel is kmem usage, not itemised
        parts.append(("kernel", f.s("kernel")))
    if f.cg_version == 2:
        # v2 charges socket memory to memory.current (mm/memcontrol.c mem_cgroup_charge_skmem);
        # v1 keeps TCP memory in its own counter, memory.kmem.tcp.usage_in_bytes
        parts.append(("sock", f.s("sock")))
    return parts


def _rss_parts(f: Facts, d: Derived) -> tuple[list[tuple[str, Optional[int]]], Optional[str]]:
    if not f.has_cgroup:
        return [("anon", f.rss_anon), ("page_cache", f.rss_file), ("shmem", f.rss_shmem)], None
    anon = None if f.rss_anon is None or f.s("anon") is None else min(f.rss_anon, f.s("anon"))
    shmem = None if f.rss_shmem is None or f.s("shmem") is None else min(f.rss_shmem, f.s("shmem"))
    drv = None if f.rss_file is None or d.driver_mapped is None else min(f.rss_file, d.driver_mapped)
    pc = None if drv is None or d.page_cache_mapped is None else min(f.rss_file - drv, d.page_cache_mapped)
    parts = [("anon", anon), ("page_cache", pc), ("shmem", shmem)]
    if d.driver_kernel is not None:
        parts.append(("driver_kernel", drv))
    return parts, "elsewhere"


def _host_parts(f: Facts, d: Derived, counts_page_cache: bool) -> list[tuple[str, Optional[int]]]:
    parts: list[tuple[str, Optional[int]]] = []
    if f.has_cgroup:
        if counts_page_cache:
            pc = d.page_cache
        else:
            # MemAvailable adds the LRU file pages back (mm/show_mem.c si_mem_available); page
            # cache off the LRU (mlocked, isolated) stays used
            pc = floor0(sub(d.page_cache, d.page_cache_lru))
        kernel = d.kernel_items if d.driver_kernel is not None else f.s("kernel")
        if not counts_page_cache and kernel is not None and f.s("slab_reclaimable") is not None:
            # reclaimable slab is in KReclaimable, which MemAvailable adds back
            kernel = max(0, kernel - f.s("slab_reclaimable"))
        parts = [("anon", f.s("anon")), ("page_cache", pc), ("shmem", f.s("shmem")), ("kernel", kernel)]
        if d.driver_kernel is not None:
            parts.append(("driver_kernel", d.driver_kernel))
        if f.cg_version == 2:
            parts.append(("sock", f.s("sock")))
    if f.platform == "integrated" and f.gpus_read:
        # on integrated UMA, cudaMalloc memory is system RAM taken by the driver, outside any memcg
        parts.append(("gpu_target", f.gpu_target))
    return parts


def build_table(f: Facts, d: Derived, inputs: LedgerInputs, cuda: list[CudaFree],
                avail: Optional[MemAvailableParts] = None) -> tuple[list[Column], list[Row]]:
    rows = {k: Row(k, label, title, source=src) for k, label, title, src in ROWS}
    rows["gpu_target"].title = GPU_TARGET_TITLES.get(f.platform, rows["gpu_target"].title)
    rows["elsewhere"].estimate = True
    if d.gpu_managed is None and f.platform != "integrated":
        # without the eBPF CUDA probe the target's managed pages on the GPU cannot be told
        # from other processes' memory (NVML per-process leaves managed memory out)
        rows["gpu_other"].label = "GPU, not attributed"
        rows["gpu_other"].title = ("GPU memory not in the target's NVML per-process figure: other processes, the "
                                   "driver, and any managed memory that migrated to the GPU (no eBPF CUDA probe)")
    gpu_mine = f.gpu_target if not d.gpu_managed else add(f.gpu_target, d.gpu_managed)
    cols: list[Column] = []
    v = f.cg_version or 2
    cg = f.has_cgroup

    def col(key, label, title, source, total):
        c = Column(key, label, title, source, total)
        cols.append(c)
        return c

    c = col("current", "memory.current" if v == 2 else "usage_in_bytes", "the cgroup's charged memory",
            CURRENT_SRC[v], f.current if cg else None)
    _fill(c, rows, _cgroup_parts(f, d, d.page_cache), "unitemised")
    inactive = f.s("inactive_file")
    ws = None
    if cg and f.current is not None and inactive is not None:
        ws = f.current - inactive if inactive < f.current else f.current
    c = col("working_set", "working set", "docker stats / kubelet: usage - inactive_file", WS_SRC, ws)
    _fill(c, rows, _cgroup_parts(f, d, floor0(sub(d.page_cache, inactive))), "unitemised")
    for key, label in (("anon", "anon"), ("file", "file"), ("shmem", "shmem"), ("kernel", "kernel"),
                       ("file_mapped", "file_mapped")):
        c = col(f"stat_{key}", label, f"memory.stat {key}", CG2 + f" {key}", f.s(key) if cg else None)
        if key == "anon":
            _fill(c, rows, [("anon", f.s("anon"))])
        elif key == "file":
            _fill(c, rows, [("page_cache", d.page_cache), ("shmem", f.s("shmem"))])
        elif key == "shmem":
            _fill(c, rows, [("shmem", f.s("shmem"))])
        elif key == "kernel":
            _fill(c, rows, [("kernel", d.kernel_items), ("driver_kernel", d.driver_kernel)]
                  if d.driver_kernel is not None else [("kernel", f.s("kernel"))])
        else:
            parts = [("shmem", d.shmem_mapped), ("page_cache", d.page_cache_mapped)]
            if d.driver_kernel is not None:
                parts.insert(0, ("driver_kernel", d.driver_mapped))
            _fill(c, rows, parts, "unitemised")
    rss_total = add(f.rss_anon, f.rss_file, f.rss_shmem)
    c = col("rss", "RSS sum", "sum of the target's VmRSS (RssAnon + RssFile + RssShmem): ps, top, psutil",
            "Documentation/filesystems/proc.rst (/proc/<pid>/status)", rss_total)
    parts, residual = _rss_parts(f, d)
    _fill(c, rows, parts, residual)
    if len(f.pids) > 1:
        c.note = "pages shared by several of the target's processes are counted once per process"
    mt = f.m("MemTotal")
    c = col("host_used", "Total-Avail", "host used: MemTotal - MemAvailable (free, nvtop's GPU 'used' on UMA)",
            "Documentation/filesystems/proc.rst MemAvailable; mm/show_mem.c si_mem_available",
            sub(mt, f.m("MemAvailable")))
    reserve = [("reserve", avail.reserve_bytes)] if avail is not None else []
    _fill(c, rows, _host_parts(f, d, counts_page_cache=False) + reserve, "host_other")
    c = col("host_nofree", "Total-Free", "host not free: MemTotal - MemFree (what CUDA free sees on UMA)",
            "Documentation/filesystems/proc.rst MemFree", sub(mt, f.m("MemFree")))
    _fill(c, rows, _host_parts(f, d, counts_page_cache=True), "host_other")
    c = col("nvml_used", "NVML used", "NVML device used, all GPUs (nvidia-smi)",
            "NVML nvmlDeviceGetMemoryInfo_v2 (NOT_SUPPORTED on GB10: DGX Spark known issues)",
            f.nvml_used if f.gpus_read else None)
    _fill(c, rows, [("gpu_target", None if gpu_mine is None or c.total is None
                     else min(gpu_mine, c.total))], "gpu_other")
    c = col("nvml_procs", "NVML procs", "NVML per-process memory of the target's PIDs (host PIDs)",
            "NVML nvmlDeviceGetComputeRunningProcesses", f.gpu_target if f.gpus_read else None)
    _fill(c, rows, [("gpu_target", f.gpu_target)])
    c = col("cuda_used", "CUDA used", "cudaMemGetInfo total - free, modelled per platform (ledger/cuda.py)",
            cuda[0].source if cuda else "", cuda_used_total(cuda))
    if f.platform == "integrated":
        _fill(c, rows, _host_parts(f, d, counts_page_cache=True), "host_other")
    else:
        _fill(c, rows, [("gpu_target", None if gpu_mine is None or c.total is None
                         else min(gpu_mine, c.total))], "gpu_other")
    # the reserve is the host's, read about once a second: a row only when it was read
    out = [rows[k] for k, *_ in ROWS if k != "reserve" or avail is not None]
    if cg:
        out = _with_subrows(out, f, d, inputs)
    return cols, out


def _sub(parent: str, key: str, label: str, title: str, cells: dict, source: str = "",
         estimate: bool = False) -> Row:
    return Row(f"{parent}.{key}", label, title, cells, parent=parent, source=source, estimate=estimate)


def _with_subrows(rows: list[Row], f: Facts, d: Derived, inputs: LedgerInputs) -> list[Row]:
    subs: dict[str, list[Row]] = {}
    act, ina = f.s("active_file"), f.s("inactive_file")
    subs["page_cache"] = [
        _sub("page_cache", "active", "active", "active_file: recently used page cache",
             {"current": act, "working_set": act, "stat_file": act}, CG2 + " active_file"),
        _sub("page_cache", "inactive", "inactive", "inactive_file: reclaimed first; docker/kubelet leave it out",
             {"current": ina, "working_set": 0 if ina is not None else None, "stat_file": ina},
             CG2 + " inactive_file"),
        _sub("page_cache", "dirty", "dirty+writeback", "file_dirty + file_writeback: must be written before reuse",
             {"current": add(f.s("file_dirty"), f.s("file_writeback"))}, CG2 + " file_dirty, file_writeback"),
        _sub("page_cache", "mapped", "mapped (est.)", "page cache mapped into some process: file_mapped minus "
             "driver pages and mapped shmem", {"current": d.page_cache_mapped, "stat_file_mapped": d.page_cache_mapped},
             CG2 + " file_mapped", estimate=True),
        _sub("page_cache", "unmapped", "unmapped (est.)", "page cache no process maps",
             {"current": sub(d.page_cache, d.page_cache_mapped)}, estimate=True),
    ]
    if inputs.page_cache is not None:
        mine = sorted((p for p in inputs.page_cache if under(p.cgroup, f.cg_path)),
                      key=lambda p: (-p.bytes, p.path or "", p.inode or 0))
        for i, p in enumerate(mine[:8]):
            name = p.path or f"inode {p.inode} on {p.dev}"
            subs["page_cache"].append(_sub("page_cache", f"file{i}", name, f"page cache of {name} charged to the "
                                           "target (eBPF)", {"current": p.bytes}, "eBPF page-cache ownership"))
    subs["shmem"] = []
    if inputs.cuda_bytes is not None:
        pinned = inputs.cuda_bytes.get(CUDA_PINNED, 0)
        subs["shmem"].append(_sub("shmem", "pinned", "CUDA pinned (eBPF)", "live cuMemHostAlloc bytes of the "
                                  "target's processes", {"current": pinned, "stat_shmem": pinned}, "eBPF uprobes"))
    if d.driver_kernel is not None:
        subs["kernel"] = [
            _sub("kernel", k, label, f"memory.stat {k}", {"current": f.s(k), "stat_kernel": f.s(k)}, CG2 + " " + k)
            for k, label in (("slab", "slab"), ("kernel_stack", "stacks"), ("pagetables", "page tables"))]
        subs["kernel"].append(_sub("kernel", "percpu_vmalloc", "percpu+vmalloc", "memory.stat percpu + vmalloc",
                                   {"current": add(f.s("percpu"), f.s("vmalloc")),
                                    "stat_kernel": add(f.s("percpu"), f.s("vmalloc"))}, CG2 + " percpu, vmalloc"))
        drv = d.driver_mapped
        subs["driver_kernel"] = [_sub("driver_kernel", "mapped", "mapped (UVM est.)",
                                      "driver pages mapped into processes: counted in kernel AND file_mapped "
                                      f"({d.driver_mapped_basis})",
                                      {"current": drv, "stat_kernel": drv, "stat_file_mapped": drv,
                                       "rss": None if drv is None or f.rss_file is None else min(drv, f.rss_file)},
                                      estimate=True)]
        if inputs.cuda_bytes is not None:
            m = inputs.cuda_bytes.get(CUDA_MANAGED, 0)
            subs["driver_kernel"].append(_sub("driver_kernel", "managed", "CUDA managed (eBPF)",
                                              "live cuMemAllocManaged bytes (resident on CPU or GPU)",
                                              {"stat_kernel": min(m, d.driver_kernel)}, "eBPF uprobes"))
    if d.gpu_managed:
        subs["gpu_target"] = [_sub("gpu_target", "managed", "managed on GPU (est.)",
                                   "the target's managed memory resident on the GPU: NVML used minus every "
                                   "process's bytes, at most its live managed bytes (eBPF) less what is mapped on "
                                   "the CPU", {"nvml_used": d.gpu_managed, "cuda_used": d.gpu_managed},
                                   "eBPF uprobes; NVML", estimate=True)]
    out = []
    for r in rows:
        out.append(r)
        out.extend(subs.get(r.key, []))
    return out
