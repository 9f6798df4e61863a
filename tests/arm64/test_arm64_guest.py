"""memprobe on arm64, as the arm64 qemu tier runs it (scripts/qemu/arm64_tier.py): the
architecture and page size the code sees, the native sampler built by `pip install .`, doctor
naming the architecture, and the page-based fields of both samplers scaling with the page size
(4 KiB in the tier's 6.1 boot, 16 KiB in its 6.12 arm64-16k boot).

Skipped on other hosts; MEMPROBE_REQUIRE_ARM64=1 (set by the tier) turns a skip into a failure.
MEMPROBE_ARM64_PAGE_SIZE, when set, is the page size the booted kernel must have."""
from __future__ import annotations

import json
import mmap
import os
import platform
import subprocess
import sys

import pytest

import v2cg

pytestmark = pytest.mark.arm64

PAGE = os.sysconf("SC_PAGE_SIZE")
EM_AARCH64 = 183                  # ELF e_machine (include/uapi/linux/elf-em.h)


def test_architecture_and_page_size(arm64_host):
    """The page size os.sysconf gives, the kernel's own KernelPageSize, and HostInfo agree (and
    match the kernel the tier booted)."""
    from spark_memprobe.sources.platform import read_host_info
    want = os.environ.get("MEMPROBE_ARM64_PAGE_SIZE")
    if want:
        assert PAGE == int(want), f"booted for {want}-byte pages, sysconf says {PAGE}"
    assert mmap.PAGESIZE == PAGE
    with open("/proc/self/smaps") as f:
        kps = {int(line.split()[1]) for line in f if line.startswith("KernelPageSize:")}
    assert kps == {PAGE // 1024}, kps
    h = read_host_info()
    assert (h.machine, h.page_size) == ("aarch64", PAGE)


def test_pip_install_built_the_native_sampler_for_arm64(arm64_host):
    """The package is the one `pip install .` put into site-packages (not the source tree), with
    the cffi extension compiled for aarch64 by the guest's gcc."""
    import spark_memprobe
    from spark_memprobe.sources.sampler import native_available
    if os.environ.get("MEMPROBE_REQUIRE_ARM64") == "1":
        assert "site-packages" in spark_memprobe.__file__, spark_memprobe.__file__
    ok, why = native_available()
    assert ok, why
    from spark_memprobe import _native
    with open(_native.__file__, "rb") as f:
        hdr = f.read(20)
    assert hdr[:4] == b"\x7fELF" and int.from_bytes(hdr[18:20], "little") == EM_AARCH64, _native.__file__


def test_doctor_names_the_architecture_and_what_probes_need(arm64_host):
    # cwd /: `python -m` puts the working directory first on sys.path, and the source tree
    # there has no compiled extension (the installed package has)
    r = subprocess.run([sys.executable, "-m", "spark_memprobe.cli", "doctor", "--json"], cwd="/",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    arch = checks["architecture"]
    assert arch["ok"] and arch["detail"].startswith(f"aarch64 (arm64), {PAGE // 1024} KiB pages"), arch
    assert "fault_addresses: none on aarch64" in arch["detail"], arch
    assert "uvm: fentry on nvidia_uvm" in arch["detail"], arch
    assert checks["native sampler"]["ok"], checks["native sampler"]
    assert checks["cgroups"]["ok"] and "layout v2" in checks["cgroups"]["detail"], checks["cgroups"]
    probes = checks["eBPF probes"]
    if probes["ok"]:
        assert "faults (perf)" in probes["detail"] and "fault_addresses (" not in probes["detail"], probes
        assert "no exceptions:page_fault_user on aarch64" in probes["detail"], probes


# A worker that maps and touches a known number of pages. MADV_NOHUGEPAGE: Debian's arm64
# kernels default to THP "always", which would fold 2 MiB runs into one huge page.
TOUCH = r"""
import mmap, sys
print("ready", flush=True)
n = int(sys.stdin.readline())
m = mmap.mmap(-1, n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_NOHUGEPAGE)
for off in range(0, n * mmap.PAGESIZE, mmap.PAGESIZE):
    m[off] = 1
print("touched", flush=True)
sys.stdin.readline()
"""

# meminfo fields (kB) and the vmstat counters (pages) they are printed from, read at the same
# instant by one sample: fs/proc/meminfo.c prints global_node_page_state(X) << (PAGE_SHIFT - 10)
PAIRS = [("AnonPages", "nr_anon_pages"), ("Mapped", "nr_mapped"), ("Shmem", "nr_shmem"),
         ("PageTables", "nr_page_table_pages")]


def test_page_based_fields_scale_with_the_page_size(v2_cgroups):
    """N pages touched in a fresh cgroup: RssAnon, smaps_rollup Anonymous and memory.stat anon
    grow by N x the page size, vmstat nr_anon_pages by N pages, every RSS figure is a whole
    number of pages, and meminfo bytes = vmstat pages x the page size HostInfo records; with
    both samplers. A reader that assumed 4096-byte pages is off by 4x at 16 KiB pages."""
    from spark_memprobe.ledger.build import build_ledger
    from spark_memprobe.sources.native import NativeSampler
    from spark_memprobe.sources.platform import read_host_info
    from spark_memprobe.sources.sampler import PureSampler

    host = read_host_info()
    assert host.page_size == PAGE
    n = 4096                                   # 16 MiB at 4 KiB pages, 64 MiB at 16 KiB
    cg = v2_cgroups.make()
    p = subprocess.Popen([sys.executable, "-c", TOUCH], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        cg.add(p.pid)
        kw = dict(cgroup_root=cg.root, cgroup=cg.rel)
        with PureSampler(**kw) as pure, NativeSampler(**kw) as native:
            samplers = [pure, native]
            before = [s.sample(detail=True) for s in samplers]
            p.stdin.write(f"{n}\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "touched"
            # memory.stat and vmstat are flushed from per-CPU batches (docs/facts.md#f-stat-lazy)
            slack_pages = 128 * (os.cpu_count() or 1)
            for smp, b in zip(samplers, before):
                def check(s, b=b, kind=smp.kind):
                    errs = []
                    proc = next((x for x in s.processes if x.pid == p.pid), None)
                    bproc = next((x for x in b.processes if x.pid == p.pid), None)
                    if proc is None or bproc is None or s.cgroup is None or s.vmstat is None:
                        return [f"{kind}: nothing read: {s.notes}"]
                    errs.append(v2cg.within(proc.rss_anon_bytes - bproc.rss_anon_bytes, n * PAGE,
                                            f"{kind} RssAnon delta", tol=32 * PAGE))
                    sm, bsm = proc.smaps_rollup or {}, bproc.smaps_rollup or {}
                    errs.append(v2cg.within(sm.get("Anonymous", 0) - bsm.get("Anonymous", 0), n * PAGE,
                                            f"{kind} smaps_rollup Anonymous delta", tol=32 * PAGE))
                    errs.append(v2cg.within(s.cgroup.stat_get("anon") - b.cgroup.stat_get("anon"), n * PAGE,
                                            f"{kind} memory.stat anon delta", tol=slack_pages * PAGE))
                    d = s.vmstat.counters["nr_anon_pages"] - b.vmstat.counters["nr_anon_pages"]
                    errs.append(v2cg.within(d, n, f"{kind} vmstat nr_anon_pages delta (pages)", tol=slack_pages))
                    for name, v in [("VmRSS", proc.rss_bytes), ("RssAnon", proc.rss_anon_bytes),
                                    ("RssFile", proc.rss_file_bytes), ("RssShmem", proc.rss_shmem_bytes),
                                    ("smaps Rss", sm.get("Rss")), ("smaps Anonymous", sm.get("Anonymous"))]:
                        if v is None or v % PAGE:
                            errs.append(f"{kind} {name} = {v}: not a whole number of {PAGE}-byte pages")
                    for mi, vm in PAIRS:
                        got, pages = s.meminfo.get(mi), s.vmstat.counters.get(vm)
                        if got is None or pages is None:
                            errs.append(f"{kind}: {mi} or {vm} not read")
                        elif abs(got - pages * host.page_size) > 64 * PAGE:
                            errs.append(f"{kind}: meminfo {mi} {got} bytes but vmstat {vm} {pages} pages "
                                        f"x {host.page_size} = {pages * host.page_size}")
                    return errs
                s = v2cg.settle(lambda smp=smp: smp.sample(detail=True), check)
                assert build_ledger(host, s).page_size == PAGE
    finally:
        p.kill()
        p.wait()
