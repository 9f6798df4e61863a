"""Flight base ticks from what C says changed (feed/flat_delta.py, csrc mp_sample_delta): on a
live memory cgroup driven to change every tick, and on the host's own files, the kept flat
sample must equal the whole sample built from the same C read, tick after tick; a change of
shape (a process joins) must go back to the whole path; and a flight recording written this
way must read back as what was kept; rows the C sampler encodes must read back as the whole
samples of the same reads."""
from __future__ import annotations

import json
import os
import time
import zlib

import pytest

from livecg import MiB, LiveCgroup, fresh_file
from test_flight import in_process, run_busy
from test_psi import cg  # noqa: F401 - the live cgroup fixture
from spark_memprobe.recording import SCALARS, Recording, RecordingWriter, flatten
from spark_memprobe.sources.sampler import native_available, open_preads, open_sampler

pytestmark = pytest.mark.skipif(not native_available()[0], reason="the native extension is not built here")


def whole(sampler, d):
    from spark_memprobe.feed.flat_delta import FlatDelta
    d = d or FlatDelta(sampler)
    d.rebase(flatten(sampler.sample(full=True)), sampler.last_c)     # as the flight recorder's whole tick
    return d


def step(d):
    """One row the host's way (keep=True: flat kept up to date), over ids numbering flat's paths:
    the {path: value} the row's blob says changed, or None (the whole path)."""
    ids = {p: i for i, p in enumerate(d.flat)} if d.flat is not None else {}
    row = d.row(ids, set(), keep=True)
    if row is None:
        return None
    paths = {i: p for p, i in ids.items()}
    return {paths[i]: v for i, v in json.loads(zlib.decompress(row[2]))}


def drive(cg: LiveCgroup, path: str, i: int) -> None:
    """Move the cgroup's usage, memory.stat and its process's status every tick."""
    if i % 3 == 0:
        cg.do(f"read {path}")
    elif i % 3 == 1:
        cg.do(f"anon {MiB}")
    else:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def delta_ticks(sampler, n: int, before_each):
    """n ticks of a FlatDelta over sampler, before_each(i) ahead of each: every tick the delta
    makes must equal the whole sample built from the same C read, and what its row says changed
    must be those values; a tick it leaves whole is rebased as the flight recorder's whole tick does.
    Returns (the delta, its ticks, the paths that moved)."""
    d = whole(sampler, None)
    fast, moved = 0, set()
    for i in range(n):
        before_each(i)
        changed = step(d)
        if changed is None:
            whole(sampler, d)
            continue
        fast += 1
        assert d.flat == flatten(sampler.to_sample(sampler.last_c))       # the same C read, built whole
        assert {p: d.flat[p] for p in changed} == changed
        moved |= changed.keys()
    return d, fast, moved


def test_a_busy_cgroups_delta_is_its_whole_sample(cg, tmp_path):
    cg.start_child()
    path = fresh_file(str(tmp_path), MiB)
    s = open_sampler(cgroup=cg.path, version=cg.version, pids=[cg.child.pid], host_files=False, stat_max_age_s=30.0)
    try:
        d, fast, moved = delta_ticks(s, 24, lambda i: drive(cg, path, i))
    finally:
        s.close()
    assert fast >= 16, f"only {fast} of 24 ticks from the delta ({d.wholes} whole)"
    # what it followed: the usage counter, memory.stat and the process's RSS
    assert {"mono_ns", "cgroup/current_bytes", "cgroup/stat/anon", "processes/#0/rss_anon_bytes"} <= moved, moved


def test_the_hosts_delta_is_its_whole_sample():
    s = open_sampler()
    try:
        _d, fast, moved = delta_ticks(s, 10, lambda i: time.sleep(0.05))
    finally:
        s.close()
    assert fast >= 8
    assert any(p.startswith("vmstat/") for p in moved) and any(p.startswith("meminfo/") for p in moved)


