"""What lets `memprobe export --all-containers` follow hundreds of targets (feed/context.py,
feed/multi.py), on real cgroups with real processes: sibling cgroups are read once for every
target under one parent, a cgroup's memory.stat is read again only when its usage moved, and
an idle target's file mappings are not read again; a change is seen at the next tick."""
from __future__ import annotations

import time

import pytest

from livecg import LiveCgroup
from spark_memprobe.feed import context
from spark_memprobe.feed.context import Siblings
from spark_memprobe.feed.host import open_host
from spark_memprobe.feed.multi import TargetSet
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


def test_targets_under_one_parent_share_one_read_of_their_siblings(family, every_tick):
    _, kids = family
    ts = TargetSet("/proc", "/sys/fs/cgroup", [f"cgroup:{k.path}" for k in kids], False, 5.0, 0.9,
                   lambda k, m: None, lambda stage, e: (_ for _ in ()).throw(e))
    smp, _, host = open_host()
    try:
        ts.update()
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
    finally:
        smp.close()
        ts.close()


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
