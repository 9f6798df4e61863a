"""Rules that only hold where GPU memory is system RAM (integrated UMA, e.g. DGX Spark GB10).
On a discrete card each returns Skip with the reason, so the ledger can say why it is silent."""
from __future__ import annotations

from .model import Finding, Part
from .rules_common import GiB, Ctx, Skip, b, noise, platform_skip, short

SRC_CUDA_UMA = "CUDA Driver API reference, cuMemGetInfo: free is 'free according to the OS' on integrated GPUs"


def kv_cache_thief(c: Ctx):
    """Page cache charged to the target AND counted as used by cudaMemGetInfo on UMA.

    Overlap: the target's page cache (memory.stat active_file + inactive_file) is charged to
    its memory.current, is reclaimable (MemAvailable counts it), and is also inside
    MemTotal - MemFree, which is what CUDA 'used' is on an integrated GPU. An engine sizing
    its KV cache as fraction x CUDA free loses fraction x (MemAvailable - MemFree).
    Sources: cuMemGetInfo reference (CUDA Driver API); vLLM issue #35313 (DGX Spark, GH200);
    llama.cpp PR #17368 (reads MemAvailable on DGX Spark); NVIDIA DGX Spark playbooks' UMA note
    (flush the buffer cache); benchmark-spark runs: kv_cache = 0.9 x (119.64 GiB - peak).
    """
    skip = platform_skip(c.f, "integrated", "CUDA free is NVML free, which page cache does not lower; "
                         "the KV budget shows the UMA prediction for this page cache")
    if skip:
        return skip
    kv = c.kv
    if kv.lost_bytes is None:
        return Skip("MemAvailable or MemFree not read")
    if kv.lost_bytes < noise(c):
        return None
    parts = {p.key: p for p in kv.parts}
    mine = parts.get("target_page_cache")
    whole = kv.kv_from_available_bytes or 0
    sev = "critical" if whole and kv.lost_bytes >= 0.25 * whole else \
        "warning" if kv.lost_bytes >= GiB or (whole and kv.lost_bytes >= 0.05 * whole) else "info"
    ev = [f"cudaMemGetInfo free (modelled) = MemFree = {b(kv.cuda_free_bytes)}; MemAvailable = "
          f"{b(kv.mem_available_bytes)}",
          f"KV cache at fraction {kv.fraction}: {b(kv.kv_from_cuda_free_bytes)} from CUDA free, "
          f"{b(kv.kv_from_available_bytes)} from MemAvailable: {b(kv.lost_bytes)} lost"]
    ev += [f"gap part: {p.label}: {b(p.bytes)} -> KV {b(p.kv_bytes)}" for p in kv.parts]
    if mine is not None:
        ev.append(f"the target's page cache ({b(mine.bytes)}) is charged to its memory.current AND counted as "
                  f"used by CUDA free: counted twice, and reclaimable all along")
    gap = kv.mem_available_bytes - kv.cuda_free_bytes
    title = f"KV cache {short(kv.lost_bytes)} smaller: CUDA free counts {short(gap)} of reclaimable memory as used"
    if mine is not None:
        title += f", {short(mine.bytes)} of it the target's page cache"
    return Finding("kv_cache_thief", title, kv.lost_bytes, sev, "high", ev,
                   [SRC_CUDA_UMA, "vLLM issue #35313", "llama.cpp PR #17368", "mm/show_mem.c si_mem_available",
                    "github.com/brandonrc/benchmark-spark, 63 published runs (kv_cache = 0.9 x (119.64 - peak))"],
                   rows=[Part("page_cache", mine.bytes if mine is not None else None)])


