"""The flight recorder's 100 ms ring in a C thread (csrc/ring.c, sources/native.py NativeRing):
its entries, its own descriptors, its MemAvailable watch, and the recorder waking once a second
with it and still catching a fall of MemAvailable between its ticks."""
from __future__ import annotations

import os
import time

import pytest

from livecg import MiB
from test_flight import in_process
from test_psi import cg  # noqa: F401 - the live cgroup fixture
from spark_memprobe.sources.sampler import native_available, open_ring

pytestmark = pytest.mark.skipif(not native_available()[0], reason=f"native sampler not built: {native_available()[1]}")


def fds_open() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def meminfo_file(path: str, avail_kb: int) -> None:
    """A file with /proc/meminfo's first lines (fs/proc/meminfo.c order and format), rewritten in
    place at the same length: the ring keeps reading the file it was given."""
    text = (f"MemTotal:       24683520 kB\nMemFree:        23000000 kB\nMemAvailable:   {avail_kb:8d} kB\n"
            "Buffers:            2048 kB\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, text, 0)
    finally:
        os.close(fd)


def meminfo_ring(tmp_path):
    """A ring every 20 ms over a meminfo_file with MemAvailable 5000 kB, watching for a fall below
    4000 kB: (the file's path, its descriptor, the eventfd, the ring)."""
    path = str(tmp_path / "meminfo")
    meminfo_file(path, 5000)
    fd = os.open(path, os.O_RDONLY)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    return path, fd, efd, open_ring([fd], [4096], 0.02, 10, avail_below_bytes=4000 * 1024, notify_fd=efd)


def test_entries_every_interval_from_its_own_descriptors(cg):
    before = fds_open()
    usage = os.open(f"{cg.dir}/{'memory.current' if cg.version == 2 else 'memory.usage_in_bytes'}", os.O_RDONLY)
    meminfo = os.open("/proc/meminfo", os.O_RDONLY)
    r = open_ring([meminfo, usage], [16384, 32], 0.1, 5)
    try:
        # the caller's descriptors closed and their numbers taken by another file: the ring reads its own
        os.close(usage)
        os.close(meminfo)
        other = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]
        time.sleep(0.35)
        first = r.take()
        assert 2 <= len(first) <= 4, [e[0] for e in first]
        for mono, wall, texts, lens in first:
            assert lens[0] > 0 and texts.startswith(b"MemTotal:"), (lens, texts[:40])
            assert lens[1] > 0 and int(texts[lens[0]:lens[0] + lens[1]]) >= 0
            assert abs(wall / 1e9 - time.time()) < 2
        gaps = [b[0] - a[0] for a, b in zip(first, first[1:])]
        assert all(0.05e9 < g < 0.3e9 for g in gaps), gaps
        assert r.take() == [] or len(r.take()) <= 1           # only what came since
        time.sleep(1.0)                                        # ten reads into five slots: the newest five
        newest = r.newest()                                    # what the base tick reads, left for take()
        later = r.take()
        assert len(later) == 5 and later[0][0] > first[-1][0], [e[0] for e in later]
        assert newest is not None and newest[0] >= later[-2][0] and newest in later[-2:]
        assert r.available() == (None, False)                  # no MemAvailable watch asked for
        for f in other:
            os.close(f)
    finally:
        r.stop()
    assert fds_open() == before, "the ring left descriptors open"


def test_memavailable_falling_below_is_said_once_per_fall(tmp_path):
    path, fd, efd, r = meminfo_ring(tmp_path)

    def fell() -> int:
        try:
            return os.eventfd_read(efd)
        except BlockingIOError:
            return 0
    try:
        time.sleep(0.15)
        assert r.available() == (5000 * 1024, False) and fell() == 0
        meminfo_file(path, 1000)
        time.sleep(0.2)                                        # ~10 reads below: one fall
        assert r.available() == (1000 * 1024, True) and fell() == 1
        meminfo_file(path, 3999)
        time.sleep(0.2)
        assert fell() == 0                                     # still below: no new fall
        meminfo_file(path, 4000)
        time.sleep(0.15)
        assert r.available() == (4000 * 1024, False)
        meminfo_file(path, 10)
        time.sleep(0.15)
        assert fell() == 1 and r.available() == (10 * 1024, True)
    finally:
        r.stop()
        os.close(fd)
        os.close(efd)


