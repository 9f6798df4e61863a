"""The ledger's kernel causes on a live kernel (the qemu tier, scripts/qemu/v2_tier.py): MemAvailable
by si_mem_available's formula, the reserve row after vm.min_free_kbytes is raised, and free memory
in 2 MiB blocks after fragmentation made on purpose and after compaction.

Two of them write vm.min_free_kbytes and vm.compact_memory, which must never happen on the host
that runs the suite (issue 24): besides the pure-v2 check of every test in tests/v2 (skip, or fail
inside the tier) they run only where MEMPROBE_REQUIRE_V2=1, which the qemu tiers set in their guest.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from spark_memprobe.ledger import LedgerInputs, build_ledger
from spark_memprobe.ledger.available import decompose_mem_available, free_in_blocks_bytes, reserve_pages
from spark_memprobe.ledger.rules_kernel import HUGE_AVAILABLE, HUGE_SCARCE
from spark_memprobe.samples import HostInfo, PlatformProfile, Sample
from spark_memprobe.sources.procfs import read_meminfo, read_vmstat
from spark_memprobe.sources.zones import read_kernel_memory, read_zoneinfo
from v2cg import MiB, PAGE, required

pytestmark = pytest.mark.cgroup_v2

# 2 MiB as a buddy order of this page size (9 at 4 KiB pages), worked out here, not in ledger/
ORDER_2MIB = ((2 * MiB) // PAGE).bit_length() - 1
# fs/proc/meminfo.c reads the free-page counter twice (si_meminfo, then si_mem_available) and the
# LRU counters once more: a page allocated or freed during the read shows as a difference
FEW_PAGES = 8
# what a quiet guest's free memory moves by between two readings a few milliseconds apart
QUIET = MiB
RAISE_KB = 64 * 1024                 # vm.min_free_kbytes is in KiB
REGION = 512 * MiB                   # of the guest's 2 GiB


@pytest.fixture
def guest(v2root):
    """Only inside a qemu tier's guest: these tests change the kernel's global state."""
    if not required():
        pytest.skip("writes vm.min_free_kbytes and vm.compact_memory: runs only inside the qemu tier "
                    "(MEMPROBE_REQUIRE_V2=1, scripts/qemu/v2_tier.py), never on the host running the suite")


def write_vm(name: str, value: int) -> None:
    fd = os.open(f"/proc/sys/vm/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def read_vm(name: str) -> int:
    with open(f"/proc/sys/vm/{name}") as f:
        return int(f.read())


def decomposed(tries: int = 20):
    """(zones, parts) from a reading where the formula lands within FEW_PAGES of the kernel's
    MemAvailable; fails with every difference seen."""
    diffs = []
    for _ in range(tries):
        zones = read_zoneinfo()
        parts = decompose_mem_available(read_meminfo(), zones, PAGE)
        diffs.append(parts.difference_bytes // PAGE)
        if abs(diffs[-1]) <= FEW_PAGES:
            return zones, parts
        time.sleep(0.05)
    pytest.fail(f"kernel's MemAvailable minus computed, in pages, on {tries} readings: {diffs}", pytrace=False)


def ledger(kernel, meminfo):
    host = HostInfo(page_size=PAGE, platform=PlatformProfile("integrated", ["test: GPU memory is RAM"]))
    s = Sample(mono_ns=time.monotonic_ns(), wall_ns=time.time_ns(), meminfo=meminfo, vmstat=read_vmstat())
    return build_ledger(host, s, LedgerInputs(kernel=kernel))


def buddy_high() -> tuple[dict, int]:
    """/proc/buddyinfo parsed here ('Node 0, zone   Normal   n0 n1 ...', mm/vmstat.c
    frag_show_print): (the counts of blocks of 2 MiB and larger per zone, their bytes)."""
    with open("/proc/buddyinfo") as f:
        lines = f.read().splitlines()
    high = {tuple(ln.split()[:4]): [int(n) for n in ln.split()[4 + ORDER_2MIB:]] for ln in lines}
    return high, sum(n * (PAGE << (ORDER_2MIB + i)) for counts in high.values() for i, n in enumerate(counts))


def huge_reading(tries: int = 20):
    """(kernel memory, meminfo, free bytes in 2 MiB blocks) read at an instant when the blocks of
    2 MiB and larger in /proc/buddyinfo did not change around the reading: the ledger's figure
    must then be exactly what buddyinfo says."""
    for _ in range(tries):
        before, want = buddy_high()
        k, mi = read_kernel_memory(), read_meminfo()
        after, _ = buddy_high()
        if before == after:
            got = free_in_blocks_bytes(k.zones, PAGE)
            assert got == want, f"free in 2 MiB blocks: {got} B, /proc/buddyinfo says {want} B"
            return k, mi, got
    pytest.fail(f"/proc/buddyinfo's large blocks changed during each of {tries} readings", pytrace=False)


def test_memavailable_reproduced_live(v2root):
    """si_mem_available's formula gives this kernel's MemAvailable (Debian's 6.1 in the tier)
    within FEW_PAGES, every term filled."""
    _, parts = decomposed()
    assert parts.reserve_bytes > 0 and parts.low_watermarks_bytes > 0
    assert parts.free_bytes > parts.reserve_bytes and parts.page_cache_bytes > 0
    assert parts.reclaimable_kernel_bytes > 0


def test_min_free_kbytes_moves_the_reserve_by_the_watermark_change(guest):
    """Raising vm.min_free_kbytes raises every zone's watermarks (mm/page_alloc.c
    __setup_per_zone_wmarks): the reserve row grows by each zone's high-watermark change, capped
    at what the zone manages; MemAvailable falls by as much (and by what si_mem_available keeps
    back, where that follows the low watermarks), MemFree does not move."""
    old = read_vm("min_free_kbytes")
    z0, p0 = decomposed()
    m0, lg0 = read_meminfo(), ledger(read_kernel_memory(), read_meminfo())
    try:
        write_vm("min_free_kbytes", old + RAISE_KB)
        z1, p1 = decomposed()
        m1, lg1 = read_meminfo(), ledger(read_kernel_memory(), read_meminfo())
    finally:
        write_vm("min_free_kbytes", old)
    assert read_vm("min_free_kbytes") == old
    assert [(z.node, z.name) for z in z0] == [(z.node, z.name) for z in z1]
    # lowmem reserves follow managed pages and lowmem_reserve_ratio only
    assert [z.protection_pages for z in z0] == [z.protection_pages for z in z1]

    def unboosted(z, wmark):
        return getattr(z, wmark) - (z.boost_pages or 0)
    # the raise is shared among the zones by managed pages, each share rounded down
    dmin = sum(unboosted(b, "min_pages") - unboosted(a, "min_pages") for a, b in zip(z0, z1))
    assert 0 <= RAISE_KB * 1024 // PAGE - dmin <= len(z0), f"min watermarks rose {dmin} pages"
    want = 0
    for i, (a, b) in enumerate(zip(z0, z1)):
        reserve = unboosted(a, "high_pages") + max(a.protection_pages[i:], default=0)
        room = a.managed_pages - min(a.managed_pages, reserve)
        want += min(unboosted(b, "high_pages") - unboosted(a, "high_pages"), room)
    assert want > 0
    assert reserve_pages(z1) - reserve_pages(z0) == want
    assert p1.reserve_bytes - p0.reserve_bytes == want * PAGE
    assert lg1.cell("reserve", "host_used") - lg0.cell("reserve", "host_used") == want * PAGE
    # MemAvailable falls by the reserve's growth and by that of what si_mem_available keeps back
    # of page cache and reclaimable kernel memory, min(half of each, the sum of the low
    # watermarks): it grows with the low watermarks where half is above their sum (measured: 0
    # with the tests of this file alone, 15.5 MiB of page cache after the fentry test's)
    kept = (p1.page_cache_kept_bytes - p0.page_cache_kept_bytes
            + p1.reclaimable_kernel_kept_bytes - p0.reclaimable_kernel_kept_bytes)
    fell = m0.get("MemAvailable") - m1.get("MemAvailable")
    assert abs(fell - want * PAGE - kept) <= QUIET, (
        f"MemAvailable fell {fell / MiB:.2f} MiB, reserve rose {want * PAGE / MiB:.2f} MiB, kept {kept / MiB:.2f} MiB")
    assert abs(m1.get("MemFree") - m0.get("MemFree")) <= QUIET


# One page of each pair of the region is freed, so every freed page's buddy stays in use. Which
# page of the pair is random: once pageblocks gave it nothing, compaction's free scanner looks at
# every 32nd page only (mm/compaction.c isolate_freepages, stride up to COMPACT_CLUSTER_MAX), so
# with exactly every second page freed it can meet only pages in use and compact nothing
# (measured in the tier's 6.1 guest: the even pages freed, compaction added 0 MiB in 2 MiB
# blocks; the odd ones, 226 MiB).
FRAGMENTER = r"""
import mmap, random, sys
n, page = int(sys.argv[1]), mmap.PAGESIZE
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_NOHUGEPAGE)
m.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))   # Linux 5.14; not named by Python 3.11
print("touched", flush=True)
sys.stdin.readline()
pick = random.Random(24)
for off in range(0, n, 2 * page):
    m.madvise(mmap.MADV_DONTNEED, off + page * pick.getrandbits(1), page)
