"""Rules about the page allocator itself: the zone reserves MemAvailable leaves out, free memory
too fragmented for a GPU driver's large allocations, and direct reclaim or compaction stalls.
Each reads the whole host (docs/ledger.md, "Kernel causes")."""
from __future__ import annotations

from typing import Optional

from .available import HUGE_BLOCK_BYTES
from .model import Finding, Part
from .rules_common import GiB, Ctx, Skip, b, short

SRC_AVAIL = "mm/show_mem.c si_mem_available; mm/page_alloc.c calculate_totalreserve_pages"
SRC_BUDDY = "mm/vmstat.c (/proc/buddyinfo); Documentation/admin-guide/sysctl/vm.rst compact_memory"
SRC_STALL = "Documentation/admin-guide/mm/concepts.rst (direct reclaim, compaction); mm/vmscan.c allocstall"
RESERVE_INFO = GiB           # a reserve this large is worth saying on any host
RESERVE_WARN = 4 * GiB       # ... and a reason engines' start-up checks fail on UMA
HUGE_SCARCE = GiB            # less free memory than this in 2 MiB blocks ...
HUGE_AVAILABLE = 4 * GiB     # ... while MemAvailable has this much more: fragmentation, not shortage


def reserve_hides_free(c: Ctx):
    """Free pages that MemAvailable leaves out: the zone reserves.

    si_mem_available() subtracts totalreserve_pages (each zone's high watermark plus its largest
    lowmem reserve) from the free pages. vm.min_free_kbytes raises every watermark, so raising it
    lowers MemAvailable by the reserve's growth while MemFree, which cudaMemGetInfo follows on an
    integrated GPU, does not move: an engine whose start-up check reads MemAvailable then sees less
    than the CUDA free it sizes from (a GB10 report: 6.2 GiB less after raising min_free_kbytes)."""
    a = c.avail
    if a is None:
        return Skip("zoneinfo not read (the kernel's page-allocator state comes about once a second)")
    if a.reserve_bytes < RESERVE_INFO:
        return None
    k = c.inputs.kernel
    mfk = k.min_free_kbytes if k is not None else None
    uma = c.f.platform in ("integrated", "coherent-numa")
    ev = [f"MemAvailable = free {b(a.free_bytes)} - reserve {b(a.reserve_bytes)} + page cache {b(a.page_cache_bytes)}"
          f" - kept {b(a.page_cache_kept_bytes)} + reclaimable kernel {b(a.reclaimable_kernel_bytes)} - kept "
          f"{b(a.reclaimable_kernel_kept_bytes)} = {b(a.computed_bytes)} (kernel: {b(a.kernel_bytes)})",
          f"vm.min_free_kbytes = {mfk if mfk is not None else 'not read'}; watermark_scale_factor = "
          f"{k.watermark_scale_factor if k is not None and k.watermark_scale_factor is not None else 'not read'}",
          "remedy: lower vm.min_free_kbytes (sysctl -w vm.min_free_kbytes=N): each KiB less is a KiB more of "
          "MemAvailable; too low and atomic allocations fail and direct reclaim starts sooner"]
    if uma:
        ev.append("integrated GPU: cudaMemGetInfo free follows MemFree, which still counts these pages as free")
    sev = "warning" if uma and a.reserve_bytes >= RESERVE_WARN else "info"
    return Finding("reserve_hides_free", f"{short(a.reserve_bytes)} of free memory is kernel reserve that "
                   "MemAvailable leaves out", a.reserve_bytes, sev, "high", ev, [SRC_AVAIL],
                   rows=[Part("reserve", a.reserve_bytes)])


def huge_blocks_scarce(c: Ctx):
    """Free memory too fragmented for large GPU allocations on a host where GPU memory is RAM.

    On an integrated or coherent GPU the driver takes the GPU's memory from the kernel's buddy
    allocator in large blocks (2 MiB pages); when page cache has been scattered over memory, no
    free 2 MiB block may be left although MemAvailable is large, and the allocation fails
    (NV_ERR_NO_MEMORY in a GB10 report; dropping caches and compacting ended it)."""
    if c.f.platform not in ("integrated", "coherent-numa"):
        return Skip(f"{c.f.platform}: GPU memory does not come from the host's free blocks")
    if c.huge_free is None:
        return Skip("buddyinfo not read")
    avail = c.f.m("MemAvailable")
    if avail is None:
        return Skip("MemAvailable not read")
    if c.huge_free >= HUGE_SCARCE or avail - c.huge_free < HUGE_AVAILABLE:
        return None
    ev = [f"free in blocks of {short(HUGE_BLOCK_BYTES)} or more: {b(c.huge_free)} (/proc/buddyinfo)",
          f"MemAvailable {b(avail)}, MemFree {b(c.f.m('MemFree'))}: the rest is in smaller blocks or page cache",
          "remedy: compact memory (echo 1 > /proc/sys/vm/compact_memory; costs CPU time and can stall "
          "allocations while it runs), or drop the clean page cache of the files that scattered it before the "
          "model loads"]
    return Finding("huge_blocks_scarce", f"only {short(c.huge_free)} free in 2 MiB blocks although MemAvailable is "
                   f"{short(avail)}", avail - c.huge_free, "warning", "medium", ev, [SRC_BUDDY])


STALL_COUNTERS = ("allocstall_dma", "allocstall_dma32", "allocstall_normal", "allocstall_movable",
                  "allocstall_device")


def _delta(c: Ctx, *keys: str) -> Optional[int]:
    now, before = c.f.vmstat, c.inputs.vmstat_before
    if now is None or before is None:
        return None
    vals = [(now.counters.get(k), before.counters.get(k)) for k in keys]
    vals = [(n, p) for n, p in vals if n is not None and p is not None]
    return sum(n - p for n, p in vals) if vals else None


def reclaim_stalls(c: Ctx):
    """Allocating tasks stalled in direct reclaim or compaction since about a second ago.

    When free memory falls below the min watermark, a task that allocates (a model load, the
    driver taking GPU memory on UMA) reclaims or compacts memory itself before its allocation
    returns: /proc/vmstat allocstall_*, compact_stall and pgscan_direct count it."""
    if c.inputs.vmstat_before is None:
        return Skip("no earlier /proc/vmstat to compare with")
    stalls, compact = _delta(c, *STALL_COUNTERS), _delta(c, "compact_stall")
    scanned, stolen = _delta(c, "pgscan_direct"), _delta(c, "pgsteal_direct")
    if stalls is None and compact is None:
        return Skip("vmstat has no allocstall or compact_stall counters")
    if not (stalls or 0) and not (compact or 0):
        return None
    page = c.f.page_size or 0
    secs = c.inputs.vmstat_before_s
    ev = [(f"in the last {secs:.1f} s: " if secs else "since the earlier reading: ") +
          f"{stalls or 0} direct-reclaim stalls, {compact or 0} compaction stalls, "
          f"{scanned if scanned is not None else '?'} pages scanned and {stolen if stolen is not None else '?'} "
          "reclaimed by allocating tasks",
          "remedy: leave free memory before large loads (drop the clean page cache of files no longer needed); "
          "raising vm.min_free_kbytes wakes kswapd earlier but lowers MemAvailable by the same amount"]
    amount = (stolen or 0) * page
    return Finding("reclaim_stalls", f"{(stalls or 0) + (compact or 0)} allocation stalls in direct reclaim or "
                   "compaction", amount, "warning", "high", ev, [SRC_STALL])


RULES = [reserve_hides_free, huge_blocks_scarce, reclaim_stalls]
