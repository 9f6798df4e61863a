"""Poll less (issue 21): the samplers carry an idle target's memory.stat and process status
values while its usage counter stands still (stat_max_age_s), on a real memory cgroup; and a
sleep between ticks ends early on real memory events (feed/ticker.py EventWake)."""
from __future__ import annotations

import os
import re
import threading
import time

import pytest

from livecg import MiB, fresh_file
from test_psi import PSI, cg, limit  # noqa: F401 - the live cgroup fixture
from spark_memprobe.sources.sampler import PureSampler
from spark_memprobe.feed.ticker import EventWake

try:
    from spark_memprobe.sources.native import NativeSampler
except ImportError:
    NativeSampler = None

SAMPLERS = [PureSampler] + ([NativeSampler] if NativeSampler else [])
CARRIED = re.compile(r"not read again: values of the read at mono_ns (\d+)")


def carried_from(s):
    """mono_ns of the read whose memory.stat the sample carries, None when it read it now."""
    m = [CARRIED.search(n) for n in s.notes]
    m = [x for x in m if x]
    return int(m[0].group(1)) if m else None


@pytest.mark.parametrize("cls", SAMPLERS, ids=lambda c: c.kind)
def test_idle_target_is_not_read_again(cg, cls):
    cg.start_child()
    with cls(cgroup=cg.path, version=cg.version, stat_max_age_s=30) as smp:
        first = smp.sample()
        later = [smp.sample() for _ in range(5)]
        assert carried_from(first) is None
        # the idle child's usage can still move by a charge (once in CI, in a loaded batch): a tick
        # whose counter moved reads in full and is the one the next ticks carry from
        full, carried = first, 0
        for s in later:
            if s.cgroup.current_bytes != full.cgroup.current_bytes:    # the counter is read every tick
                assert carried_from(s) is None
                full = s
                continue
            carried += 1
            assert carried_from(s) == full.mono_ns            # says how old its values are
            assert s.cgroup.stat == full.cgroup.stat and s.processes == full.processes
        assert carried >= 3 and smp.full_reads == 1 + 5 - carried
    with cls(cgroup=cg.path, version=cg.version) as smp:                   # off: every tick reads
        [smp.sample() for _ in range(3)]
        assert smp.full_reads == 3


def idle_tick(smp):
    """A tick carried from the last full read, its usage counter unchanged since. The idle child's
    usage can still move by a late charge (seen once in CI, in a fresh-clone run): a tick whose
    counter moved must be read in full, and the next one is tried."""
    prev = smp.sample()
    for _ in range(20):
        s = smp.sample()
        if s.cgroup.current_bytes == prev.cgroup.current_bytes:
            assert carried_from(s) == (carried_from(prev) or prev.mono_ns)
            return s
        assert carried_from(s) is None
        prev = s
    pytest.fail("the idle child's usage moved at every one of 20 ticks")


@pytest.mark.parametrize("cls", SAMPLERS, ids=lambda c: c.kind)
def test_a_change_of_usage_is_read_in_full_at_the_next_tick(cg, cls):
    cg.start_child()
    with cls(cgroup=cg.path, version=cg.version, stat_max_age_s=30) as smp:
        a = idle_tick(smp)
        reads = smp.full_reads
        cg.do(f"anon {8 * MiB}")
        b = smp.sample()
        assert carried_from(b) is None and smp.full_reads == reads + 1
        assert b.cgroup.stat_get("anon") - a.cgroup.stat_get("anon") >= 8 * MiB - 64 * 1024
        assert b.processes[0].rss_anon_bytes - a.processes[0].rss_anon_bytes >= 8 * MiB - 64 * 1024
        assert carried_from(idle_tick(smp)) >= b.mono_ns     # idle again: carried from the new read (or a later one)


@pytest.mark.parametrize("cls", SAMPLERS, ids=lambda c: c.kind)
def test_the_max_age_forces_a_read(cg, cls):
    cg.start_child()
    with cls(cgroup=cg.path, version=cg.version, stat_max_age_s=0.3) as smp:
        a = smp.sample()
        assert carried_from(smp.sample()) == a.mono_ns
        time.sleep(0.35)
        b = smp.sample()
        assert carried_from(b) is None and smp.full_reads == 2
        assert carried_from(smp.sample(full=True)) is None and smp.full_reads == 3   # full: read whatever


