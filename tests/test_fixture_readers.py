"""Readers on the real H100 capture trees: every field lands where the kernel put it."""
import os

import pytest

from fixture_loader import steps, step_pids
from spark_memprobe.sources.cgroupfs import CgroupFS, detect_layout
from spark_memprobe.sources.procfs import (read_meminfo, read_pid_status, read_smaps_rollup,
                                           read_vmstat)
from spark_memprobe.sources.sampler import PureSampler

CG2 = steps("h100-cgroup2-scenario")
STEP07 = [s for s in CG2 if "07-managed" in s][0]


def test_layout_of_fixture():
    lay = detect_layout(os.path.join(STEP07, "cgroup"))
    assert (lay.mode, lay.memory_version) == ("v2", 2)


def test_meminfo_every_field_in_bytes():
    m = read_meminfo(os.path.join(STEP07, "proc"))
    lines = open(os.path.join(STEP07, "proc", "meminfo")).read().splitlines()
    assert len(m.bytes) + len(m.counts) == len(lines)
    assert m.get("MemTotal") == 131981020 * 1024
    assert m.get("Mapped") == 5483544 * 1024
    assert m.counts == {"HugePages_Total": 0, "HugePages_Free": 0, "HugePages_Rsvd": 0, "HugePages_Surp": 0}
    assert m.get("NoSuchField") is None


def test_vmstat_every_counter():
    v = read_vmstat(os.path.join(STEP07, "proc"))
    assert len(v.counters) == len(open(os.path.join(STEP07, "proc", "vmstat")).read().splitlines())
    assert v.counters["nr_mapped"] == 1370886 and v.counters["pgfault"] == 1258284


def test_status_and_smaps_rollup():
    p = read_pid_status(437, os.path.join(STEP07, "proc"))
    assert (p.rss_bytes, p.rss_anon_bytes, p.rss_file_bytes, p.rss_shmem_bytes, p.swap_bytes) == (
        5640788 * 1024, 164280 * 1024, 4419740 * 1024, 1056768 * 1024, 0)
    assert p.comm == "python3" and p.ns_pids == [437]
    sr = read_smaps_rollup(437, os.path.join(STEP07, "proc"))
    assert sr["Rss"] == 5640788 * 1024 and sr["FilePmdMapped"] == 3104768 * 1024 and len(sr) == 22


def test_cgroup_v2_every_file():
    cg = CgroupFS(os.path.join(STEP07, "cgroup")).read("memprobe_fixture", notes=(notes := []))
    assert cg.version == 2 and cg.path == "/memprobe_fixture"
    assert cg.current_bytes == 6061768704 and cg.peak_bytes == 6061768704
    assert cg.max_bytes == "max" and cg.high_bytes == "max" and cg.swap_current_bytes == 0
    assert cg.stat["kernel"] == 1087737856 and cg.stat["file_mapped"] == 5518303232
    assert len(cg.stat) == len(open(os.path.join(STEP07, "cgroup", "memprobe_fixture", "memory.stat")).readlines())
    assert cg.events == {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0, "oom_group_kill": 0}
    assert cg.numa_stat["file"] == {0: 4811362304}
    assert cg.pressure.some_avg10 == 0.0 and cg.pressure.full_total_us == 0
    # cgroup.procs was not captured in this scenario: a note, not an invented empty list
    assert cg.procs is None and any("cgroup.procs" in n for n in notes)


@pytest.mark.parametrize("step", CG2 + steps("h100-inference-scenario"), ids=os.path.basename)
def test_every_step_reads_without_notes(step):
    cgs = [d for d in os.listdir(os.path.join(step, "cgroup")) if os.path.isdir(os.path.join(step, "cgroup", d))]
    for cg in cgs:
        with PureSampler(proc=os.path.join(step, "proc"), cgroup_root=os.path.join(step, "cgroup"),
                         cgroup=cg, pids=step_pids(step)) as smp:
            s = smp.sample()
        assert s.notes == [] and s.meminfo and s.vmstat and s.cgroup.stat
        assert s.cgroup.current_bytes == int(open(os.path.join(step, "cgroup", cg, "memory.current")).read())
        for p in s.processes:
            assert p.rss_bytes is not None


# -- a hybrid host (v1 memory controller + empty cgroup2 mount), captured on the CI VM --
HYB = os.path.join(os.path.dirname(__file__), "fixtures", "hybrid-v1-vm")
HYB_CG = [d for d in os.listdir(os.path.join(HYB, "cgroup", "memory")) if d.startswith("memprobe-test")][0]


def test_hybrid_layout():
    lay = detect_layout(os.path.join(HYB, "cgroup"))
    assert (lay.mode, lay.memory_version) == ("hybrid", 1)
    assert lay.v1_memory_root.endswith("cgroup/memory") and lay.v2_root.endswith("cgroup/unified")


def test_v1_mapped_onto_v2_names():
    cg = CgroupFS(os.path.join(HYB, "cgroup")).read(HYB_CG, notes=(notes := []))
    raw = {}
    for line in open(os.path.join(HYB, "cgroup", "memory", HYB_CG, "memory.stat")):
        k, v = line.split()
        raw[k] = int(v)
    assert cg.version == 1 and notes == []
    assert cg.current_bytes == int(open(os.path.join(HYB, "cgroup", "memory", HYB_CG, "memory.usage_in_bytes")).read())
    assert cg.max_bytes == "max"                       # 9223372036854771712 means no limit
    assert cg.stat["anon"] == raw["total_rss"] and cg.stat["file"] == raw["total_cache"]
    assert cg.stat["file_mapped"] == raw["total_mapped_file"]
    assert cg.stat["kernel"] == int(open(os.path.join(HYB, "cgroup", "memory", HYB_CG, "memory.kmem.usage_in_bytes")).read())
    assert cg.swap_current_bytes == raw["total_swap"]
    assert cg.v1_stat == raw
    assert cg.events == {"max": 0, "oom_kill": 0}
    # v2-only: never pretended on v1
    assert cg.high_bytes is None and cg.pressure is None and cg.numa_stat is None
    assert "slab" not in cg.stat and "sock" not in cg.stat
    # the workload: 64 MiB anonymous and 64 MiB of a fresh file
    assert cg.stat["anon"] >= 64 << 20 and cg.stat["file"] >= 64 << 20
