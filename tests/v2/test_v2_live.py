"""The live v2 readers on a real pure cgroup v2 kernel (the qemu tier, scripts/qemu/v2_tier.py).

Each test makes throwaway cgroups under the v2 root, puts a worker process in them that
allocates known sizes, and checks what BOTH samplers (PureSampler, NativeSampler) read:
memory.current, memory.stat, memory.peak, memory.events, process RSS, hierarchy, a cgroup
removed while sampled, and native vs pure parity. On hosts that are not pure cgroup v2 with
the memory controller they skip (and fail inside the tier, where MEMPROBE_REQUIRE_V2=1).
"""
from __future__ import annotations

import os

import pytest

from spark_memprobe.sources.cgroupfs import CgroupFS, parse_proc_cgroup
from v2cg import MiB, STAT_SLACK, fresh_file, remove_when_empty, settle, within

pytestmark = pytest.mark.cgroup_v2

N = 64 * MiB
Z = 0.02 * N          # tolerance where the expected change is zero: 2 % of N
# memory.current also counts the per-CPU charge stock (up to MEMCG_CHARGE_BATCH = 64 pages per
# CPU, mm/memcontrol.c): 0.5 MiB on 2 CPUs at 4 KiB pages, 2 MiB at 16 KiB (the arm64 tier)
CUR_TOL = 0.02 * N + STAT_SLACK


def sub(a, b):
    return None if a is None or b is None else a - b


def add(a, b):
    return None if a is None or b is None else a + b


def ge(a, b) -> bool:
    return a is not None and b is not None and a >= b


def proc_of(s, pid):
    return next((p for p in s.processes if p.pid == pid), None)


# CgroupSample field -> the kernel file it comes from (Documentation/admin-guide/cgroup-v2.rst),
# written out here rather than taken from sources/cgroupfs.py, so a wrong name there fails.
KERNEL_FILES = {"current_bytes": "memory.current", "peak_bytes": "memory.peak",
                "max_bytes": "memory.max", "high_bytes": "memory.high",
                "swap_current_bytes": "memory.swap.current", "stat": "memory.stat",
                "events": "memory.events", "pressure": "memory.pressure"}


def test_layout_and_every_v2_file_read(v2root, cgroups, worker_in, open_samplers):
    """CgroupFS finds the v2 hierarchy holding the memory controller and maps a process to
    its v2 cgroup; CgroupFS.read and both samplers fill every field whose kernel file exists
    on this kernel, with no notes."""
    fs = CgroupFS(v2root)
    assert (fs.layout.mode, fs.layout.v2_root, fs.layout.memory_version) == ("v2", v2root, 2)
    cg = cgroups.make()
    w = worker_in(cg)
    with open(f"/proc/{w.pid}/cgroup", "rb") as f:
        assert fs.memory_cgroup_of(parse_proc_cgroup(f.read())) == (2, cg.rel)
    present = [f for f, name in KERNEL_FILES.items() if os.path.exists(f"{cg.dir}/{name}")]
    assert {"current_bytes", "stat", "events"} <= set(present), present
    absent = [f"{cg.dir}/{name}" for f, name in KERNEL_FILES.items() if f not in present]

    def unexpected(notes):      # a note may only name a file this kernel does not have
        return [n for n in notes if not any(n.startswith(a + ":") for a in absent)]
    notes: list[str] = []
    full = fs.read(cg.rel, notes=notes)
    assert unexpected(notes) == []
    assert full.version == 2 and full.procs == [w.pid]
    assert full.max_bytes == "max" and full.high_bytes == "max"
    assert full.numa_stat and "anon" in full.numa_stat
    readings = [("CgroupFS.read", full)]
    for smp in open_samplers(cg):
        s = smp.sample()
        assert unexpected(s.notes) == [], smp.kind
        readings.append((smp.kind, s.cgroup))
    for who, c in readings:
        missing = [f"{f} ({KERNEL_FILES[f]})" for f in present if getattr(c, f) is None]
        assert not missing, f"{who} left fields of existing files empty: {missing}"
        assert {"anon", "file", "kernel", "shmem", "file_mapped"} <= c.stat.keys(), who
        assert {"max", "oom", "oom_kill"} <= c.events.keys(), who


