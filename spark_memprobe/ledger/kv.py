"""KV-cache budget: what an engine that sizes its cache as fraction x cudaMemGetInfo free
gets, and what it loses against fraction x MemAvailable.

TensorRT-LLM and vLLM size the KV cache from cudaMemGetInfo free times a fraction
(kv_cache_free_gpu_memory_fraction, gpu_memory_utilization). On integrated UMA free is the
kernel's MemFree (ledger/cuda.py), so every reclaimable byte that MemAvailable would hand
out is lost to the cache, times the fraction:
    lost = fraction x (MemAvailable - CUDA free)
Cross-checked on the published DGX Spark runs (github.com/brandonrc/benchmark-spark; a copy
in tests/fixtures/gb10-synthetic/reference/benchmark-spark_runs_flat.csv): every run
has kv_cache = 0.9 x (119.64 GiB - peak + ~0.07 GiB), i.e. 0.9 x CUDA free at sizing time.

MemAvailable - MemFree is split the way the kernel builds MemAvailable (mm/show_mem.c
si_mem_available): LRU page cache (the target's, from its memory.stat, and the rest of the
host's) plus reclaimable kernel memory (KReclaimable), less what the kernel holds back
(low watermarks and reserves; a negative part).
"""
from __future__ import annotations

from typing import Optional

from .derive import Derived
from .facts import Facts, add
from .model import CudaFree, GapPart, KvBudget


def _kv(fraction: float, v: Optional[int]) -> Optional[int]:
    # engines truncate: int(fraction * free)
    return None if v is None else int(fraction * v)


def _parts(f: Facts, d: Derived, gap: int, fraction: float) -> list[GapPart]:
    host_lru = add(f.m("Active(file)"), f.m("Inactive(file)"))
    kre = f.m("KReclaimable")
    if host_lru is None or kre is None:
        return []
    mine = min(d.page_cache_lru, host_lru) if d.page_cache_lru is not None else None
    parts = []
    if mine is not None:
        parts.append(("target_page_cache", "page cache charged to the target", mine))
        parts.append(("other_page_cache", "page cache of the rest of the host", host_lru - mine))
    else:
        parts.append(("page_cache", "page cache (host LRU)", host_lru))
    parts.append(("kreclaimable", "reclaimable kernel memory (KReclaimable)", kre))
    parts.append(("held_back", "less: what MemAvailable holds back (watermarks, reserves)",
                  gap - sum(p[2] for p in parts)))
    return [GapPart(k, label, b, int(fraction * b)) for k, label, b in parts]


def kv_budget(f: Facts, d: Derived, cuda: list[CudaFree], fraction: float = 0.9) -> KvBudget:
    avail, free = f.m("MemAvailable"), f.m("MemFree")
    gpu = cuda[0] if cuda else None
    uma = f.platform == "integrated"
    if uma:
        cuda_free = gpu.free_bytes if gpu is not None else free
        note = "integrated UMA: cudaMemGetInfo free follows MemFree, so reclaimable memory is lost to the cache"
    else:
        cuda_free = gpu.free_bytes if gpu is not None else None
        why = ("CUDA free does not depend on page cache" if f.platform in ("discrete", "coherent-numa")
               else "no GPU platform detected")
        note = f"not applicable on a {f.platform} host ({why}); lost and parts predict what integrated UMA would lose"
    gap_free = cuda_free if uma else free
    gap = None if avail is None or gap_free is None else avail - gap_free
    kv = KvBudget(fraction=fraction, gpu_index=gpu.gpu_index if gpu is not None else None, applies=uma,
                  prediction=not uma, cuda_free_bytes=cuda_free, mem_free_bytes=free, mem_available_bytes=avail,
                  kv_from_cuda_free_bytes=_kv(fraction, cuda_free), kv_from_available_bytes=_kv(fraction, avail),
                  lost_bytes=_kv(fraction, gap), note=note)
    if gap is not None:
        kv.parts = _parts(f, d, gap, fraction)
    if len(cuda) > 1:
        kv.note += f"; {len(cuda)} GPUs: budget shown for GPU {kv.gpu_index}"
    return kv
