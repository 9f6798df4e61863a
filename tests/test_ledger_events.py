"""eBPF results (spark_memprobe/probe_report.py) as ledger inputs: files named in the page-cache rows,
CUDA bytes per kind in the shmem and driver rows, and nothing invented when a probe did not run."""
from __future__ import annotations

import os

from fixture_loader import FIXTURES, load_step
from spark_memprobe.probe_report import CudaOutstanding, PageCacheFile, ProbeReport
from spark_memprobe.ledger import LedgerInputs, build_ledger, from_probe_report

STEP07 = os.path.join(FIXTURES, "h100-cgroup2-scenario", "steps", "07-managed-1GiB-host-touched")
GiB = 1 << 30


def report(**kw) -> ProbeReport:
    return ProbeReport(started_mono_ns=0, ended_mono_ns=1, **kw)


def test_probe_report_becomes_inputs():
    r = report(page_cache=[PageCacheFile(cgroup_id=7, dev_major=254, dev_minor=0, inode=12, added_pages=10,
                                         removed_pages=2, path="/data/a.bin"),
                           PageCacheFile(cgroup_id=0, dev_major=254, dev_minor=0, inode=13, added_pages=5,
                                         removed_pages=0),
                           PageCacheFile(cgroup_id=7, dev_major=254, dev_minor=0, inode=14, added_pages=3,
                                         removed_pages=3)],
               cuda=[CudaOutstanding(pid=437, kind="managed", outstanding_bytes=GiB, allocs=1, frees=0),
                     CudaOutstanding(pid=437, kind="host-pinned", outstanding_bytes=GiB, allocs=1, frees=0),
                     CudaOutstanding(pid=999, kind="device", outstanding_bytes=GiB, allocs=1, frees=0)],
               cgroup_paths={7: "/memprobe_fixture"})
    i = from_probe_report(r, [437])
    assert [(p.cgroup, p.bytes, p.dev, p.inode, p.path) for p in i.page_cache] == [
        ("/memprobe_fixture", 8 * 4096, "fe:00", 12, "/data/a.bin"), (None, 5 * 4096, "fe:00", 13, None)]
    assert i.cuda_bytes == {"managed": GiB, "host-pinned": GiB}          # pid 999 is not the target


def test_probes_that_did_not_run_stay_none():
    i = from_probe_report(report(), [437])
    assert i.page_cache is None and i.cuda_bytes is None
    host, s = load_step(STEP07, "memprobe_fixture")
    lg = build_ledger(host, s, i)
    assert not [r for r in lg.rows if r.key.startswith("page_cache.file") or r.key == "shmem.pinned"]


def test_ebpf_names_files_and_narrows_the_managed_estimate():
    host, s = load_step(STEP07, "memprobe_fixture")
    r = report(page_cache=[PageCacheFile(cgroup_id=7, dev_major=254, dev_minor=0, inode=12,
                                         added_pages=786432, removed_pages=0, path="/root/big.bin")],
               cuda=[CudaOutstanding(pid=437, kind="managed", outstanding_bytes=GiB, allocs=1, frees=0),
                     CudaOutstanding(pid=437, kind="host-pinned", outstanding_bytes=GiB, allocs=1, frees=0)],
               cgroup_paths={7: "/memprobe_fixture"})
    lg = build_ledger(host, s, from_probe_report(r, [437]))
    f = next(r for r in lg.rows if r.key == "page_cache.file0")
    assert f.label == "/root/big.bin" and f.cells["current"] == 3 * GiB
    assert lg.cell("shmem.pinned", "current") == GiB
    m = lg.finding("managed_double_view")
    assert m.bytes == GiB and m.confidence == "high"           # min(unitemised kernel, file_mapped, eBPF 1 GiB)
    assert lg.finding("pinned_shmem").confidence == "high"


def test_inputs_default_is_not_measured():
    assert LedgerInputs().page_cache is None and LedgerInputs().cuda_bytes is None


def test_hybrid_hosts_attribute_page_cache_by_the_adding_process():
    """On hybrid hosts the probes' owner is a cgroup v2 id ("/" here) that names no memory cgroup;
    with adder_cgroup the files whose last adder is a target process go to the target."""
    r = report(page_cache=[PageCacheFile(cgroup_id=1, dev_major=254, dev_minor=0, inode=12, added_pages=4,
                                         removed_pages=0, last_pid=437, path="/a"),
                           PageCacheFile(cgroup_id=1, dev_major=254, dev_minor=0, inode=13, added_pages=4,
                                         removed_pages=0, last_pid=1, path="/b")],
               cgroup_paths={1: "/"})
    assert [p.cgroup for p in from_probe_report(r, [437]).page_cache] == ["/", "/"]
    i = from_probe_report(r, [437], adder_cgroup="/memprobe-test")
    assert [(p.path, p.cgroup) for p in i.page_cache] == [("/a", "/memprobe-test"), ("/b", "/")]
    assert "by the process that added their pages" in i.notes[0]
