"""Quantities derived from Facts that several parts of the ledger share (page cache, the
kernel split, the estimate of driver pages mapped into processes).

The one estimate here that decides findings is `driver_mapped`: bytes that memcg counts in
`kernel` AND in `file_mapped`. UVM hands managed CPU pages to processes with a file-style
rmap, so the kernel counts them in NR_FILE_MAPPED (file_mapped, meminfo Mapped, RssFile)
while their charge is kmem (__GFP_ACCOUNT, memory.stat kernel) and they are never page
cache (not in `file`). Measured on the H100 fixture, step 07: kernel +1 GiB, file_mapped
+1 GiB, file unchanged, so file_mapped > file. file_mapped - file is therefore a proven
lower bound; the bytes cannot exceed the unitemised kernel memory nor file_mapped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .facts import Facts, floor0, kernel_itemised, sub
from .inputs import CUDA_MANAGED, LedgerInputs


@dataclass
class Derived:
    page_cache: Optional[int] = None        # file - shmem
    kernel_items: Optional[int] = None      # itemised parts of kernel, capped at kernel
    driver_kernel: Optional[int] = None     # kernel - itemised parts (None on cgroup v1)
    driver_mapped: Optional[int] = None     # kernel pages also in file_mapped (estimate)
    driver_mapped_low: Optional[int] = None # proven part: file_mapped - file
    driver_mapped_basis: str = ""
    shmem_mapped: Optional[int] = None      # estimate: shmem the target's processes map
    page_cache_mapped: Optional[int] = None # estimate
    page_cache_lru: Optional[int] = None    # active_file + inactive_file
    gpu_managed: Optional[int] = None       # the target's managed memory resident on the GPU (eBPF)


def _min(*vals: Optional[int]) -> Optional[int]:
    return None if any(v is None for v in vals) else min(vals)  # type: ignore[type-var]


def derive(f: Facts, inputs: LedgerInputs) -> Derived:
    d = Derived()
    if not f.has_cgroup:
        return d
    file, shmem, kernel, fm = f.s("file"), f.s("shmem"), f.s("kernel"), f.s("file_mapped")
    # memory.stat `file` counts shmem too: "shmem: Amount of cached filesystem data that is
    # swap-backed" is part of "file" (Documentation/admin-guide/cgroup-v2.rst)
    d.page_cache = floor0(sub(file, shmem))
    d.page_cache_lru = None if f.s("active_file") is None or f.s("inactive_file") is None \
        else f.s("active_file") + f.s("inactive_file")
    items = kernel_itemised(f)
    if items is not None and kernel is not None and f.cg_version == 2:
        d.kernel_items = min(items, kernel)
        d.driver_kernel = kernel - d.kernel_items
    kernel_cap = d.driver_kernel if d.driver_kernel is not None else kernel
    proof = sub(fm, file)
    managed = (inputs.cuda_bytes or {}).get(CUDA_MANAGED) if inputs.cuda_bytes is not None else None
    # file_mapped also counts shmem that processes map, pinned host memory among it
    # (docs/facts.md#f-file-mapped-shmem): the target's mapped shmem is no driver page
    fm_driver = fm
    if fm is not None and shmem is not None and f.rss_shmem is not None:
        fm_driver = max(0, fm - min(f.rss_shmem, shmem))
    if fm is None or kernel_cap is None:
        d.driver_mapped_basis = "file_mapped or kernel not read"
    elif managed is not None:
        d.driver_mapped = min(kernel_cap, fm_driver, managed)
        d.driver_mapped_basis = "min(unitemised kernel, file_mapped - mapped shmem, eBPF managed bytes)"
    elif proof is not None and proof > 0:
        d.driver_mapped = min(kernel_cap, fm_driver)
        d.driver_mapped_basis = "file_mapped > file: min(unitemised kernel, file_mapped - mapped shmem)"
    else:
        d.driver_mapped = 0
        d.driver_mapped_basis = "no evidence (file_mapped <= file and no eBPF managed bytes)"
    if d.driver_mapped is not None and proof is not None:
        d.driver_mapped_low = max(0, min(proof, d.driver_mapped))
    if shmem is not None and fm is not None and d.driver_mapped is not None:
        rest = max(0, fm - d.driver_mapped)
        # shmem that the target's own processes map (RssShmem); without processes, what fits
        d.shmem_mapped = min(shmem, rest, f.rss_shmem) if f.rss_shmem is not None else min(shmem, rest)
        d.page_cache_mapped = _min(d.page_cache, rest - d.shmem_mapped)
    d.gpu_managed = _gpu_managed(f, managed, d.driver_mapped)
    return d


def _gpu_managed(f: Facts, managed: Optional[int], on_cpu: Optional[int]) -> Optional[int]:
    """The target's managed memory that lives on the GPU now. NVML per-process memory leaves
    managed memory out (docs/facts.md#f-managed-migrated), so it is in NVML used minus every
    process's bytes; the target's share is bounded by its live managed bytes (eBPF) less the
    part still mapped on the CPU. None without eBPF or NVML: then it is not attributed."""
    if managed is None or on_cpu is None or not f.gpus_read or f.nvml_used is None or f.gpu_all_procs is None:
        return None
    return min(max(0, f.nvml_used - f.gpu_all_procs), max(0, managed - on_cpu))
