"""What lets `memprobe export --all-containers` follow hundreds of targets (feed/context.py,
feed/multi.py), on real cgroups with real processes: sibling cgroups are read once for every
target under one parent, a cgroup's memory.stat is read again only when its usage moved, and
an idle target's file mappings are not read again; a change is seen at the next tick."""
from __future__ import annotations

import os
import time
from dataclasses import asdict

import pytest

from fixture_loader import load_step, steps
from livecg import LiveCgroup
from spark_memprobe.feed import context
from spark_memprobe.feed.context import Siblings
from spark_memprobe.feed.host import open_host
from spark_memprobe.feed.multi import TargetSet
from spark_memprobe.analysis.timeline import GPU_FIELDS
from spark_memprobe.recording import Recording, RecordingWriter
from spark_memprobe.samples import GpuProcess
from spark_memprobe.sources.cgroupfs import CgroupFS

MiB = 1 << 20


@pytest.fixture
def family():
    """A parent cgroup with three children, one live process in each."""
    made = []
    try:
        parent = LiveCgroup()
        made.append(parent)
        kids = []
        for _ in range(3):
            k = LiveCgroup(parent=parent.path)
            made.append(k)
            k.start_child()
            kids.append(k)
        yield parent, kids
    finally:
        for c in reversed(made):
            c.cleanup()


@pytest.fixture
def every_tick(monkeypatch):
    monkeypatch.setattr(context, "REPORT_EVERY_S", 0.0)     # context due at every poll


def anon_of(others: dict, path: str) -> int:
    return next(c for c in others["cgroups"] if c["path"] == path)["stat"]["anon"]


def test_an_idle_cgroup_is_not_read_again_and_a_change_is_seen_at_the_next_tick(family, every_tick):
    _, (a, b, c) = family
    sib = Siblings(CgroupFS())
    first = sib.of(a.path, a.version)
    assert sorted(x["path"] for x in first["cgroups"]) == sorted([b.path, c.path])
    assert sib.full_reads == 3                  # a, b and c, once each
    again = sib.of(a.path, a.version)
    assert sib.full_reads == 3                  # nobody's usage moved: only memory.current was read
    assert all(x is y for x, y in zip(again["cgroups"], first["cgroups"]))     # the readings kept
    before = anon_of(again, b.path)
    b.do(f"anon {16 * MiB}")
    moved = sib.of(a.path, a.version)
    assert sib.full_reads == 4                  # b alone is read again...
    assert anon_of(moved, b.path) >= before + 15 * MiB     # ...and its memory.stat shows the 16 MiB


@pytest.fixture
def kids_followed(family, every_tick):
    """The three children followed as targets: (TargetSet, HostInfo, children)."""
    _, kids = family
    ts = TargetSet("/proc", "/sys/fs/cgroup", [f"cgroup:{k.path}" for k in kids], False, 5.0, 0.9,
                   lambda k, m: None, lambda stage, e: (_ for _ in ()).throw(e))
    smp, _, host = open_host()
    try:
        ts.update()
        yield ts, host, kids
    finally:
        smp.close()
        ts.close()


def test_targets_under_one_parent_share_one_read_of_their_siblings(kids_followed):
    ts, host, kids = kids_followed
    assert len(ts.watched) == 3
    got = ts.sample(host, None, None)
    assert len(got) == 3
    # one read of the three children for the three targets, not 3 x 2 sibling reads
    assert ts.siblings.full_reads == 3
    for r in got:
        me = r.watched.follower.target.cgroup_path
        others = sorted(x["path"] for x in r.watched.context.other_cgroups["cgroups"])
        assert others == sorted(k.path for k in kids if k.path != me)
        assert len(r.inputs.others) == 2        # and the ledger got them
    ts.sample(host, None, None)
    assert ts.siblings.full_reads == 3


def test_an_idle_targets_file_mappings_are_read_once_until_it_changes(family, every_tick, tmp_path):
    _, (a, _, _) = family
    ts = TargetSet("/proc", "/sys/fs/cgroup", [f"cgroup:{a.path}"], False, 5.0, 0.9,
                   lambda k, m: None, lambda stage, e: (_ for _ in ()).throw(e))
    smp, _, host = open_host()
    try:
        ts.update()
        ctx = ts.watched[f"cgroup:{a.path}"].context
        for _ in range(3):
            ts.sample(host, None, None)
        assert ctx.maps_reads == 1
        f = tmp_path / "mapped.bin"
        f.write_bytes(b"x" * (4 * MiB))
        a.do(f"map {f}")                        # its pages were cached by this test: charged here, not to a
        a.do(f"anon {16 * MiB}")                # ...so usage moves with this: the next tick reads the maps again
        for _ in range(50):                      # the read runs in the background: wait for its result
            ts.sample(host, None, None)
            if any(m.get("path") == str(f) for m in (ctx.mapped_files or {}).get("files", [])):
                break
            time.sleep(0.02)
        assert ctx.maps_reads == 2
        assert any(m.get("path") == str(f) for m in ctx.mapped_files["files"])
    finally:
        smp.close()
        ts.close()


