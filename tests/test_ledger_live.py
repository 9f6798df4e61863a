"""Live: a workload of known size in a throwaway memory cgroup on this machine, read by the real
sampler, must land in the right ledger rows. Works on whichever hierarchy holds the memory controller (v1 on these hybrid VMs)."""
from __future__ import annotations

import os

import pytest

from livecg import MiB, fresh_file, fstype, resident_bytes
from spark_memprobe.ledger import build_ledger, from_probe_report
from spark_memprobe.samples import HostInfo, PlatformProfile
from spark_memprobe.sources.sampler import PureSampler

pytestmark = pytest.mark.live

FILE_MIB, ANON_MIB = 160, 192


@pytest.fixture
def cgroup(live_cgroup):
    return live_cgroup


def test_live_file_and_anon_land_in_their_rows(cgroup, tmp_path):
    # the qemu v2 tier's /tmp is a tmpfs; it hands the tests a disk-backed folder (docs/testing.md)
    d = os.environ.get("MEMPROBE_V2_SCRATCH") or str(tmp_path)
    if fstype(d) in ("tmpfs", "ramfs"):
        pytest.skip(f"{d} is on {fstype(d)}: its pages would be shmem, not page cache")
    path = fresh_file(d, FILE_MIB * MiB)      # written from here, then dropped from the page cache
    try:
        cgroup.start_child()
        cgroup.do(f"read {path}")             # first touch: the pages are charged to the test cgroup
        cgroup.do(f"anon {ANON_MIB * MiB}")
        with PureSampler(cgroup=cgroup.path, version=cgroup.version) as smp:
            s = smp.sample(detail=True)
        host = HostInfo(page_size=os.sysconf("SC_PAGE_SIZE"), platform=PlatformProfile("no-gpu", ["live test"]))
        lg = build_ledger(host, s)
    finally:
        os.unlink(path)
    pc, anon = lg.cell("page_cache", "current"), lg.cell("anon", "current")
    assert abs(pc - FILE_MIB * MiB) <= 0.02 * FILE_MIB * MiB, pc
    assert abs(anon - ANON_MIB * MiB) <= 0.02 * ANON_MIB * MiB, anon
    # the fresh file's pages are not mapped: the file was read(), not mmap()ed
    assert lg.cell("page_cache", "host_nofree") == pc
    # RSS sees the anonymous pages too (the child touched every page)
    assert lg.cell("anon", "rss") >= ANON_MIB * MiB * 0.98
    top = [r for r in lg.rows if r.parent is None]
    for c in lg.columns:
        cells = [r.cells[c.key] for r in top if c.key in r.cells]
        if c.total is not None and None not in cells:
            assert sum(cells) - c.excess_bytes == c.total, c.key
    assert lg.column("current").total >= pc + anon


@pytest.mark.bpf
def test_live_page_cache_row_names_the_file(cgroup, tmp_path):
    """With eBPF page-cache ownership (filemap tracepoints through bcc), the page-cache row names the
    file the target read, with its bytes."""
    from spark_memprobe.sources.bpf.session import ProbeOptions, ProbesUnavailable, ProbeSession
    d = os.environ.get("MEMPROBE_V2_SCRATCH") or str(tmp_path)
    if fstype(d) in ("tmpfs", "ramfs"):
        pytest.skip(f"{d} is on {fstype(d)}: its pages would be shmem, not page cache")
    path = fresh_file(d, FILE_MIB * MiB)
    try:
        pid = cgroup.start_child()
        opts = ProbeOptions(faults=False, fault_addresses=False, memcg=False, cuda=False, uvm=False,
                            pagecache=True, cgroup=cgroup.path, scan_dirs=[d])
        try:
            with ProbeSession(opts) as probes:
                if not any(st.name == "pagecache" and st.chosen for st in probes.statuses):
                    pytest.skip("eBPF page-cache probe not attached: " +
                                "; ".join(f"{st.name}: {st.reason}" for st in probes.statuses))
                before = resident_bytes(path)
                cgroup.do(f"read {path}")
                probes.poll()
                report = probes.collect()
                brought_in = resident_bytes(path) - before     # the kernel's answer (mincore)
        except ProbesUnavailable as e:
            pytest.skip(f"eBPF unavailable here: {e}")
        with PureSampler(cgroup=cgroup.path, version=cgroup.version) as smp:
            s = smp.sample(detail=True)
    finally:
        os.unlink(path)
    # on a hybrid host the probes key page cache by cgroup v2 id; the v1 memory cgroup is found
    # through the process that added the pages
    hybrid = smp.cgfs.layout.mode == "hybrid"
    inputs = from_probe_report(report, [pid], adder_cgroup=cgroup.path if hybrid else None)
    host = HostInfo(page_size=os.sysconf("SC_PAGE_SIZE"), platform=PlatformProfile("no-gpu", ["live test"]))
    lg = build_ledger(host, s, inputs)
    files = [r for r in lg.rows if r.key.startswith("page_cache.file")]
    assert files and files[0].label == path, [r.label for r in files]
    # the read brought the file in; what reclaim or a page left from writing changed is in both
    assert brought_in >= 0.9 * FILE_MIB * MiB, brought_in
    assert abs(files[0].cells["current"] - brought_in) <= 0.01 * FILE_MIB * MiB, (files[0].cells["current"], brought_in)