def test_the_recorder_wakes_once_a_second_and_catches_memavailable_falling_between(cg, tmp_path):
    """Between base ticks only the C thread reads: a fall of MemAvailable below --available-below
    there is a trigger at once (not at the next base tick), and the event file starts with the
    thread's 100 ms reads from before it."""
    from spark_memprobe.recording import Recording
    avail = int(open("/proc/meminfo").read().split("MemAvailable:")[1].split()[0]) * 1024
    if avail < 2 << 30:
        pytest.skip(f"MemAvailable is {avail >> 20} MiB: the test makes it fall by 900 MiB and needs 2 GiB")
    said: list[tuple[float, str]] = []
    d = str(tmp_path / "flight")
    fr = in_process(d, [cg], log=lambda m: said.append((time.monotonic(), m)),
                    available_below_bytes=avail - 300 * MiB)
    cg.start_child()
    try:
        ticks = 0
        end = time.monotonic() + 3.5
        while True:
            fr.tick()
            ticks += 1
            if time.monotonic() >= end:
                break
            fr.wait(fr.step_s())
        assert fr.thread_ring is not None and fr.step_s() > 0.5, fr.thread_ring_error     # right after a base tick
        assert ticks <= 5, f"{ticks} ticks in 3.5 s: the recorder did not wait a base period"
        assert not [m for _, m in said if "trigger" in m], said
        assert len(fr.ring) <= 1, "the thread's entries were copied into Python before any trigger"
        cg.do(f"anon {900 * MiB}")
        grown = time.monotonic()
        fr.wait(1.0)              # no tick (the recorder's own reads) from here: the thread's eventfd wakes it
        hit = [(t, m) for t, m in said if m.startswith("trigger available")]
        assert hit, said
        assert hit[0][0] - grown < 0.5, f"trigger {hit[0][0] - grown:.2f} s after the memory was in place"
        assert fr.thread_ring is None and fr.step_s() == 0.1        # the window's own 100 ms ticks
        for _ in range(3):
            fr.tick()
            time.sleep(0.1)
    finally:
        fr.close()
        cg.stop_child()
    ev = [n for n in os.listdir(d) if n.startswith("flight-event-") and "-available-host" in n]
    assert len(ev) == 1, os.listdir(d)
    rec = Recording(os.path.join(d, ev[0]))
    trig = rec.events("trigger")[0].mono_ns
    before = [m for m in rec.mono if trig - 1.5e9 <= m < trig]
    assert len(before) >= 10, f"{len(before)} samples in the 1.5 s before the trigger"
    assert len([m for m in rec.mono if m < trig]) >= 30, "the ring's minute (here 3.5 s of it) is not all there"


def test_the_rings_eventfd_is_its_own(tmp_path):
    """The caller closes its eventfd and the number goes to a file: the thread's signal of a fall
    goes to its own duplicate, never into that file."""
    path, fd, efd, r = meminfo_ring(tmp_path)
    try:
        os.close(efd)
        victim = os.open(tmp_path / "victim", os.O_WRONLY | os.O_CREAT, 0o600)
        assert victim == efd                                   # the lowest free number is reused
        meminfo_file(path, 1000)
        time.sleep(0.15)
        assert r.available() == (1000 * 1024, True)            # the fall was seen, and signalled
    finally:
        r.stop()
        os.close(fd)
    os.close(victim)
    assert os.path.getsize(tmp_path / "victim") == 0
