"""The ledger's kernel causes (issue 24): the reserve row, MemAvailable term by term, free memory
in 2 MiB blocks, and the three rules, on the zone files captured from the CI VM
(tests/fixtures/zones-x86-vm) with changes that model what the kernel does."""
from __future__ import annotations

import copy

from spark_memprobe.ledger import LedgerInputs, build_ledger
from spark_memprobe.samples import HostInfo, KernelMemory, PlatformProfile, Sample, Vmstat
from spark_memprobe.sources.procfs import read_meminfo, read_vmstat
from spark_memprobe.sources.zones import read_kernel_memory

from test_zones import FIXTURE, PAGE

GiB = 1 << 30


def host(platform="discrete"):
    return HostInfo(page_size=PAGE, platform=PlatformProfile(platform, ["test"]))


def sample(meminfo=None):
    return Sample(mono_ns=1, wall_ns=1, meminfo=meminfo or read_meminfo(FIXTURE), vmstat=read_vmstat(FIXTURE))


def kernel() -> KernelMemory:
    return read_kernel_memory(FIXTURE)


def raised(lg):
    return {f.rule: f for f in lg.findings}


def status(lg, rule):
    return next(r for r in lg.rules if r.rule == rule)


def test_reserve_row_and_terms_on_the_captured_host():
    lg = build_ledger(host(), sample(), LedgerInputs(kernel=kernel()))
    a = lg.mem_available
    assert a.difference_bytes == 0 and a.reserve_bytes == 133439488
    assert lg.cell("reserve", "host_used") == a.reserve_bytes
    col = lg.column("host_used")
    top = [r for r in lg.rows if r.parent is None and "host_used" in r.cells]
    assert sum(r.cells["host_used"] for r in top) - col.excess_bytes == col.total
    assert lg.free_in_2mib_blocks_bytes > 0
    assert "reserve_hides_free" not in raised(lg)          # 127 MiB: normal for a 24 GiB host
    assert not any("si_mem_available" in n for n in lg.notes)


def test_without_zoneinfo_there_is_no_reserve_row_and_the_rules_say_why():
    lg = build_ledger(host("integrated"), sample(), LedgerInputs())
    assert not any(r.key == "reserve" for r in lg.rows)
    assert lg.mem_available is None and lg.free_in_2mib_blocks_bytes is None
    assert status(lg, "reserve_hides_free").status == "silent"
    assert status(lg, "huge_blocks_scarce").status == "silent"
    assert status(lg, "reclaim_stalls").status == "silent"


def raise_high_watermarks(k: KernelMemory, extra: dict) -> KernelMemory:
    """What raising vm.min_free_kbytes does to the reserve (mm/page_alloc.c
    __setup_per_zone_wmarks raises every watermark; the reserve follows the high one). The low
    watermarks rise too in the kernel, which moves the 'kept' terms; they stay here so that the
    reserve's move is the only change."""
    k = copy.deepcopy(k)
    for z in k.zones:
        z.high_pages += extra.get(z.name, 0) // PAGE
    return k


def test_a_raised_min_free_kbytes_is_named_and_moves_the_reserve_row():
    """The GB10 report: raising min_free_kbytes cost about 6.2 GiB of MemAvailable; this VM's
    zones (2.9 + 3.4 GiB) hold 4.5 GiB of it."""
    base = build_ledger(host("integrated"), sample(), LedgerInputs(kernel=kernel()))
    k = raise_high_watermarks(kernel(), {"DMA32": 2 * GiB, "Normal": 5 * GiB // 2})
    mi = read_meminfo(FIXTURE)
    mi.bytes["MemAvailable"] -= 9 * GiB // 2            # what the kernel then prints
    lg = build_ledger(host("integrated"), sample(mi), LedgerInputs(kernel=k))
    assert lg.cell("reserve", "host_used") - base.cell("reserve", "host_used") == 9 * GiB // 2
    assert lg.mem_available.difference_bytes == 0
    f = raised(lg)["reserve_hides_free"]
    assert f.severity == "warning" and f.bytes == lg.mem_available.reserve_bytes
    assert [p.name for p in f.rows] == ["reserve"]
    assert any("min_free_kbytes" in e for e in f.evidence)
    # on a discrete host the same reserve is said, less loudly
    assert raised(build_ledger(host(), sample(mi), LedgerInputs(kernel=k)))["reserve_hides_free"].severity == "info"
    # a zone's reserve never exceeds what it manages
    capped = raise_high_watermarks(kernel(), {"Normal": 8 * GiB})
    assert build_ledger(host(), sample(), LedgerInputs(kernel=capped)).mem_available.reserve_bytes == \
        base.mem_available.reserve_bytes - 13495 * PAGE + 884736 * PAGE


def test_a_formula_that_does_not_match_the_kernel_is_said():
    mi = read_meminfo(FIXTURE)
    mi.bytes["MemAvailable"] += GiB
    lg = build_ledger(host(), sample(mi), LedgerInputs(kernel=kernel()))
    assert lg.mem_available.difference_bytes == GiB
    assert any("si_mem_available" in n for n in lg.notes)


def fragment(k: KernelMemory) -> KernelMemory:
    """Every free page of every zone in order-0 blocks: memory scattered by page cache."""
    k = copy.deepcopy(k)
    for z in k.zones:
        if z.free_blocks:
            z.free_blocks = [z.free_pages] + [0] * (len(z.free_blocks) - 1)
    return k


def test_fragmented_free_memory_on_an_integrated_host():
    lg = build_ledger(host("integrated"), sample(), LedgerInputs(kernel=fragment(kernel())))
    assert lg.free_in_2mib_blocks_bytes == 0
    f = raised(lg)["huge_blocks_scarce"]
    assert f.severity == "warning" and "compact_memory" in " ".join(f.evidence)
    # the same free memory in large blocks (as after compaction) clears it
    assert "huge_blocks_scarce" not in raised(build_ledger(host("integrated"), sample(),
                                                           LedgerInputs(kernel=kernel())))
    # a discrete card's memory is not the host's free blocks
    assert status(build_ledger(host(), sample(), LedgerInputs(kernel=fragment(kernel()))),
                  "huge_blocks_scarce").status == "silent"


def test_direct_reclaim_stalls_since_a_second_ago():
    before = read_vmstat(FIXTURE)
    s = sample()
    s.vmstat = Vmstat(counters=dict(before.counters))
    for k, v in (("allocstall_normal", 3), ("compact_stall", 1), ("pgscan_direct", 5000), ("pgsteal_direct", 4000)):
        s.vmstat.counters[k] = before.counters[k] + v
    lg = build_ledger(host(), s, LedgerInputs(vmstat_before=before, vmstat_before_s=1.0))
    f = raised(lg)["reclaim_stalls"]
    assert f.bytes == 4000 * PAGE and "3 direct-reclaim stalls, 1 compaction stalls" in f.evidence[0]
    quiet = build_ledger(host(), sample(), LedgerInputs(vmstat_before=before, vmstat_before_s=1.0))
    assert status(quiet, "reclaim_stalls").status == "clear"