def test_known_anon_and_page_cache(cgroups, worker_in, open_samplers, scratch):
    """N MiB anonymous, then an N MiB file read: current, stat anon/file, RSS and peak move
    by N within 2 %, as read by both samplers."""
    cg = cgroups.make()
    w = worker_in(cg)
    samplers = open_samplers(cg)
    for smp in samplers:
        assert smp.version == 2 and smp.pids == [w.pid], smp.kind
    base = {}
    for smp in samplers:
        s = smp.sample()
        c, p = s.cgroup, proc_of(s, w.pid)
        assert c is not None and p is not None, (smp.kind, s.notes)
        for v in (c.current_bytes, c.peak_bytes, c.stat_get("anon"), c.stat_get("file"),
                  p.rss_anon_bytes, p.rss_file_bytes):
            assert isinstance(v, int), (smp.kind, c, p, s.notes)
        assert c.events is not None and c.events.get("oom_kill") == 0, (smp.kind, c.events)
        base[smp.kind] = s

    # -- anonymous memory ---------------------------------------------------------------
    w.do(f"anon {N}")
    after_anon = {}
    for smp in samplers:
        b = base[smp.kind]

        def check(s, b=b, kind=smp.kind):
            c, p, bc, bp = s.cgroup, proc_of(s, w.pid), b.cgroup, proc_of(b, w.pid)
            if c is None or p is None:
                return [f"{kind}: no cgroup or process sample: {s.notes}"]
            return [within(sub(c.current_bytes, bc.current_bytes), N, what=f"{kind} memory.current delta", tol=CUR_TOL),
                    within(sub(c.stat_get("anon"), bc.stat_get("anon")), N, what=f"{kind} memory.stat anon delta"),
                    within(sub(c.stat_get("file"), bc.stat_get("file")), 0, what=f"{kind} memory.stat file delta", tol=Z),
                    within(sub(p.rss_anon_bytes, bp.rss_anon_bytes), N, what=f"{kind} RssAnon delta"),
                    None if ge(c.peak_bytes, c.current_bytes) else f"{kind}: peak {c.peak_bytes} < current {c.current_bytes}"]
        after_anon[smp.kind] = settle(smp.sample, check)

    # -- page cache of a known file, written outside the cgroup, read inside -----------
    path = fresh_file(scratch, N)
    w.do(f"read {path}")
    after_read = {}
    for smp in samplers:
        b = after_anon[smp.kind]

        def check(s, b=b, kind=smp.kind):
            c, p, bc, bp = s.cgroup, proc_of(s, w.pid), b.cgroup, proc_of(b, w.pid)
            if c is None or p is None:
                return [f"{kind}: no cgroup or process sample: {s.notes}"]
            active_inactive = sub(add(c.stat_get("active_file"), c.stat_get("inactive_file")),
                                  add(bc.stat_get("active_file"), bc.stat_get("inactive_file")))
            return [within(sub(c.current_bytes, bc.current_bytes), N, what=f"{kind} memory.current delta (read)",
                           tol=CUR_TOL),
                    within(sub(c.stat_get("file"), bc.stat_get("file")), N, what=f"{kind} memory.stat file delta"),
                    within(active_inactive, N, what=f"{kind} memory.stat active_file+inactive_file delta"),
                    within(sub(c.stat_get("anon"), bc.stat_get("anon")), 0, what=f"{kind} memory.stat anon delta (read)", tol=Z),
                    within(sub(p.rss_anon_bytes, bp.rss_anon_bytes), 0, what=f"{kind} RssAnon delta (read)", tol=Z),
                    within(sub(p.rss_file_bytes, bp.rss_file_bytes), 0, what=f"{kind} RssFile delta (read, not mapped)", tol=Z)]
        after_read[smp.kind] = settle(smp.sample, check)

    # -- free the anonymous memory: current drops, peak stays ------------------------------
    w.do("free")
    for smp in samplers:
        b = after_read[smp.kind]

        def check(s, b=b, kind=smp.kind):
            c, p, bc, bp = s.cgroup, proc_of(s, w.pid), b.cgroup, proc_of(b, w.pid)
            if c is None or p is None:
                return [f"{kind}: no cgroup or process sample: {s.notes}"]
            return [within(sub(bc.current_bytes, c.current_bytes), N, what=f"{kind} memory.current drop"),
                    within(sub(bc.stat_get("anon"), c.stat_get("anon")), N, what=f"{kind} memory.stat anon drop"),
                    within(sub(bp.rss_anon_bytes, p.rss_anon_bytes), N, what=f"{kind} RssAnon drop"),
                    None if ge(c.peak_bytes, bc.current_bytes) else
                    f"{kind}: memory.peak {c.peak_bytes} fell below an earlier current {bc.current_bytes}",
                    within(sub(c.peak_bytes, base[kind].cgroup.current_bytes), 2 * N, tol=0.03 * 2 * N,
                           what=f"{kind} memory.peak above the baseline")]
        settle(smp.sample, check)