print("holes", flush=True)
sys.stdin.readline()
"""


def step(p: subprocess.Popen, word: str) -> None:
    p.stdin.write("\n")
    p.stdin.flush()
    line = p.stdout.readline().strip()
    assert line == word, f"fragmenter said {line!r}, exit status {p.poll()}"


def test_fragmentation_lowers_free_2mib_blocks_and_compaction_raises_it(guest):
    """A child maps REGION of 4 KiB pages (MADV_NOHUGEPAGE), touches it, then frees half of its
    pages in holes of one page: free memory grows by half the region, free memory in 2 MiB blocks
    does not; writing vm.compact_memory moves the child's pages together and the figure rises.
    At each step the ledger's figure is exactly what /proc/buddyinfo says and huge_blocks_scarce
    follows its thresholds."""
    p = subprocess.Popen([sys.executable, "-I", "-c", FRAGMENTER, str(REGION)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        assert p.stdout.readline().strip() == "touched"
        seen.append(huge_reading())
        step(p, "holes")
        seen.append(huge_reading())
        write_vm("compact_memory", 1)
        seen.append(huge_reading())
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()
    for k, mi, huge in seen:
        lg = ledger(k, mi)
        assert lg.free_in_2mib_blocks_bytes == huge
        # the guest has 2 GiB, less than the 4 GiB of MemAvailable beyond the 2 MiB blocks that
        # the rule needs: here it must be checked and clear
        scarce = huge < HUGE_SCARCE and mi.get("MemAvailable") - huge >= HUGE_AVAILABLE
        assert (lg.finding("huge_blocks_scarce") is not None) == scarce
        assert lg.rule("huge_blocks_scarce").status == ("raised" if scarce else "clear")
    (_, m1, h1), (k2, m2, h2), (_, _, h3) = seen
    # freed pages first go to the per-CPU lists, which count as neither free nor in buddyinfo;
    # they hold less than the low watermark (mm/page_alloc.c zone_highsize: low / (CPUs + 1) each)
    low = sum(z.low_pages for z in k2.zones) * PAGE
    grew = m2.get("MemFree") - m1.get("MemFree")
    assert REGION // 2 - low - QUIET <= grew <= REGION // 2 + QUIET, f"MemFree grew {grew / MiB:.1f} MiB"
    assert h2 - h1 <= REGION // 32, f"free in 2 MiB blocks grew {(h2 - h1) / MiB:.1f} MiB"
    assert h3 - h2 >= REGION // 8, f"compaction added {(h3 - h2) / MiB:.1f} MiB in 2 MiB blocks"