def uma_tool_sum(c: Ctx):
    """Host 'used' plus GPU 'used' on UMA counts the same RAM twice (nvtop/nvitop style).

    Overlap: on GB10 NVML has no device memory, so tools fall back to system memory: nvtop
    shows GPU used = MemTotal - MemAvailable (nvtop PR #466), i.e. exactly host used; gpustat
    (PR #179) and nvtop PR #511 show the sum of per-process GPU memory, which is system RAM
    already inside host used. A dashboard that adds host used and GPU used counts those bytes
    twice. Sources: nvtop PRs #411, #466, #511; gpustat PR #179; DGX Spark known issues
    (nvidia-smi memory usage Not Supported).
    """
    skip = platform_skip(c.f, "integrated", "NVML used is the card's own memory; host used and GPU used "
                         "are disjoint, so adding them is right")
    if skip:
        return skip
    host_used = c.columns["host_used"].total
    if host_used is None:
        return Skip("MemTotal or MemAvailable not read")
    if host_used < noise(c):
        return None
    mt = c.f.m("MemTotal")
    ev = [f"host used (MemTotal - MemAvailable) = {b(host_used)}",
          f"nvtop on UMA shows GPU used = MemTotal - MemAvailable = {b(host_used)}: host + GPU = "
          f"{b(2 * host_used)}" + (f" ({100 * 2 * host_used / mt:.0f} % of MemTotal {b(mt)})" if mt else "")]
    if c.f.gpu_all_procs is not None:
        ev.append(f"with GPU used = sum of NVML per-process memory (gpustat, nvtop PR #511) the overlap is "
                  f"{b(c.f.gpu_all_procs)}: those allocations are system RAM, already in host used")
    return Finding("uma_tool_sum", f"host used + GPU used overstates by {short(host_used)} on UMA (nvtop style)",
                   host_used, "warning", "high", ev,
                   ["nvtop PR #466 (GPU used = MemTotal - MemAvailable on UMA)", "nvtop PR #511", "gpustat PR #179",
                    "DGX Spark known issues: nvidia-smi reports memory usage Not Supported"],
                   rows=[Part("gpu_target")])


def limit_cannot_hold(c: Ctx):
    """A memory limit that cannot hold: GPU allocations from RAM sit outside it.

    Overlap (or rather gap): memory.max caps memory.current, but on integrated UMA cudaMalloc
    memory is system RAM that the driver takes without a memcg charge, so the container's
    real footprint is memory.current + its GPU allocations (NVML per-process), and only the
    first part is limited. Sources: Documentation/admin-guide/cgroup-v2.rst (memory.max);
    NVML per-process usedGpuMemory works on GB10 (gpustat PR #179, unsloth PR #10283 thread).
    """
    skip = platform_skip(c.f, "integrated", "memory.max limits system RAM, and GPU memory is the card's own; "
                         "the limit never covered it and loses nothing")
    if skip:
        return skip
    f = c.f
    if not f.has_cgroup:
        return Skip("no target cgroup")
    if not f.limit_read:
        return Skip("memory.max not read")
    if f.limit is None:
        return None
    if f.gpu_target is None:
        return Skip("NVML per-process memory not read")
    if f.gpu_target < noise(c) or f.current is None:
        return None
    foot = f.current + f.gpu_target
    over = foot > f.limit
    ev = [f"memory.max = {b(f.limit)}; memory.current = {b(f.current)}",
          f"GPU allocations of the target's processes (NVML per-process, pids "
          f"{', '.join(map(str, f.gpu_target_pids))}) = {b(f.gpu_target)}: system RAM with no memcg charge",
          f"real footprint = {b(foot)}" + (f", {b(foot - f.limit)} over the limit, with no OOM kill" if over else "")]
    return Finding("limit_cannot_hold", f"memory limit {short(f.limit)} does not cover {short(f.gpu_target)} of GPU "
                   f"allocations" + (" (footprint over the limit)" if over else ""), f.gpu_target,
                   "critical" if over else "warning", "high", ev,
                   ["Documentation/admin-guide/cgroup-v2.rst memory.max", "NVML nvmlDeviceGetComputeRunningProcesses"],
                   rows=[Part("gpu_target", f.gpu_target)])


RULES = [kv_cache_thief, limit_cannot_hold, uma_tool_sum]