def test_limit_events_and_oom_kill(cgroups, worker_in, open_samplers):
    """memory.max set low: the worker hits it and is OOM-killed; events max/oom/oom_kill,
    memory.max and memory.peak are read by both samplers."""
    limit = 16 * MiB
    cg = cgroups.make()
    cg.write("memory.max", str(limit))
    if os.path.exists(f"{cg.dir}/memory.swap.max"):
        cg.write("memory.swap.max", "0")       # with swap the worker would be swapped, not killed
    w = worker_in(cg)
    samplers = open_samplers(cg)
    for smp in samplers:
        c = smp.sample().cgroup
        assert c.max_bytes == limit and c.high_bytes == "max", (smp.kind, c)
        assert c.events is not None and {"max", "oom", "oom_kill"} <= c.events.keys(), (smp.kind, c.events)
        assert c.events["oom_kill"] == 0 and c.events["max"] == 0, (smp.kind, c.events)
    w.send(f"anon {4 * limit}")
    assert w.p.wait(timeout=60) == -9, "the worker should have been OOM-killed"
    for smp in samplers:
        def check(s, kind=smp.kind):
            c = s.cgroup
            if c is None or c.events is None:
                return [f"{kind}: no memory.events: {s.notes}"]
            return [None if c.events.get("max", 0) >= 1 else f"{kind}: events max {c.events.get('max')}",
                    None if c.events.get("oom", 0) >= 1 else f"{kind}: events oom {c.events.get('oom')}",
                    None if c.events.get("oom_kill") == 1 else f"{kind}: events oom_kill {c.events.get('oom_kill')}",
                    None if c.peak_bytes is not None and limit * 0.9 <= c.peak_bytes <= limit
                    else f"{kind}: memory.peak {c.peak_bytes}, want near the {limit} limit",
                    None if c.current_bytes is not None and c.current_bytes <= limit
                    else f"{kind}: memory.current {c.current_bytes} above memory.max"]
        s = settle(smp.sample, check)
        p = proc_of(s, w.pid)
        assert p is not None and p.rss_bytes is None, (smp.kind, p)   # gone: None, never 0
        assert any(str(w.pid) in n for n in s.notes), (smp.kind, s.notes)


def test_children_counted_in_parent(cgroups, worker_in, open_samplers):
    """Hierarchical memory.stat/current/peak: a parent counts its children's charges;
    the sampler follows the processes of the whole subtree."""
    parent = cgroups.make()
    parent.write("cgroup.subtree_control", "+memory")
    a, b = cgroups.make(parent, "a"), cgroups.make(parent, "b")
    na, nb = 24 * MiB, 40 * MiB
    wa, wb = worker_in(a), worker_in(b)
    sp, sa = open_samplers(parent), open_samplers(a)
    for smp in sp:
        assert smp.pids == sorted([wa.pid, wb.pid]), (smp.kind, smp.pids)
    base = {smp.kind: smp.sample() for smp in sp}
    base_a = {smp.kind: smp.sample() for smp in sa}
    wa.do(f"anon {na}")
    wb.do(f"anon {nb}")
    for smp, smpa in zip(sp, sa):
        bp, ba = base[smp.kind], base_a[smpa.kind]

        def check(s, bp=bp, kind=smp.kind):
            c = s.cgroup
            if c is None:
                return [f"{kind}: no parent cgroup sample: {s.notes}"]
            deltas = [sub(p.rss_anon_bytes, proc_of(bp, p.pid).rss_anon_bytes) for p in s.processes]
            rss = None if None in deltas else sum(deltas)
            return [within(sub(c.current_bytes, bp.cgroup.current_bytes), na + nb, what=f"{kind} parent current delta",
                           tol=0.02 * (na + nb) + STAT_SLACK),
                    within(sub(c.stat_get("anon"), bp.cgroup.stat_get("anon")), na + nb, what=f"{kind} parent anon delta"),
                    within(rss, na + nb, what=f"{kind} RssAnon delta summed over the subtree"),
                    None if ge(c.peak_bytes, c.current_bytes) else f"{kind}: parent peak below current"]
        s = settle(smp.sample, check)

        def check_a(s, ba=ba, kind=smpa.kind):
            c = s.cgroup
            if c is None:
                return [f"{kind}: no child cgroup sample: {s.notes}"]
            return [within(sub(c.stat_get("anon"), ba.cgroup.stat_get("anon")), na, what=f"{kind} child a anon delta"),
                    None if [p.pid for p in s.processes] == [wa.pid] else f"{kind}: child a pids {s.processes}"]
        sa_s = settle(smpa.sample, check_a)
        # the parent counts at least what child a holds
        assert s.cgroup.stat_get("anon") + STAT_SLACK >= sa_s.cgroup.stat_get("anon"), smp.kind