@pytest.mark.skipif(NativeSampler is None, reason="native extension not built")
def test_both_samplers_carry_alike_on_a_live_cgroup(cg):
    pid = cg.start_child()
    kw = dict(cgroup=cg.path, version=cg.version, stat_max_age_s=30)
    with PureSampler(**kw) as p, NativeSampler(**kw) as n:
        runs = []
        for step in ("", "", f"anon {4 * MiB}", "", ""):
            if step:
                cg.do(step)
            a, b = p.sample(), n.sample()
            runs.append((carried_from(a) is None, carried_from(b) is None))
            assert [x.pid for x in a.processes] == [x.pid for x in b.processes] == [pid]
            assert a.cgroup.current_bytes == b.cgroup.current_bytes
        assert runs == [(True, True), (False, False), (True, True), (False, False), (False, False)]
        assert p.full_reads == n.full_reads == 2


def oom_kill_during(cg, wait):
    """Drive cg past a 32 MiB limit into an OOM kill, in a thread, while wait() runs: (what
    wait() returned, the seconds it took)."""
    limit(cg, 32 * MiB)
    killer = threading.Thread(target=lambda: pytest.raises(RuntimeError, cg.do, f"anon {64 * MiB}"))
    t0 = time.monotonic()
    killer.start()
    got = wait()
    took = time.monotonic() - t0
    killer.join()
    return got, took


def test_limit_events_wake_the_sleep_at_once(cg):
    """An OOM kill in the target ends a 20 s sleep at once; the wait after an early wake sleeps
    its time out (no spin on a cgroup at its limit)."""
    cg.start_child()
    w = EventWake(None, cg.dir, cg.version)
    try:
        assert w.missing == []
        why, took = oom_kill_during(cg, lambda: w.wait(20))
        # v1 signals the eventfd as the OOM starts, before oom_kill counts it: "max" has grown by then
        assert why and why.startswith(f"limit events of {cg.dir}") and re.search(r"(max|oom_kill) \+\d", why), why
        assert took < 5, f"woken after {took:.1f} s"
        t0 = time.monotonic()
        assert w.wait(0.3) is None and time.monotonic() - t0 >= 0.29
    finally:
        w.close()


def test_memory_pressure_wakes_the_sleep_early(cg, tmp_path):
    if not os.path.exists(PSI):
        pytest.skip(f"{PSI} absent: kernel without CONFIG_PSI (or psi=0)")
    # the host's PSI (v1 has no memory.pressure), 1 ms of stall within 2 s: a child reading a
    # file four times its cgroup's limit reclaims its own page cache all the time (tests/test_psi.py)
    psi = f"{cg.dir}/memory.pressure" if cg.version == 2 else PSI
    w = EventWake(psi, None, None, stall_us=1000, window_us=2_000_000)
    path = fresh_file(str(tmp_path), 128 * MiB)
    stop = threading.Event()
    try:
        assert w.missing == []
        cg.start_child()
        limit(cg, 32 * MiB)

        def thrash():
            while not stop.is_set():
                cg.do(f"read {path}")
        th = threading.Thread(target=thrash)
        t0 = time.monotonic()
        th.start()
        why = w.wait(30)
        took = time.monotonic() - t0
        assert why and "memory pressure" in why, why
        assert took < 15, f"woken after {took:.1f} s"
    finally:
        stop.set()
        if "th" in locals():
            th.join()
        w.close()
        os.unlink(path)


def test_live_feed_wait_is_woken_and_says_why(cg):
    """What `attach` without a terminal does between ticks: an OOM in the target ends a 20 s
    wait, and the next item says it was sampled early and why."""
    from spark_memprobe.feed.live import LiveFeed
    from spark_memprobe.sources.targets.resolver import Resolver
    cg.start_child()
    r = Resolver()
    feed = LiveFeed(r, r.resolve(f"cgroup:{cg.path}"))
    try:
        feed.tick()
        woke, took = oom_kill_during(cg, lambda: feed.wait(20))
        assert woke and took < 5, f"woken {woke} after {took:.1f} s"
        item, _end = feed.tick()
        woken = [e for e in item.events if e["kind"] == "woken"]
        assert len(woken) == 1 and woken[0]["message"].startswith("sampled early: limit events of"), item.events
        assert not [e for e in feed.tick()[0].events if e["kind"] == "woken"]      # said once
    finally:
        feed.close()
