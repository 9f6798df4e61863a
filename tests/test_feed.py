"""feed/: one sample gives one ledger on every path, the context is read off the sampling path,
and one ticker keeps every loop's pace.

Parity: the same sample, the same context (file mappings, other cgroups) and the same eBPF report
go through the screen's path (LiveFeed -> cli/tui.py apply_item) and the exporter's path
(feed/multi.py TargetSet.reading); the ledgers must be equal field by field. Each path also reads
its own context, and first-touch owners must be named from it in both (the exporter once built
its ledgers without the target's mappings and sibling cgroups)."""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import time

import pytest

from fixture_loader import FIXTURES
from livecg import MiB, LiveCgroup, fresh_file, fstype
from spark_memprobe.cli.tui import apply_item
from spark_memprobe.probe_report import PageCacheFile, ProbeReport
from spark_memprobe.feed import ledger_inputs
from spark_memprobe.feed.host import open_host
from spark_memprobe.feed.live import LiveFeed
from spark_memprobe.feed.multi import TargetSet
from spark_memprobe.feed.ticker import Ticker
from spark_memprobe.sources.background import Background
from spark_memprobe.sources.cgroupfs import CgroupFS
from spark_memprobe.sources.targets import Resolver
from spark_memprobe.views.tui import TuiState

STEP03 = os.path.join(FIXTURES, "h100-inference-scenario", "steps", "03-engine-loaded-weights-cpu")
ENGINE = "cgroup:/memprobe_engine"


def target_set(proc: str, cgroup_root: str, query: str, said: list, errors: list) -> TargetSet:
    return TargetSet(proc, cgroup_root, [query], all_containers=False, relist_s=5.0, kv_fraction=0.9,
                     say=lambda key, msg: said.append(msg), error=lambda stage, e: errors.append((stage, e)))


def owners(ledger) -> list:
    f = ledger.finding("first_touch")
    assert f is not None, [x.rule for x in ledger.findings]
    return [p.name for p in f.owners]


def differing(a, b) -> list[str]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [k for k in da if da[k] != db[k]]


def both_paths(proc: str, cgroup_root: str, query: str, report):
    """(screen ledger, screen inputs, exporter Reading of the same item, exporter Readings of its
    own sample and context: with the report, and without it). Both paths sample until each has
    read its context once."""
    r = Resolver(proc=proc, cgroup_root=cgroup_root)
    feed = LiveFeed(r, r.resolve(query))
    said, errors = [], []
    ts = target_set(proc, cgroup_root, query, said, errors)
    try:
        ts.update()
        w = ts.watched[query]
        own = item = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            item, _ = feed.tick()
            readings = ts.sample(feed.header.host, None, report)
            own = readings[0] if readings else None
            if item.mapped_files and item.other_cgroups and own is not None and own.item.mapped_files and \
                    own.item.other_cgroups:
                break
            time.sleep(0.1)
        assert not errors, errors
        assert item.mapped_files and item.other_cgroups, "the screen's path read no context in 10 s"
        assert own is not None and own.item.mapped_files and own.item.other_cgroups, \
            "the exporter's path read no context in 10 s"
        plain = ts.reading(w, own.item.sample, feed.header.host, None)
        # the same item (sample, context, report) through both paths
        item = dataclasses.replace(item, report=report)
        st = TuiState(host=feed.header.host, target=feed.target_text())
        apply_item(st, item, feed.header, 0.9)
        w.context.mapped_files, w.context.other_cgroups = item.mapped_files, item.other_cgroups
        # and the same host kernel state and earlier sample the screen's item has
        ts.host_kernel.kernel = item.kernel
        ts.host_kernel.before = lambda s: item.before
        same = ts.reading(w, item.sample, feed.header.host, report)
        return st.ledger, ledger_inputs(item, feed.header), same, own, plain
    finally:
        feed.close()
        ts.close()


def check_parity(screen, screen_inputs, same, own, plain, owner: str) -> None:
    assert dataclasses.asdict(same.inputs) == dataclasses.asdict(screen_inputs), differing(same.inputs, screen_inputs)
    assert dataclasses.asdict(same.ledger) == dataclasses.asdict(screen), differing(same.ledger, screen)
    # from its own context the exporter names the owners the screen names: from the sibling
    # cgroups alone (no eBPF), and with the report (eBPF's owners, when it has any)
    assert owner in owners(plain.ledger)
    assert owners(own.ledger) == owners(screen)


