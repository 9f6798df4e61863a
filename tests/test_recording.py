"""Recordings replay exactly; a kill -9 loses at most the last second; bad files get one line."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fixture_loader import load_step, steps
from spark_memprobe.recording import (KEYFRAME_EVERY, Recording, RecordingError, RecordingWriter, flatten,
                                      unflatten)
from spark_memprobe.samples import sample_to_dict
from spark_memprobe.sources.sampler import PureSampler

ALL = [(s, "memprobe_fixture") for s in steps("h100-cgroup2-scenario")] + \
      [(s, "memprobe_engine") for s in steps("h100-inference-scenario")]


def fixture_samples():
    out = []
    for i, (st, cg) in enumerate(ALL):
        host, s = load_step(st, cg)
        s.mono_ns, s.wall_ns = i * 100_000_000, 1_700_000_000_000_000_000 + i
        out.append((host, s))
    return out


def test_flatten_roundtrip():
    d = {"a": {"b": [1, {"c": None}], "e": {}, "f": []}, "g": "x", "h": {"0": 5}}
    assert unflatten(flatten(d)) == d


def test_fixture_samples_replay_exactly(tmp_path):
    samples = fixture_samples()
    path = str(tmp_path / "run.db")
    from dataclasses import asdict
    w = RecordingWriter(path, {"host": asdict(samples[0][0]), "interval_ns": 100_000_000})
    for _, s in samples:
        w.add_sample(s)
    w.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    r = Recording(path)
    assert len(r) == len(samples)
    got = list(r.samples())
    for (_, want), have in zip(samples, got):
        assert sample_to_dict(have) == sample_to_dict(want)
    assert r.host == samples[0][0]
    # random access rebuilds from the last keyframe
    assert sample_to_dict(r.sample(7)) == sample_to_dict(samples[7][1])
    tl = r.timeline(["cg_current_bytes", "mem_available_bytes"])
    assert [t[2] for t in tl] == [s.cgroup.current_bytes for _, s in samples]


def test_live_samples_delta_and_keyframes(tmp_path):
    path = str(tmp_path / "live.db")
    w = RecordingWriter(path, {})
    want = []
    with PureSampler() as smp:
        for _ in range(KEYFRAME_EVERY + 5):
            s = smp.sample()
            want.append(sample_to_dict(s))
            w.add_sample(s)
    w.close()
    r = Recording(path)
    assert r.keyframes == [0, KEYFRAME_EVERY]
    assert [sample_to_dict(s) for s in r.samples()] == want
    assert sample_to_dict(r.sample(KEYFRAME_EVERY + 3)) == want[KEYFRAME_EVERY + 3]
    size = os.path.getsize(path)
    print(f"{size / len(want):.0f} bytes per sample (host-only samples)")


WRITER = r"""
import sys, time
from spark_memprobe.recording import RecordingWriter
from spark_memprobe.sources.sampler import PureSampler
w = RecordingWriter(sys.argv[1], {})
with PureSampler() as smp:
    while True:
        w.add_sample(smp.sample())
        print("tick", flush=True)
        time.sleep(0.1)
"""


def test_kill_9_loses_at_most_the_last_second(tmp_path):
    path = str(tmp_path / "killed.db")
    p = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    ticks = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        p.stdout.readline()
        ticks += 1
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = Recording(path)
    assert ticks - len(r) <= 11, (ticks, len(r))       # 10 Hz: at most one second lost
    assert len(list(r.samples())) == len(r)


def test_bad_files_one_line_errors(tmp_path):
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE x(a)")
    db.commit()
    db.close()
    text = tmp_path / "text.db"
    text.write_text("hello")
    good = tmp_path / "good.db"
    w = RecordingWriter(str(good), {})
    with PureSampler() as smp:
        for _ in range(3):
            w.add_sample(smp.sample())
    w.close()
    newer = tmp_path / "newer.db"
    newer.write_bytes(good.read_bytes())
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    trunc = tmp_path / "trunc.db"
    trunc.write_bytes(good.read_bytes()[:3000])
    cases = {str(foreign): "foreign", str(text): "not an SQLite file", str(newer): "newer memprobe",
             str(tmp_path / "none.db"): "no such recording"}
    for path, text_ in cases.items():
        with pytest.raises(RecordingError) as e:
            Recording(path)
        assert text_ in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RecordingError):
        r = Recording(str(trunc))
        list(r.samples())


def test_refuses_to_overwrite_and_symlinks(tmp_path):
    p = tmp_path / "x.db"
    p.write_text("keep")
    with pytest.raises(RecordingError, match="exists"):
        RecordingWriter(str(p), {})
    assert p.read_text() == "keep"
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(RecordingError, match="symlink"):
        RecordingWriter(str(link), {}, overwrite=True)
    assert not (tmp_path / "elsewhere.db").exists()


def test_size_bound_stops_and_says_so(tmp_path):
    path = str(tmp_path / "small.db")
    w = RecordingWriter(path, {}, max_bytes=200_000)
    with PureSampler() as smp:
        kept = sum(w.add_sample(smp.sample()) for _ in range(2000))
    w.close()
    r = Recording(path)
    assert len(r) == kept < 2000
    assert r.events("recording_stopped")