def test_cgroup_removed_while_sampled(cgroups, worker_in, open_samplers):
    """A cgroup removed under open descriptors: cgroup None plus a note, no exception,
    and it stays None on later samples."""
    cg = cgroups.make()
    w = worker_in(cg)
    samplers = open_samplers(cg)
    for smp in samplers:
        assert smp.sample().cgroup is not None, smp.kind
    w.kill()
    remove_when_empty(cg.dir)
    for smp in samplers:
        for _ in range(2):
            s = smp.sample()
            assert s.cgroup is None, (smp.kind, s.cgroup)
            assert any("vanished" in n and cg.rel in n for n in s.notes), (smp.kind, s.notes)
            assert s.meminfo is not None, smp.kind        # the host part is still read
        smp.refresh_pids()
        assert smp.sample(detail=True).cgroup is None, smp.kind


def _sandwich(p1, n, p2) -> bool:
    return min(p1, p2) <= n <= max(p1, p2)


def test_native_pure_parity_live(cgroups, worker_in, open_samplers):
    """Native and pure samplers on a live, quiet v2 cgroup: same keys, same notes; each
    native value lies between two pure readings taken around it (equal when nothing moved)."""
    cg = cgroups.make()
    w = worker_in(cg)
    w.do(f"anon {16 * MiB}")
    pure, native = open_samplers(cg)
    assert (pure.kind, native.kind) == ("pure-python", "native")
    p1, n, p2 = pure.sample(), native.sample(), pure.sample()
    assert sorted(n.notes) == sorted(p1.notes), (n.notes, p1.notes)
    c1, cn, c2 = p1.cgroup, n.cgroup, p2.cgroup
    for f in ("current_bytes", "peak_bytes", "max_bytes", "high_bytes", "swap_current_bytes"):
        a, x, b = getattr(c1, f), getattr(cn, f), getattr(c2, f)
        assert (a is None) == (x is None) == (b is None), (f, a, x, b)
        if isinstance(x, int):
            assert _sandwich(a, x, b), (f, a, x, b)
        else:
            assert a == x == b, (f, a, x, b)
    for f in ("stat", "events"):
        a, x, b = getattr(c1, f), getattr(cn, f), getattr(c2, f)
        assert a and x and b and a.keys() == x.keys() == b.keys(), f
        bad = {k: (a[k], x[k], b[k]) for k in x if not _sandwich(a[k], x[k], b[k])}
        assert not bad, f"{f}: native outside the pure readings: {bad}"
    assert c1.events == cn.events == c2.events       # nothing can raise an event here
    assert (c1.pressure is None) == (cn.pressure is None)
    if cn.pressure is not None:
        for k in ("some_total_us", "full_total_us"):
            assert _sandwich(getattr(c1.pressure, k), getattr(cn.pressure, k), getattr(c2.pressure, k)), k
    assert [p.pid for p in n.processes] == [p.pid for p in p1.processes] == [w.pid]
    assert n.processes[0] == p1.processes[0] == p2.processes[0]     # a sleeping process does not move
    assert n.meminfo.bytes.keys() == p1.meminfo.bytes.keys()
    assert n.meminfo.get("MemTotal") == p1.meminfo.get("MemTotal")
    assert n.vmstat.counters.keys() == p1.vmstat.counters.keys()


def test_flight_rows_see_a_joining_process_through_one_kept_descriptor(v2root, cgroups, worker_in):
    """The flight recorder's rows (feed/flat_delta.py) check a target's processes each base tick:
    on v2 through one cgroup.procs descriptor kept open and read again at offset 0
    (docs/facts.md#f-v2-procs-fresh), which must still see a process that joins."""
    from conftest import sampler_classes
    from spark_memprobe.feed.flat_delta import FlatDelta
    from spark_memprobe.recording import flatten
    native = sampler_classes()[1]
    cg = cgroups.make()
    worker_in(cg)
    s = native(cgroup_root=v2root, cgroup=cg.rel, host_files=False)
    procs = os.path.realpath(f"{cg.dir}/cgroup.procs")

    def kept() -> int:
        return sum(os.path.realpath(f"/proc/self/fd/{n}") == procs for n in os.listdir("/proc/self/fd"))

    def whole_tick(d):
        d.mark()
        s.refresh_pids()
        d.rebase(flatten(s.sample(full=True)), s.last_c)

    try:
        d = FlatDelta.for_target(s)
        assert d is not None
        whole_tick(d)
        ids = {p: i for i, p in enumerate(d.flat)}
        assert d.row(ids, set(), keep=True) is not None and d.row(ids, set(), keep=True) is not None
        assert kept() == 1, "cgroup.procs was not kept open (or opened more than once)"
        worker_in(cg)
        assert d.row(ids, set(), keep=True) is None, "a process joined and the kept descriptor did not show it"
        whole_tick(d)
        assert len(s.pids) == 2 and d.row({p: i for i, p in enumerate(d.flat)}, set(), keep=True) is not None
        assert kept() == 1
    finally:
        s.close()
    assert kept() == 0, "cgroup.procs left open after the sampler closed"