def fixture_report() -> ProbeReport:
    """What eBPF page-cache ownership would report for the fixture's weights: `warmer` read the
    whole file first (step 02); the fixture has no eBPF capture, so it is built from its facts."""
    ino, size, path = open(os.path.join(FIXTURES, "h100-inference-scenario", "weights.inode-size-path")).read().split()
    pages = -(-int(size) // 4096)
    return ProbeReport(started_mono_ns=0, ended_mono_ns=time.monotonic_ns(), page_size=4096,
                       page_cache=[PageCacheFile(cgroup_id=7, dev_major=0xfe, dev_minor=0, inode=int(ino),
                                                 added_pages=pages, removed_pages=0, last_pid=600, path=path,
                                                 cgroup_path="/warmer", page_size=4096)],
                       cgroup_paths={7: "/warmer"})


def test_parity_on_the_inference_fixture():
    screen, inputs, same, own, plain = both_paths(f"{STEP03}/proc", f"{STEP03}/cgroup", ENGINE, fixture_report())
    check_parity(screen, inputs, same, own, plain, "/warmer")
    f = screen.finding("first_touch")
    assert owners(screen) == ["/warmer"] and f.confidence == "high"
    assert "/tmp/model/model.safetensors" in [p.name for p in f.files]
    assert [m.path for m in inputs.mapped_files if m.inode == 1073170] == ["/tmp/model/model.safetensors"]
    assert [o.path for o in inputs.others] == ["/warmer"]


@pytest.mark.live
def test_parity_on_a_live_cgroup(tmp_path):
    """A `warmer` cgroup reads a file first and its process exits; the target, its sibling,
    maps every page. eBPF page-cache ownership is added when this host has the probes."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create memory cgroups")
    if fstype(str(tmp_path)) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {fstype(str(tmp_path))}: its pages would be shmem, not page cache")
    try:
        parent = LiveCgroup()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no memory cgroup can be created here: {e}")
    made, session, path = [parent], None, None
    try:
        from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession, ProbesUnavailable, base_status
        path = fresh_file(str(tmp_path), 64 * MiB)
        if base_status()[0]:
            session = ProbeSession(ProbeOptions(faults=False, fault_addresses=False, memcg=False, cuda=False,
                                                uvm=False, pagecache=True, scan_dirs=[str(tmp_path)]))
            try:
                session.start()
            except ProbesUnavailable:
                session.close()
                session = None
        warmer = LiveCgroup(parent=parent.path)
        made.append(warmer)
        warmer.start_child()
        warmer.do(f"read {path}")            # first touch: the file's pages are charged to warmer
        warmer.stop_child()
        target = LiveCgroup(parent=parent.path)
        made.append(target)
        target.start_child()
        target.do(f"map {path}")             # every page mapped: cached, owned by warmer
        # memory.stat is flushed lazily (the kernel's periodic stats flush, about every 2 s):
        # wait until warmer's shows the pages mapped, as both paths will read it
        t0 = time.monotonic()
        while (CgroupFS().read(warmer.path).stat or {}).get("file_mapped", 0) < 32 * MiB:
            assert time.monotonic() - t0 < 10, "warmer's memory.stat never showed the mapped pages"
            time.sleep(0.1)
        report = None
        if session is not None:
            session.poll()
            report = session.collect()
            assert any(p.path == path for p in report.page_cache), "the page-cache probe did not see the file"
        screen, inputs, same, own, plain = both_paths("/proc", "/sys/fs/cgroup", f"cgroup:{target.path}", report)
        check_parity(screen, inputs, same, own, plain, warmer.path)
        if report is None:
            assert owners(screen) == [warmer.path]
        assert path in [m.path for m in inputs.mapped_files] and [o.path for o in inputs.others] == [warmer.path]
    finally:
        if session is not None:
            session.close()
        for cg in reversed(made):
            cg.cleanup()
        if path is not None:
            os.unlink(path)


# -- a context read that stalls ---------------------------------------------------------------------

@pytest.fixture
def stalled_tree(tmp_path):
    """The fixture step with the engine's /proc/<pid>/maps a FIFO: opening it blocks until a
    writer comes, as a maps read waits on a target that holds its mmap_lock."""
    tree = tmp_path / "tree"
    shutil.copytree(STEP03, tree)
    maps = tree / "proc" / "763" / "maps"
    text = maps.read_text()
    maps.unlink()
    os.mkfifo(maps)
    yield tree, maps, text
    try:                                 # a reader still blocked in open: let it go
        fd = os.open(maps, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError as e:
        assert e.errno == errno.ENXIO    # no reader left


def timed(fn, maps, limit_s: float = 2.0):
    """fn() in a thread; fails (instead of hanging) when a broken defence lets it block on the
    FIFO, after letting it go."""
    call = Background(fn, "test-call")
    if not call.wait(limit_s):
        os.close(os.open(maps, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"blocked for more than {limit_s} s")
    return call.result()


def release(stalled, maps, text: str) -> None:
    """End the stall (the blocked open returns; the read then fails on the FIFO and the
    mappings come back empty) and put a regular maps file in place for the next read."""
    os.close(os.open(maps, os.O_WRONLY | os.O_NONBLOCK))
    assert stalled.wait(5)
    maps.unlink()
    maps.write_text(text)


def test_a_stalled_maps_read_does_not_stall_the_live_feed(stalled_tree):
    tree, maps, text = stalled_tree
    r = Resolver(proc=str(tree / "proc"), cgroup_root=str(tree / "cgroup"))
    feed = LiveFeed(r, r.resolve(ENGINE))
    feed.context.deadline_s = 0.5
    try:
        slowest, late = 0.0, []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            t = time.monotonic()
            item, _ = timed(feed.tick, maps)
            slowest = max(slowest, time.monotonic() - t)
            late += [e["message"] for e in item.events if e["kind"] == "context-late"]
            assert item.sample is not None and item.mapped_files is None
            time.sleep(0.05)
        assert slowest < 0.3, slowest
        assert len(late) == 1 and "has not returned in 0.5 s" in late[0], late        # said once
        release(feed.context._call, maps, text)
        item, _ = feed.tick()                # picked up at the next tick; the next read starts
        assert item.mapped_files == {"files": []}
        assert [c["path"] for c in item.other_cgroups["cgroups"]] == ["/warmer"]
        t0 = time.monotonic()
        while "/tmp/model/model.safetensors" not in [f["path"] for f in item.mapped_files["files"]]:
            assert time.monotonic() - t0 < 5, "the next context read did not come"
            time.sleep(0.05)
            item, _ = feed.tick()
    finally:
        feed.close()


def test_a_stalled_maps_read_does_not_stall_the_exporter(stalled_tree):
    tree, maps, text = stalled_tree
    said, errors = [], []
    ts = target_set(str(tree / "proc"), str(tree / "cgroup"), ENGINE, said, errors)
    try:
        ts.update()
        w = ts.watched[ENGINE]
        w.context.deadline_s = 0.5
        smp, _, host = open_host(str(tree / "proc"), str(tree / "cgroup"))
        smp.close()
        slowest = 0.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            t = time.monotonic()
            readings = timed(lambda: ts.sample(host, None, None), maps)
            slowest = max(slowest, time.monotonic() - t)
            assert len(readings) == 1 and readings[0].inputs.mapped_files is None
            time.sleep(0.05)
        assert slowest < 0.3, slowest
        assert sum("has not returned in 0.5 s" in m for m in said) == 1, said
        release(w.context._call, maps, text)
        t0 = time.monotonic()
        reading = ts.sample(host, None, None)[0]
        while not reading.inputs.mapped_files:
            assert time.monotonic() - t0 < 5, "the next context read did not come"
            time.sleep(0.05)
            reading = ts.sample(host, None, None)[0]
        assert "/warmer" in owners(reading.ledger)
        assert not errors, errors
    finally:
        ts.close()


@pytest.mark.bpf
def test_a_late_libcuda_search_is_an_exporter_error(tmp_path):
    """The exporter's eBPF session searches every process for libcuda; one whose maps read
    stalls makes the search late: that is counted in memprobe_exporter_errors_total{stage="bpf"}
    once, and logged."""
    from spark_memprobe.cli.export import Exporter
    from spark_memprobe.sources.bpf import base_status
    ok, why = base_status()
    if not ok:
        pytest.skip(f"eBPF probes unavailable: {why}")
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    for name in ("meminfo", "vmstat"):
        shutil.copy(f"{STEP03}/proc/{name}", proc / name)
    (proc / "4242" / "comm").write_text("stalled\n")
    maps = proc / "4242" / "maps"
    os.mkfifo(maps)
    logged = []
    x = Exporter(proc=str(proc), interval=0.2, bpf=True, log=logged.append)
    try:
        x.start()                            # waits the search's deadline once, then goes on
        if x.probes is None:
            pytest.skip("eBPF probes did not start: " + "; ".join(logged))
        assert x.stats.errors["bpf"] == 1, (x.stats.errors, logged)
        assert sum("libcuda.so.1 has not returned" in m for m in logged) == 1, logged
        x.cycle()
        assert x.stats.errors["bpf"] == 1    # the same late search is counted once
    finally:
        try:
            fd = os.open(maps, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        x.stop()


# -- the ticker ---------------------------------------------------------------------------------------

def test_ticker_keeps_its_rate_without_drift_or_catch_up():
    t = Ticker(0.1)
    start = t.deadline
    for _ in range(5):
        time.sleep(0.01)                     # each tick's work: the wait shortens, deadlines stay put
        time.sleep(t.next())
    assert t.deadline == pytest.approx(start + 0.5, abs=1e-9)
    assert time.monotonic() - (start + 0.5) < 0.05
    time.sleep(0.5)                          # a stall of five intervals
    assert t.next() == 0                     # late: the schedule starts again from now
    ticks, end = 0, time.monotonic() + 0.3
    while time.monotonic() < end:
        time.sleep(t.next())
        ticks += 1
    assert ticks <= 4, ticks                 # about 3, not the 5 missed ticks first
    assert t.within(0.01) <= 0.01


# -- the host's page allocator, live and replayed (issue 24) ----------------------------------------

def test_kernel_state_and_earlier_vmstat_reach_the_ledger_and_replay_exactly(live_cgroup, tmp_path):
    """The live feed reads zoneinfo/buddyinfo/PSI about once a second and keeps the sample of a
    second earlier; the ledger then takes MemAvailable apart (to within what moved between two
    reads) and compares /proc/vmstat; a recording carries the "kernel" event, and the replayed
    item gives the same ledger."""
    from spark_memprobe.feed import ledger_of
    from spark_memprobe.feed.recorder import Recorder, recording_header
    from spark_memprobe.feed.replay import ReplayFeed
    from spark_memprobe.recording import Recording

    live_cgroup.start_child()
    r = Resolver()
    feed = LiveFeed(r, r.resolve(f"cgroup:{live_cgroup.path}"))
    rec = Recorder(str(tmp_path / "k.db"), recording_header(feed, 0.1, 0.9))
    try:
        item, t0 = None, time.monotonic()
        while time.monotonic() - t0 < 5:
            item, _ = feed.tick()
            rec.write(item)
            if item.kernel is not None and item.before is not None:
                break
            time.sleep(0.1)
    finally:
        feed.close()
        rec.close()
    assert item.kernel is not None and item.before is not None
    assert 1.0 <= (item.sample.mono_ns - item.before.mono_ns) / 1e9 < 1.5
    lg = ledger_of(item, feed.header)
    assert lg.mem_available is not None and lg.free_in_2mib_blocks_bytes is not None
    # meminfo comes with the sample, zoneinfo up to a second earlier: pages move in between
    assert abs(lg.mem_available.difference_bytes) < 64 * MiB, lg.mem_available
    assert lg.cell("reserve", "host_used") == lg.mem_available.reserve_bytes > 0
    assert next(x for x in lg.rules if x.rule == "reclaim_stalls").status in ("clear", "raised")
    replay = ReplayFeed(Recording(str(tmp_path / "k.db")))
    again = replay.item(len(replay) - 1)
    assert again.kernel == item.kernel and again.before.mono_ns == item.before.mono_ns
    assert dataclasses.asdict(ledger_of(again, replay.header)) == dataclasses.asdict(lg)