def test_a_sibling_reading_is_turned_into_a_cgroup_sample_once_until_it_is_read_again(kids_followed):
    ts, host, kids = kids_followed

    def others() -> dict:
        """{(target, sibling): the CgroupSample the target's ledger got} of one cycle"""
        return {(r.watched.follower.target.cgroup_path, o.path): o for r in ts.sample(host, None, None)
                for o in r.inputs.others}
    one = others()
    assert len(one) == 6
    by_path = {}
    for (_, path), o in one.items():
        by_path.setdefault(path, []).append(o)
    assert all(x is os_[0] for os_ in by_path.values() for x in os_)     # one object per sibling, shared
    two = others()
    assert all(two[k] is one[k] for k in one)      # nobody moved: the same readings, nothing rebuilt
    b = kids[1]
    anon = by_path[b.path][0].stat["anon"]
    b.do(f"anon {16 * MiB}")
    three = others()
    moved = [o for (_, path), o in three.items() if path == b.path]
    assert all(o is not by_path[b.path][0] and o.stat["anon"] >= anon + 15 * MiB for o in moved)
    assert all(three[k] is one[k] for k in one if k[1] != b.path)


def test_a_long_recordings_gpu_fields_are_set_in_place_where_only_their_values_moved(tmp_path):
    """report.py walks every sample of a 24 h recording for its GPU series: a step that only
    changes numbers patches the last Sample built; a changed shape builds it again."""
    host, s = next((h, x) for h, x in (load_step(st, "memprobe_engine") for st in steps("h100-inference-scenario"))
                   if x.gpus and x.gpus[0].processes)        # a step with the engine on the GPU
    w = RecordingWriter(str(tmp_path / "r.db"), {"host": asdict(host), "target": {}, "probes": None,
                                                       "interval_ns": 10 ** 8})
    for i in range(8):
        s.mono_ns, s.wall_ns = 10 ** 9 + i * 10 ** 8, 10 ** 18 + i * 10 ** 8
        s.gpus[0].used_bytes += MiB
        s.gpus[0].processes[0].used_bytes += MiB
        if i == 6:                                   # a new GPU process: the list grew
            s.gpus[0].processes.append(GpuProcess(pid=4242, used_bytes=MiB, kind="compute"))
        w.add_sample(s)
    w.close()
    rec = Recording(str(tmp_path / "r.db"))
    try:
        kept, patched = None, []
        for step in rec.walk():
            ok = kept is not None and step.patch(kept, GPU_FIELDS)
            patched.append(ok)
            fresh = step.sample(GPU_FIELDS)
            if ok:
                assert kept == fresh                 # the same Sample as one built from scratch
            kept = fresh
        assert patched == [False, True, True, True, True, True, False, True]
    finally:
        rec.close()



