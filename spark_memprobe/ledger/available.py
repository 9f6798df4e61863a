"""MemAvailable taken apart by the kernel's own formula, and free memory by block size.

si_mem_available() (mm/show_mem.c, Linux 5.x-6.x) computes, in pages:

    free pages - totalreserve_pages
    + page cache (Active(file) + Inactive(file)) - min(page cache / 2, sum of low watermarks)
    + KReclaimable - min(KReclaimable / 2, sum of low watermarks)

and totalreserve_pages (mm/page_alloc.c calculate_totalreserve_pages) is, per zone,
min(managed, high watermark without boost + the largest lowmem_reserve against higher zones).
So raising vm.min_free_kbytes raises every watermark and MemAvailable falls by the change of
the reserve, while MemFree (what cudaMemGetInfo follows on an integrated GPU) does not move.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..samples import Meminfo, Zone

HUGE_BLOCK_BYTES = 2 << 20     # a GPU driver's large pages and THP on 4 KiB kernels


@dataclass
class MemAvailableParts:
    """Each term of si_mem_available in bytes; `computed_bytes` is their sum (floored at 0 like
    the kernel), `kernel_bytes` what /proc/meminfo printed, `difference_bytes` the second minus
    the first (a few pages from reading two files at different instants; more means this
    kernel computes it differently)."""
    free_bytes: int
    reserve_bytes: int                 # totalreserve_pages: high watermarks + lowmem reserves
    low_watermarks_bytes: int
    page_cache_bytes: int
    page_cache_kept_bytes: int         # the part of page cache the kernel assumes must stay
    reclaimable_kernel_bytes: int
    reclaimable_kernel_kept_bytes: int
    computed_bytes: int
    kernel_bytes: Optional[int]
    difference_bytes: Optional[int]


def reserve_pages(zones: list[Zone]) -> Optional[int]:
    """totalreserve_pages from zoneinfo; None when a zone lacks a needed field."""
    total = 0
    by_node: dict[int, list[Zone]] = {}
    for z in zones:
        by_node.setdefault(z.node, []).append(z)
    for node_zones in by_node.values():
        for i, z in enumerate(node_zones):
            if z.high_pages is None or z.managed_pages is None or z.protection_pages is None:
                return None
            # the kernel scans lowmem_reserve[j] for j >= this zone's index
            most = max(z.protection_pages[i:], default=0)
            high = z.high_pages - (z.boost_pages or 0)
            total += min(most + high, z.managed_pages)
    return total


def decompose_mem_available(meminfo: Optional[Meminfo], zones: Optional[list[Zone]],
                            page_size: Optional[int]) -> Optional[MemAvailableParts]:
    """None when meminfo, zoneinfo or the page size is missing."""
    if meminfo is None or not zones or not page_size:
        return None
    need = ("MemFree", "Active(file)", "Inactive(file)", "KReclaimable")
    if any(meminfo.get(k) is None for k in need):
        return None
    reserve = reserve_pages(zones)
    if reserve is None or any(z.low_pages is None for z in zones):
        return None
    low = sum(z.low_pages for z in zones)
    free = meminfo.get("MemFree") // page_size
    cache = (meminfo.get("Active(file)") + meminfo.get("Inactive(file)")) // page_size
    cache_kept = min(cache // 2, low)
    reclaim = meminfo.get("KReclaimable") // page_size
    reclaim_kept = min(reclaim // 2, low)
    computed = max(0, free - reserve + cache - cache_kept + reclaim - reclaim_kept) * page_size
    kernel = meminfo.get("MemAvailable")
    return MemAvailableParts(
        free_bytes=free * page_size, reserve_bytes=reserve * page_size, low_watermarks_bytes=low * page_size,
        page_cache_bytes=cache * page_size, page_cache_kept_bytes=cache_kept * page_size,
        reclaimable_kernel_bytes=reclaim * page_size, reclaimable_kernel_kept_bytes=reclaim_kept * page_size,
        computed_bytes=computed, kernel_bytes=kernel,
        difference_bytes=None if kernel is None else kernel - computed)


def block_order(block_bytes: int, page_size: int) -> int:
    """The buddy order whose blocks are block_bytes: 9 for 2 MiB on 4 KiB pages, 5 on 64 KiB."""
    order, size = 0, page_size
    while size < block_bytes:
        size, order = size * 2, order + 1
    return order


def free_in_blocks_bytes(zones: Optional[list[Zone]], page_size: Optional[int],
                         block_bytes: int = HUGE_BLOCK_BYTES) -> Optional[int]:
    """Free memory that lies in free blocks of at least block_bytes (buddyinfo), in bytes;
    None when buddyinfo was not read."""
    if not zones or not page_size or any(z.free_blocks is None for z in zones):
        return None
    first = block_order(block_bytes, page_size)
    return sum(n << order for z in zones for order, n in enumerate(z.free_blocks) if order >= first) * page_size