def test_a_process_that_joins_goes_back_to_the_whole_path(cg):
    cg.start_child()
    s = open_sampler(cgroup=cg.path, version=cg.version, pids=None, host_files=False)
    other = LiveCgroup.__new__(LiveCgroup)            # a second process in the same cgroup
    other.dir, other.child = cg.dir, None
    try:
        d = whole(s, None)
        assert step(d) is not None
        other.start_child()
        s.refresh_pids()                               # as the Follower's whole tick would
        assert len(s.pids) == 2
        assert step(d) is None and d.flat is None
        whole(s, d)
        assert step(d) is not None and d.flat == flatten(s.to_sample(s.last_c))
    finally:
        other.stop_child()
        s.close()


def test_a_process_or_child_cgroup_that_appears_is_seen_in_c(cg):
    """The flight recorder lists a target's processes only on a whole tick: the C delta compares
    cgroup.procs (opened anew: docs/facts.md#f-v1-procs-cached) with the text marked before that
    listing, and wants no child cgroup (whose processes only a walk finds)."""
    from spark_memprobe.feed.flat_delta import FlatDelta
    cg.start_child()
    s = open_sampler(cgroup=cg.path, version=cg.version, host_files=False)
    d = FlatDelta.for_target(s)
    other = LiveCgroup.__new__(LiveCgroup)            # a second process in the same cgroup
    other.dir, other.child = cg.dir, None

    def whole_tick():
        d.mark()
        s.refresh_pids()
        d.rebase(flatten(s.sample(full=True)), s.last_c)

    try:
        assert d is not None
        whole_tick()
        assert step(d) is not None and step(d) is not None      # nothing joined
        other.start_child()
        assert step(d) is None, "a process joined and the delta did not see it"
        whole_tick()
        assert len(s.pids) == 2 and step(d) is not None
        os.mkdir(os.path.join(cg.dir, "child"))
        try:
            assert step(d) is None, "a child cgroup appeared and the delta did not see it"
            whole_tick()
            assert step(d) is None                                 # marked with a child: whole each tick
        finally:
            os.rmdir(os.path.join(cg.dir, "child"))
        whole_tick()
        assert step(d) is not None
    finally:
        other.stop_child()
        s.close()


def test_preads_read_each_file_and_say_which_failed(tmp_path):
    from spark_memprobe.feed.flight import ring_texts
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"12345\n")
    b.write_bytes(b"x" * 100)
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    bad = os.open(tmp_path, os.O_RDONLY)               # a directory: pread says EISDIR
    try:
        blob, lens = open_preads([fa, bad, fb], [32, 32, 64]).read()
        assert lens == [6, -21, 64]
        entry = (0, 0, blob, lens, {"a": 0, "dir": 1, "b": 2})
        texts = ring_texts(entry)
        assert texts["a"] == b"12345\n" and texts["b"] == b"x" * 64
        assert texts["dir"] is None and texts.get("none") is None
    finally:
        for fd in (fa, fb, bad):
            os.close(fd)


