"""Burst mode of `memprobe record` (feed/burst.py, docs/record.md) on a real cgroup: the C ring
at 1 kHz, packed batches in the recording that read back exactly, a transient peak that the
screen-rate samples miss and the report shows, no drained data lost on SIGTERM, ring overruns
counted and reported."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from livecg import MiB, LiveCgroup
from spark_memprobe.recording import Recording, RecordingWriter, flatten

try:
    from spark_memprobe._native import ffi, lib
    from spark_memprobe.sources.native import NativeSampler
except ImportError:
    NativeSampler = None

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a memory cgroup"),
              pytest.mark.skipif(NativeSampler is None, reason="native extension not built")]
MEMPROBE = [sys.executable, "-m", "spark_memprobe.cli"]
SPIKE = 64 * MiB


@pytest.fixture
def cg():
    c = LiveCgroup()
    try:
        c.start_child()
        yield c
    finally:
        c.cleanup()


def record(cg, out, *extra):
    return subprocess.Popen(MEMPROBE + ["record", cg.path, "-o", str(out), "--interval", "1ms", "--no-bpf", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def spikes(values, above):
    """Separate stretches of values over `above`."""
    n, inside = 0, False
    for v in values:
        hi = v is not None and v > above
        n += hi and not inside
        inside = hi
    return n


def test_packed_batch_reads_back_exactly(cg, tmp_path):
    """Burst records read back as the very values of the Sample the same ticks convert to."""
    cg.do(f"anon {8 * MiB}")
    with NativeSampler(cgroup=cg.path) as n:
        k = 40
        arr = ffi.new("struct mp_sample[]", k)
        for i in range(k):
            lib.mp_sample_once(n.t, ffi.addressof(arr, i))
            if i == 20:
                cg.do(f"anon {16 * MiB}")      # the child keeps its last block: +8 MiB from here
        buf = ffi.new("uint8_t[]", lib.mp_pack_bound(k))
        size = lib.mp_pack(arr, k, buf, lib.mp_pack_bound(k))
        assert size > 0
        samples = []
        for i in range(k):
            c = ffi.new("struct mp_sample *")
            ffi.memmove(c, ffi.addressof(arr, i), ffi.sizeof("struct mp_sample"))
            samples.append(flatten(n.to_sample(c)))
        layout = n.burst_layout()
    w = RecordingWriter(str(tmp_path / "b.db"), {"interval_ns": 1000000})
    w.add_event(0, "burst_layout", {"id": 1, **layout})
    w.add_burst(samples[0]["mono_ns"], samples[-1]["mono_ns"], k, 1, 0, ffi.buffer(buf, size)[:])
    w.close()
    paths = sorted(layout["fields"])
    assert "cgroup/current_bytes" in paths and "processes/#0/rss_anon_bytes" in paths and len(paths) > 200
    with Recording(str(tmp_path / "b.db")) as rec:
        mono, got = rec.bursts().series(paths)
    assert mono == [s["mono_ns"] for s in samples]
    for p in paths:
        assert got[p] == [s.get(p) for s in samples], p
    cur = got["cgroup/current_bytes"]
    assert max(cur) - min(cur) > 6 * MiB          # the step in the middle is in the series


def test_short_peaks_are_recorded_and_reported(cg, tmp_path):
    out = tmp_path / "burst.db"
    # after "free" the child still holds its last block (livecg.CHILD's `b`): each "anon" then
    # touches a second block while the first is alive and frees the first when done, a peak of
    # SPIKE for the time the touch takes (about 10-30 ms here)
    cg.do(f"anon {SPIKE}")
    cg.do("free")
    base = int(open(f"{cg.dir}/{'memory.current' if cg.version == 2 else 'memory.usage_in_bytes'}").read())
    p = record(cg, out, "--duration", "3s")
    time.sleep(1.0)
    for _ in range(5):
        cg.do(f"anon {SPIKE}")
        cg.do("free")
        time.sleep(0.25)
    text, _ = p.communicate(timeout=30)
    assert p.returncode == 0, text
    assert "burst mode: the native sampler reads every 1 ms" in text
    with Recording(str(out)) as rec:
        b = rec.bursts()
        mono, v = b.series(["cgroup/current_bytes"])
        cur = v["cgroup/current_bytes"]
        screen = [r[2] for r in rec.timeline(["cg_current_bytes"])]
        assert b.dropped == 0
        assert f"burst: {len(b)} samples every 1 ms" in text      # everything drained was written
        assert len(b) > 2000 and 20 <= len(rec) <= 40             # 1 kHz in C, 10 Hz in Python
    gaps = [(y - x) / 1e6 for x, y in zip(mono, mono[1:])]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(1.0, abs=0.2)
    assert max(cur) >= base + SPIKE * 9 // 10
    assert spikes(cur, base + SPIKE * 3 // 4) == 5
    assert spikes(screen, base + SPIKE * 3 // 4) < 5        # the 100 ms samples miss at least one
    rep = tmp_path / "r.md"
    r = subprocess.run(MEMPROBE + ["report", str(out), "-o", str(rep)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    md = rep.read_text()
    assert "burst mode: " in md and "0 dropped by the sampler's ring" in md
    assert "burst peak of memory.current" in md and "memory.current (burst)" in md


def test_sigterm_loses_no_drained_data(cg, tmp_path):
    out = tmp_path / "term.db"
    p = record(cg, out)
    time.sleep(1.5)
    t_stop = time.monotonic_ns()
    p.send_signal(signal.SIGTERM)
    text, _ = p.communicate(timeout=30)
    assert p.returncode == 0, text
    with Recording(str(out)) as rec:
        b = rec.bursts()
        mono, _ = b.series([])
    assert f"burst: {len(b)} samples" in text and "0 dropped" in text
    assert len(mono) == len(b) > 500
    # the ring is drained once the thread has stopped, after the signal: the samples taken since
    # the loop's last drain (up to 100 ms before) are in the file too, up to the last 1 ms tick
    assert mono[-1] >= t_stop - 3e6
    assert max(y - x for x, y in zip(mono, mono[1:])) < 100e6     # no batch missing


def test_ring_overrun_is_counted_and_reported(cg, tmp_path, monkeypatch, capsys):
    from spark_memprobe.cli.target import live_feed
    from spark_memprobe.feed import burst
    from spark_memprobe.feed.recorder import Recorder, recording_header
    monkeypatch.setattr(burst, "RING_S", 0.01)             # a 64-sample ring: 64 ms at 1 kHz
    args = argparse.Namespace(target=cg.path, proc="/proc", cgroup_root="/sys/fs/cgroup", bpf=False, exit_grace=2.0)
    feed = live_feed(args)
    rec = Recorder(str(tmp_path / "o.db"), recording_header(feed, 0.1, 0.9))
    said = []
    bf = burst.BurstFeed(feed, rec, 0.001, say=said.append)
    try:
        assert bf.capacity == burst.RING_MIN
        time.sleep(0.4)                                     # nobody drains: the ring overwrites
        item, _ = bf.tick()
        rec.write(item)
        ev = [e for e in item.events if e["kind"] == "burst"]
        assert ev and ev[0]["facts"]["dropped"] > 200 and "overrun" in ev[0]["message"]
    finally:
        bf.close()
        rec.close()
    assert said and f"{bf.dropped} dropped" in said[-1]
    with Recording(str(tmp_path / "o.db")) as r:
        assert r.bursts().dropped == bf.dropped > 200
        assert any(e.value["kind"] == "burst" for e in r.events("target"))


def test_burst_without_native_falls_back(cg, tmp_path):
    out = tmp_path / "pure.db"
    env = dict(os.environ, MEMPROBE_PUREPYTHON="1")
    r = subprocess.run(MEMPROBE + ["record", cg.path, "-o", str(out), "--interval", "1ms", "--no-bpf",
                                   "--duration", "0.5s"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "burst mode (--interval under 10ms) needs the native sampler" in r.stdout
    assert "recording every 10 ms instead" in r.stdout
    with Recording(str(out)) as rec:
        assert len(rec.bursts()) == 0 and len(rec) >= 20
        assert rec.header["interval_ns"] == 10_000_000