def test_an_unchanged_targets_series_are_reused_and_a_changed_one_rebuilt_with_its_new_value(family, every_tick):
    """export's TargetBlocks: a series that kept its value gets last cycle's Sample object (and
    line) back; a target whose memory moved has those series built again at the next cycle.
    The other targets' host_other rows and MemAvailable KV budget move with the host's memory."""
    from spark_memprobe.cli.export import Exporter
    from spark_memprobe.cli.export_http import exposition_body
    _, (a, b, c) = family
    x = Exporter(queries=[f"cgroup:{k.path}" for k in (a, b, c)], interval=3600.0, log=lambda m: None)

    def block(k) -> dict:
        """{(family, labels after the target's): Sample} of k's block this cycle"""
        key = next(t for t in x.blocks.new if t[-1] == k.path)
        return {(name, extra): s for (name, extra, _), (_, s) in zip(*x.blocks.new[key])}

    def built(k) -> int:
        return next(n for t, n in x.blocks.built.items() if t[-1] == k.path)

    def host_wide(k, last: dict) -> bool:
        """every series of k built again since `last` is one that follows the host's memory"""
        return all(name.startswith("kv_") or extra[0] in ("host_other", "reserve")
                   for (name, extra), s in block(k).items() if s is not last[name, extra])

    def anon_line() -> str:
        """b's memprobe_ledger_bytes line of the anon row in the `current` view, as served"""
        body = exposition_body(x.exposition, False, None, time.time()).decode()
        return next(ln for ln in body.splitlines() if ln.startswith("memprobe_ledger_bytes{")
                    and f'cgroup="{b.path}"' in ln and 'row="anon"' in ln and 'view="current"' in ln)

    try:
        x.start()                                # first cycle: every series built
        assert all(built(k) == len(block(k)) > 40 for k in (a, b, c))
        for _ in range(5):                       # the first cycles' context reads settle
            x.cycle()
        before = {k.path: block(k) for k in (a, b, c)}
        line = anon_line()
        x.cycle()                                # nobody moved: a few host-wide series at most
        assert all(host_wide(k, before[k.path]) for k in (a, b, c)), x.blocks.built
        before = {k.path: block(k) for k in (a, b, c)}
        assert all(block(k)[("ledger", ("anon", "current"))] is before[k.path][("ledger", ("anon", "current"))]
                   for k in (a, b, c))
        assert anon_line() == line
        b.do(f"anon {16 * MiB}")
        x.cycle()                                # b's memory moved: b's series built again, with the new value
        assert built(b) >= 10 and not host_wide(b, before[b.path])
        assert all(host_wide(k, before[k.path]) and built(k) < 10 for k in (a, c)), x.blocks.built
        for k in (a, c):
            assert block(k)[("ledger", ("anon", "current"))] is before[k.path][("ledger", ("anon", "current"))]
        assert block(b)[("ledger", ("anon", "current"))] is not before[b.path][("ledger", ("anon", "current"))]
        old, new = float(line.rsplit(" ", 1)[1]), float(anon_line().rsplit(" ", 1)[1])
        assert new >= old + 15 * MiB
    finally:
        x.stop()


def test_lines_kept_from_the_last_cycle_render_as_prometheus_client_does():
    """export_http's LineCache across cycles: a Sample given again whole, a series at a new
    value (its label part kept) and a new series all give prometheus_client's bytes."""
    from prometheus_client.core import GaugeMetricFamily
    from spark_memprobe.cli.export_http import LineCache, render_both, render_one
    cache = LineCache()

    def fam(samples):
        m = GaugeMetricFamily("memprobe_x_bytes", "doc", labels=["host", "row"], unit="bytes")
        m.samples = list(samples)
        return m
    one = fam([])
    for row, v in (("anon", 1.0), ("kernel", 2 * MiB), ('q"uo\\te', 3)):
        one.add_metric(["h", row], v)
    cache.next_cycle()
    assert render_both(one, cache) == (render_one([one], False), render_one([one], True))
    two = fam([one.samples[0]])                       # the same Sample object again
    two.add_metric(["h", "kernel"], 5 * MiB)          # the same series at another value
    two.add_metric(["h", "new"], 7)
    cache.next_cycle()
    assert render_both(two, cache) == (render_one([two], False), render_one([two], True))
    assert id(two.samples[0]) in cache.same_new       # kept for the next cycle


def test_processes_are_listed_through_child_cgroups():
    """list_procs skips the directory walk where kernfs counts no subdirectory (a link count of
    2): the processes of a cgroup two levels down are still found, and a leaf lists its own."""
    from spark_memprobe.sources.cgroupfs import list_procs
    outer = LiveCgroup()
    inner = deeper = None
    try:
        inner = LiveCgroup(parent=outer.path)
        deeper = LiveCgroup(parent=inner.path)
        pid = deeper.start_child()
        assert os.stat(outer.dir).st_nlink == 3 and os.stat(deeper.dir).st_nlink == 2
        assert list_procs(outer.dir) == [pid]
        assert list_procs(deeper.dir) == [pid]
        assert list_procs(outer.dir, recursive=False) == []
    finally:
        for cg in (deeper, inner, outer):
            if cg is not None:
                cg.cleanup()


def test_targets_carry_the_hosts_meminfo_and_read_none_of_their_own(kids_followed):
    """The targets' samplers do not read /proc/meminfo or /proc/vmstat (one host read serves
    every target, cli/export.py): without the host sample a target's sample has neither, with
    it each target's sample holds the host sample's."""
    ts, host, kids = kids_followed
    assert [r.item.sample.meminfo for r in ts.sample(host, None, None)] == [None] * 3
    smp, first, _ = open_host()
    try:
        got = ts.sample(host, None, None, host_sample=first)
        assert len(got) == 3
        for r in got:
            assert r.item.sample.meminfo is first.meminfo and r.item.sample.vmstat is first.vmstat
            assert not [n for n in r.item.sample.notes if "meminfo" in n or "vmstat" in n]
    finally:
        smp.close()