def test_a_busy_flight_recording_reads_back_as_kept(cg, tmp_path, monkeypatch):
    """The flight recorder itself, in-process, over a busy cgroup: its base ticks go the delta
    way, the base file decodes to exactly the samples it kept, and an event file opened after
    them holds those samples with the host's vmstat in place of VMSTAT_NOTE. The host's kernel
    files (here every 2 s) are read without a whole tick of the host."""
    from spark_memprobe.analysis.flight import flight_files
    from spark_memprobe.feed import flight
    from spark_memprobe.feed.flat_delta import Later
    from spark_memprobe.feed.flight import HOST, LIGHT_NOTE, VMSTAT_NOTE
    from spark_memprobe.feed.flight import whole as whole_flat
    monkeypatch.setattr(flight, "KERNEL_EVERY_S", 2.0)
    cg.start_child()
    path = fresh_file(str(tmp_path), MiB)
    fr = in_process(str(tmp_path / "flight"), [cg])
    try:
        run_busy(fr, cg, path, 1.5)
        host_flat = fr.tracks[HOST].delta.flat          # a whole tick of the host would replace it
        run_busy(fr, cg, path, 4.5)
        assert fr.tracks[HOST].delta.flat is host_flat, "the host had a whole tick (its kernel files?)"
        # the target idle for a base tick: its next row takes all the host's meminfo moved since its
        # file's last sample, not only what moved at the host's last tick
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            fr.tick()
            time.sleep(0.1)
        run_busy(fr, cg, path, 2.5)
        tr = next(t for k, t in fr.tracks.items() if k != HOST)
        assert tr.delta is not None and tr.delta.flat is not None, "the target's base ticks never went the delta way"
        assert sum(isinstance(e[2], Later) for e in tr.full) >= 4, "the target's base ticks were not C's rows"
        kept = [whole_flat(e[2]) for e in tr.full]
        hosts = [e[2] for e in fr.tracks[HOST].full]
        fr.trigger("psi", tr, "test: an event after the delta ticks")
        fr.tick()
    finally:
        fr.close()
    [host] = [f for f in flight_files(str(tmp_path / "flight")) if f.kind == "base" and f.rest == "host"]
    with Recording(host.path) as rec:
        assert len(rec.events("kernel")) >= 2, "the host's kernel files were not read every 2 s"
    base = [f for f in flight_files(str(tmp_path / "flight")) if f.kind == "base" and f.rest != "host"]
    assert len(base) == 1
    with Recording(base[0].path) as rec:
        read = [{rec.paths[p]: v for p, v in st.flat.items()} for st in rec.walk()]
    assert len(kept) >= 5 and len(read) in (len(kept), len(kept) + 1)     # the tick after the trigger may be a base one
    assert read[:len(kept)] == kept
    assert len({r["cgroup/current_bytes"] for r in read}) >= 3
    # each kept sample holds the host's meminfo of its own tick (a delta takes only what moved in it)
    mem = [{p: v for p, v in f.items() if p.startswith("meminfo/")} for f in kept]
    assert len({m["meminfo/bytes/MemFree"] for m in mem}) >= 2
    for f, m in zip(kept, mem):
        h = [h for h in hosts if h["mono_ns"] <= f["mono_ns"]][-1]
        assert m == {p: v for p, v in h.items() if p.startswith("meminfo/")}
    [ev] = [f for f in flight_files(str(tmp_path / "flight")) if f.kind == "event" and f.rest != "psi-host"]
    with Recording(ev.path) as rec:
        full = [s for s in rec.samples() if LIGHT_NOTE not in s.notes]
    assert len(full) >= len(kept)
    assert all(s.vmstat is not None and VMSTAT_NOTE not in s.notes for s in full)


