"""cudaMemGetInfo free/total, modelled per platform from readings (never by creating a CUDA
context: one costs about 500 MB of GPU memory and would change what is measured).

  integrated UMA  free = MemFree, total = MemTotal. The CUDA driver API reference
                  (cuMemGetInfo) says free is "free according to the OS" and that the
                  integrated Tegra-class GPU shares memory with the CPU; on GB10 it tracks the
                  kernel's MemFree, so reclaimable page cache counts as used (vLLM issue
                  #35313, llama.cpp PR #17368, DGX Spark playbooks: "flush the buffer cache").
  discrete        free = NVML free, total = NVML total - NVML reserved: on the H100 fixture
                  cudaMemGetInfo gave exactly these (steps/04-10 cuda_meminfo.json).
  coherent NUMA   NVML free (the GPU's memory is its own NUMA node; page cache that the kernel
                  puts on that node is not modelled here).
"""
from __future__ import annotations

from .facts import Facts
from .model import CudaFree

SRC_UMA = ("CUDA Driver API reference, cuMemGetInfo (free is 'free according to the OS'; integrated "
           "GPUs share system memory); vLLM issue #35313; llama.cpp PR #17368")
SRC_DISCRETE = "H100 fixture: cudaMemGetInfo == (NVML free, NVML total - reserved) at every step"


def model_cuda_free(f: Facts) -> list[CudaFree]:
    """One CudaFree per GPU; empty when no GPU was read."""
    out = []
    for i in f.gpu_indexes:
        if f.platform == "integrated":
            out.append(CudaFree(i, f.platform, f.m("MemFree"), f.m("MemTotal"),
                                "MemFree / MemTotal (integrated: GPU memory is system RAM)", SRC_UMA))
        elif f.platform in ("discrete", "coherent-numa"):
            total, reserved = f.nvml_total.get(i), f.nvml_reserved.get(i)
            cuda_total = total - reserved if total is not None and reserved is not None else total
            out.append(CudaFree(i, f.platform, f.nvml_free.get(i), cuda_total,
                                "NVML free / NVML total - reserved", SRC_DISCRETE))
        else:
            out.append(CudaFree(i, f.platform, None, None, f"not modelled on platform '{f.platform}'", ""))
    return out


def cuda_used_total(models: list[CudaFree]):
    """Sum over GPUs of total - free, None when any is unknown. On integrated hosts every GPU
    sees the same pool, so it is counted once."""
    if not models:
        return None
    if models[0].platform == "integrated":
        m = models[0]
        return None if m.total_bytes is None or m.free_bytes is None else m.total_bytes - m.free_bytes
    vals = [None if m.total_bytes is None or m.free_bytes is None else m.total_bytes - m.free_bytes for m in models]
    return None if any(v is None for v in vals) else sum(vals)