def test_rows_encoded_in_c_read_back_as_their_whole_samples(cg, tmp_path):
    """FlatDelta.row over a live busy cgroup into a real recording: each row's sample (Later)
    is the whole sample built from the same C read, its scalars are those of that sample, and
    the file decodes to exactly those samples, a limit set and lifted between rows included."""
    cg.start_child()
    path = fresh_file(str(tmp_path), MiB)
    s = open_sampler(cgroup=cg.path, version=cg.version, pids=[cg.child.pid], host_files=False, stat_max_age_s=30.0)
    w = RecordingWriter(str(tmp_path / "rows.db"), {"test": True}, commit_every_s=None)
    limit = "memory.max" if cg.version == 2 else "memory.limit_in_bytes"
    expected, rows, limits = [], 0, set()
    try:
        d = None
        for i in range(24):
            if i == 8:
                cg.set(limit, str(512 * MiB))
            elif i == 14:
                cg.set(limit, "max" if cg.version == 2 else "-1")
            drive(cg, path, i)        # a tick whose usage stayed carries memory.stat: a whole one
            row = d.row(w.path_ids, w.gpu_ids, []) if d is not None and w.row_due() else None
            if row is None:
                d = whole(s, d)
                flat = dict(d.flat)
                w.add_flat(flat["mono_ns"], flat["wall_ns"], flat)
            else:
                rows += 1
                mono, wall, blob, scalars, gpu_data, later = row
                flat = later.whole()
                assert flat == flatten(s.to_sample(s.last_c))                  # the same C read, built whole
                assert (mono, wall) == (flat["mono_ns"], flat["wall_ns"])
                assert scalars == [v if isinstance(v := flat.get(p), int) else None for p in SCALARS.values()]
                w.add_row(*row)
                limits.add(flat["cgroup/max_bytes"])
            expected.append(flat)
            w.commit()
    finally:
        w.close()
        s.close()
    assert rows >= 12, f"only {rows} of 24 ticks were rows"
    assert "max" in limits and 512 * MiB in limits, f"the limit was never a row's: {limits}"
    with Recording(str(tmp_path / "rows.db")) as rec:
        read = [{rec.paths[p]: v for p, v in st.flat.items()} for st in rec.walk()]
        cols = rec.timeline(list(SCALARS))
    assert read == expected
    assert [list(c[2:]) for c in cols] == [[f.get(p) for p in SCALARS.values()] for f in expected]


def test_row_text_writes_what_burst_value_reads():
    """The C encoder alone (row.c): each kind of column, a column of two paths, extra items,
    a column without a path, a buffer too small, and the zlib stream."""
    from spark_memprobe._native import ffi, lib
    from spark_memprobe.recording import burst_value
    from spark_memprobe.sources.native import MISSING, ROW_HUNDREDTHS, ROW_INT, ROW_LIMIT, UNLIMITED
    floor = 1 << 60
    sampler = open_sampler(host_files=False)
    try:
        m = sampler.row_map([(10, 1, ROW_INT), (11, 2, ROW_INT), (11, 3, ROW_HUNDREDTHS), (12, 4, ROW_LIMIT)],
                            floor, [-1] * 7)
    finally:
        sampler.close()
    lay = {"missing": MISSING, "unlimited": UNLIMITED, "limit_floor": floor, "limits": ["l"], "hundredths": ["h"]}
    paths = {1: "i", 2: "i", 3: "h", 4: "l"}
    out = ffi.new("char[]", 4096)
    for vals in ([0, 0, 0], [-7, -12345, 512 << 20], [1 << 62, 5, UNLIMITED], [3, 100, floor], [3, 1230, floor - 1]):
        cols = ffi.new("int32_t[]", [10, 11, 12])
        n = lib.mp_row_text(m, cols, ffi.new("int64_t[]", vals), 3, ffi.new("int32_t[]", [9, 8, -1]),
                            ffi.new("int64_t[]", [42, MISSING, 1]), ffi.new("uint8_t[]", [1, 1, 1]), 3, out, 4096)
        text = ffi.string(out, n)
        items = json.loads(text)
        want = [[1, vals[0]], [2, vals[1]], [3, burst_value(lay, "h", vals[1])], [4, burst_value(lay, "l", vals[2])],
                [9, 42], [8, None]]
        assert items == want and [type(v) for _, v in items] == [type(v) for _, v in want], text
        blob = ffi.new("uint8_t[]", 4096)
        z = lib.mp_row_deflate(out, n, blob, 4096)
        assert z > 0 and zlib.decompress(ffi.buffer(blob, z)[:]) == text
    cols = ffi.new("int32_t[]", [10, 13])                 # 13: no path
    assert lib.mp_row_text(m, cols, ffi.new("int64_t[]", [1, 2]), 2, ffi.NULL, ffi.NULL, ffi.NULL, 0, out, 4096) == -1
    assert lib.mp_row_text(m, cols, ffi.new("int64_t[]", [1, 2]), 1, ffi.NULL, ffi.NULL, ffi.NULL, 0, out, 7) < -1   # [[1,1]] and its end
