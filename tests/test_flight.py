"""The flight recorder as a service, for real: `memprobe record --dir` runs as a background
process over a live memory cgroup (v1 here, v2 elsewhere: tests/livecg.py); the cgroup is driven
into an OOM kill; the report of that event; rotation and retention; kill -9 and a restart."""
from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import redirect_stdout

import pytest

from livecg import MiB, LiveCgroup, fresh_file
from test_psi import cg  # noqa: F401 - the live cgroup fixture
from spark_memprobe.analysis.flight import flight_files
from spark_memprobe.cli import main
from spark_memprobe.feed.flight import LIGHT_NOTE, VMSTAT_NOTE, expired
from spark_memprobe.recording import Recording, RecordingError
from spark_memprobe.sources.bpf import base_status
from spark_memprobe.sources.bpf.supported import tracefs
from spark_memprobe.sources.sampler import native_available


def recorder(d: str, cg: LiveCgroup, *extra: str, bpf: bool = False) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "record", "--dir", d,
                          "--bpf" if bpf else "--no-bpf", "--psi-stall", "off", f"cgroup:{cg.path}", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p


def wait_for(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=20)
    return out


def base_files(d: str, who: str) -> list:
    return [f for f in flight_files(d) if f.kind == "base" and re.fullmatch(re.escape(who) + r"(-[0-9]+)?", f.rest)]


def in_process(d: str, cgs: list, log=lambda m: None, **opts):
    """The flight recorder over live cgroups as `record --dir d --psi-stall off cgroup:...` builds
    it, ticked by the test itself."""
    from spark_memprobe.feed.flight import FlightOptions, FlightRecorder
    from spark_memprobe.feed.multi import TargetSet
    ts = TargetSet("/proc", "/sys/fs/cgroup", [f"cgroup:{c.path}" for c in cgs], False, 5.0, 0.9, lambda k, m: None,
                   lambda stage, e: None)
    return FlightRecorder(FlightOptions(directory=d, psi_stall_us=None, **opts), ts, log)


def run_busy(fr, cg: LiveCgroup, path: str, seconds: float) -> None:
    """Tick fr every 100 ms for `seconds`; once a second, while its child lives, the cgroup's usage
    moves (path read into its page cache and 1 MiB more anonymous memory, in turns)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if fr.n_fast % 10 == 5 and cg.child is not None and cg.child.poll() is None:
            cg.do(f"read {path}" if fr.n_fast % 20 == 5 else f"anon {MiB}")
        fr.tick()
        time.sleep(0.1)


def test_oom_kill_is_recorded_at_100ms_and_reported(cg, tmp_path):
    d = str(tmp_path / "flight")
    cg.start_child()
    cg.set("memory.limit_in_bytes" if cg.version == 1 else "memory.max", str(96 * MiB))
    label = f"cgroup:{cg.path}".replace(":", "_").replace("/", "_")
    p = recorder(d, cg, "--after", "2s")
    try:
        wait_for(lambda: os.path.isdir(d) and base_files(d, label))
        time.sleep(1.0)
        for _ in range(6):                           # grows 48 MiB over 3 s, then asks for too much
            cg.do(f"anon {8 * MiB}")
            time.sleep(0.5)
        with pytest.raises(RuntimeError):
            cg.do(f"anon {128 * MiB}")
        cg.child.wait()
        wait_for(lambda: any(f.kind == "event" for f in flight_files(d)))
        time.sleep(2.5)                              # the 2 s after the kill
    finally:
        out = stop(p)
    assert "trigger oom_kill" in out, out
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(f.path).st_mode) == 0o600 for f in flight_files(d))
    # base files take one small row a commit: 1 KiB pages (feed/flight.py BASE_PAGE_BYTES); event files,
    # ten 100 ms samples a commit, SQLite's default
    assert {(f.kind, page_size(f.path)) for f in flight_files(d)} == {("base", 1024), ("event", 4096)}
    ev = [f for f in flight_files(d) if f.kind == "event"]
    assert {f.rest.split("-", 1)[1] for f in ev} == {"host", label}      # the target's window and the host's
    target_ev = next(f for f in ev if f.rest.endswith(label))
    with Recording(target_ev.path) as rec:
        trig = next(e for e in rec.events("trigger") if e.value["kind"] == "oom_kill")
        before = [i for i, m in enumerate(rec.mono) if m < trig.mono_ns]
        gaps = [(rec.mono[i + 1] - rec.mono[i]) / 1e6 for i in before[:-1]]
        light = [s for s in rec.samples(0, len(before)) if LIGHT_NOTE in s.notes]
    # the ring: every 100 ms from the recorder's start (more than 4 s before the kill) to it
    assert len(before) >= 40 and len(light) >= 30, (len(before), len(light))
    # each holds the usage counter and the host's meminfo of its 100 ms tick
    assert all(s.cgroup.current_bytes and s.meminfo.bytes["MemTotal"] for s in light)
    assert max(s.cgroup.current_bytes for s in light) - min(s.cgroup.current_bytes for s in light) >= 40 * MiB
    assert sum(1 for g in gaps if g <= 150) >= 0.8 * len(gaps), gaps
    text = io.StringIO()
    with redirect_stdout(text):
        assert main(["report", d, "--event", "oom"]) == 0
    md = text.getvalue()
    assert "**trigger" in md and "OOM kill in memory cgroup" in md and "oom_kill +1" in md
    grew = md.split("before it: ", 1)[1].split("|")[0]
    assert "anon +" in grew, grew                  # what grew: the child's anonymous memory
    assert "every 0.1 s" in md
    # the host's vmstat is in the host's base file and the event files, not in each target's base file
    full_ev = [s for s in rec_samples(target_ev.path) if LIGHT_NOTE not in s.notes]
    assert full_ev and all(s.vmstat and s.vmstat.counters for s in full_ev)
    assert all(s.vmstat and s.vmstat.counters for s in rec_samples(base_files(d, "host")[0].path))
    target_base = base_files(d, label)[0].path
    tb = rec_samples(target_base)
    assert tb and all(s.vmstat is None and VMSTAT_NOTE in s.notes and s.meminfo.bytes["MemTotal"] for s in tb)
    text = io.StringIO()
    with redirect_stdout(text):
        assert main(["report", target_base]) == 0          # a target's base file alone still reports
    assert "anon" in text.getvalue()


def page_size(path: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("PRAGMA page_size").fetchone()[0]


def rec_samples(path: str) -> list:
    with Recording(path) as rec:
        return list(rec.samples(0, len(rec)))


def test_memory_pressure_opens_a_window(cg, tmp_path):
    """The recorder's PSI trigger fires on real reclaim: a child reads a file four times its
    cgroup's limit over and over (tests/test_psi.py). On a v1 host the trigger is the host's
    /proc/pressure/memory; 1 ms of stall within 2 s."""
    if not os.path.exists("/proc/pressure/memory"):
        pytest.skip("/proc/pressure/memory absent: kernel without CONFIG_PSI (or psi=0)")
    d = str(tmp_path / "flight")
    path = fresh_file(str(tmp_path), 128 * MiB)
    cg.start_child()
    cg.set("memory.limit_in_bytes" if cg.version == 1 else "memory.max", str(32 * MiB))
    p = recorder(d, cg, "--psi-stall", "1ms", "--after", "1s")
    try:
        wait_for(lambda: os.path.isdir(d) and any(f.kind == "base" for f in flight_files(d)))
        end = time.monotonic() + 20
        while time.monotonic() < end and not psi_triggers(d):      # the limit's "max" comes first
            cg.do(f"read {path}")
        time.sleep(1.5)
    finally:
        out = stop(p)
        os.unlink(path)
    assert "trigger psi" in out, out
    assert any("memory pressure" in v["message"] for v in psi_triggers(d))


def psi_triggers(d: str) -> list:
    found = []
    for f in flight_files(d):
        if f.kind == "event":
            try:
                with Recording(f.path) as rec:
                    found += [e.value for e in rec.events("trigger") if e.value["kind"] == "psi"]
            except RecordingError:                   # created this instant, no header yet
                pass
    return found


def test_kill_9_loses_at_most_a_second_and_a_restart_overwrites_nothing(cg, tmp_path):
    d = str(tmp_path / "flight")
    cg.start_child()
    p = recorder(d, cg)
    try:
        wait_for(lambda: os.path.isdir(d) and base_files(d, "host"))
        time.sleep(3.2)
        alive = p.poll() is None
        killed_at = time.time_ns()
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        out = stop(p)
    assert alive, f"the recorder had ended before the kill: {out[-3000:]}"
    first = {f.path: Recording(f.path) for f in flight_files(d)}
    try:
        host = first[base_files(d, "host")[0].path]
        last_wall = host.timeline(["mem_total_bytes"])[-1][1]
        n_first = {path: len(r) for path, r in first.items()}
    finally:
        for r in first.values():
            r.close()
    # the last committed sample is at most a second (plus this loaded VM's scheduling) before the kill
    assert killed_at - last_wall <= 1.25e9, ((killed_at - last_wall) / 1e9, out[-3000:])
    # also in a file written rarely: the idle target's, read whole once in 30 s
    assert len(n_first) == 2 and all(n >= 1 for n in n_first.values()), n_first
    p = recorder(d, cg)
    try:
        wait_for(lambda: len(base_files(d, "host")) == 2)
        time.sleep(1.2)
    finally:
        stop(p)
    for path, n in n_first.items():
        with Recording(path) as r:
            assert len(r) == n                       # the first run's files are untouched
    assert len(flight_files(d)) == 2 * len(n_first)


def test_rotation_and_retention_delete_only_their_own_old_files(cg, tmp_path):
    d = tmp_path / "flight"
    d.mkdir(mode=0o755)
    foreign = d / "notes.txt"
    foreign.write_text("mine")
    victim = tmp_path / "victim.db"
    victim.write_text("not a recording")
    (d / "flight-base-20000101T000000Z-link.db").symlink_to(victim)      # planted: never followed
    old = d / "flight-base-20000101T000000Z-old.db"
    old.write_bytes(b"SQLite format 3\x00")
    os.utime(old, (946684800, 946684800))
    os.utime(foreign, (946684800, 946684800))
    p = recorder(str(d), cg, "--rotate", "1s", "--retain", "3s")
    seen: set = set()

    def made(k: int) -> bool:
        seen.update(f.path for f in base_files(str(d), "host"))
        return len(seen) >= k
    try:
        wait_for(lambda: made(6), timeout=15)          # more than the 3 s kept can hold
        time.sleep(0.5)
    finally:
        out = stop(p)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert foreign.read_text() == "mine" and victim.read_text() == "not a recording"
    assert (d / "flight-base-20000101T000000Z-link.db").is_symlink()
    assert not old.exists() and "deleted flight-base-20000101T000000Z-old.db" in out
    host = base_files(str(d), "host")
    # rotated every second; those older than 3 s were deleted, the newest are kept whole
    assert 2 <= len(host) <= 5, [f.path for f in host]
    assert "deleted flight-base-" in out.replace("deleted flight-base-20000101T000000Z-old.db", "")
    for f in host:
        with Recording(f.path) as r:
            assert len(r) >= 1
    # by size: the oldest go first, a file open for writing never
    files = [("a", 1.0, 100), ("b", 2.0, 100), ("c", 3.0, 100)]
    assert expired(files, 10.0, None, 250, keep={"a"}) == ["b"]
    assert expired(files, 10.0, None, 150, keep={"a"}) == ["b", "c"]
    assert expired(files, 10.0, 8.5, None, keep=set()) == ["a"]


_bpf_ok, _bpf_why = base_status()


@pytest.mark.bpf
@pytest.mark.skipif(not _bpf_ok, reason=f"eBPF probes unavailable: {_bpf_why}")
@pytest.mark.skipif(tracefs() is None, reason="tracefs not mounted (mount -t tracefs tracefs /sys/kernel/tracing)")
def test_trigger_window_gets_the_ebpf_reports_and_only_it(cg, tmp_path):
    d = str(tmp_path / "flight")
    cg.start_child()
    cg.set("memory.limit_in_bytes" if cg.version == 1 else "memory.max", str(32 * MiB))
    big, second = fresh_file(str(tmp_path), 64 * MiB), fresh_file(str(tmp_path), 8 * MiB)
    p = recorder(d, cg, "--after", "6s", bpf=True)
    try:
        wait_for(lambda: os.path.isdir(d) and base_files(d, "host"))
        time.sleep(1.0)
        cg.do(f"read {big}")                       # page cache twice the limit: failed charges ("max")
        wait_for(lambda: any(f.kind == "event" for f in flight_files(d)))
        end = time.monotonic() + 4
        while time.monotonic() < end:              # inside the window, once the probes are attached
            cg.do(f"read {second}")
            fd = os.open(second, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)     # read again: added again
            os.close(fd)
            time.sleep(0.2)
        time.sleep(4.0)                             # the window ends, the probes detach
    finally:
        out = stop(p)
    assert "trigger max" in out and "eBPF probes starting" in out, out
    assert "eBPF probes stopped: no trigger window open" in out, out
    ino = os.stat(second).st_ino
    for f in flight_files(d):
        with Recording(f.path) as rec:
            reports = [e.value for e in rec.events("probes")]
        if f.kind == "base":
            assert reports == [], f.path               # outside a window nothing is probed
            continue
        assert reports, f"no eBPF report in {f.path}"
        files = [pc for r in reports for pc in r.get("page_cache") or [] if pc["inode"] == ino]
        assert any(pc["added_pages"] > 0 for pc in files), (f.path, [r.get("page_cache") for r in reports], out)


def test_a_targets_window_that_outlives_the_hosts_still_has_the_host_files(tmp_path):
    """The targets' samplers read no /proc/meminfo or /proc/vmstat (feed/multi.py): a target's
    100 ms samples take the host's of the same tick. A failed charge ("max") opens a target's
    window without extending the host's, so the target's can outlive it: its samples then read
    the host's files themselves."""
    from spark_memprobe.feed.flight import HOST
    a, b = LiveCgroup(), LiveCgroup()
    fr = None
    try:
        fr = in_process(str(tmp_path / "flight"), [a, b], after_s=0.6)
        for _ in range(3):
            fr.tick()
            time.sleep(0.1)
        ka, kb = (next(k for k, t in fr.tracks.items() if t.label == f"cgroup:{cg.path}") for cg in (a, b))
        fr.trigger("oom_kill", fr.tracks[ka], "test: a's window, and the host's")
        for _ in range(4):
            fr.tick()
            time.sleep(0.1)
        fr.trigger("max", fr.tracks[kb], "test: b's window, the host's not extended")
        host_until = fr.tracks[HOST].event_until
        assert fr.tracks[kb].event_until > host_until + 0.3
        while time.monotonic() < fr.tracks[kb].event_until + 0.2:
            fr.tick()
            time.sleep(0.1)
    finally:
        if fr is not None:
            fr.close()
        for cg in (a, b):
            cg.cleanup()
    [ev] = [f for f in flight_files(str(tmp_path / "flight")) if f.kind == "event" and f.rest.startswith("max-")]
    with Recording(ev.path) as rec:
        full = [s for s in rec.samples() if LIGHT_NOTE not in s.notes]
    late = [s for s in full if s.mono_ns > host_until * 1e9]
    assert len(late) >= 2, [s.mono_ns for s in full]
    assert all(s.meminfo is not None and s.vmstat is not None for s in full)


def test_report_last_and_at_cut_a_targets_base_files(cg, tmp_path, capsys):
    """`report DIR --last D` / `--at T` cut a target's base files (written by delta ticks: the
    usage moves every second) into one recording and report it; the target is named as `record`
    was given it or as the files name it; one that is not there is a one-line error."""
    from spark_memprobe.feed.flight import slug
    cg.start_child()
    f = fresh_file(str(tmp_path), MiB)
    d = str(tmp_path / "flight")
    target = f"cgroup:{cg.path}"
    fr = in_process(d, [cg])
    start = time.time()
    try:
        run_busy(fr, cg, f, 5)
    finally:
        fr.close()
    capsys.readouterr()
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start))
    for args in (["--last", "1m", "--target", target], ["--last", "1m", "--target", slug(target)],
                 ["--at", at, "--target", target]):
        assert main(["report", d, *args]) == 0, args
        out = capsys.readouterr().out
        assert f"memory cgroup v{cg.version} {cg.path}" in out.splitlines()[0], args
        n = int(re.search(r"stretch\.db · ([0-9]+) samples", out).group(1))
        assert n >= 4, (args, n)
    assert main(["report", d, "--last", "1m", "--target", "cgroup:/not-recorded"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no samples of 'cgroup:/not-recorded'" in err


@pytest.mark.skipif(not native_available()[0], reason=f"delta base ticks need the native sampler: {native_available()[1]}")
def test_a_restart_and_an_exit_under_delta_ticks_are_triggers(tmp_path):
    """A target whose base ticks go the delta way (feed/flat_delta.py: kept descriptors, the
    processes checked in C) is re-created at the same path, then removed: the recorder says
    `restart`, follows the new cgroup (its base ticks go the delta way again, with the new
    sampler), then says `exit` (a TARGET given by name used to stay followed, silent, once its
    cgroup was gone: the Follower's "ended" was dropped) and its base file says how it ended."""
    from livecg import remove_cgroup_dir
    cg = LiveCgroup()
    cg.start_child()
    f = fresh_file(str(tmp_path), MiB)
    lines: list[str] = []
    fr = in_process(str(tmp_path / "flight"), [cg], lines.append, after_s=0.5)

    def run(seconds: float) -> None:
        run_busy(fr, cg, f, seconds)

    def track():
        return next(t for k, t in fr.tracks.items() if t.label == f"cgroup:{cg.path}")

    try:
        run(4)
        first = track()
        assert first.delta is not None and first.delta.flat is not None, "no delta base ticks before the restart"
        old_sampler = first.delta.sampler
        cg.stop_child()
        assert remove_cgroup_dir(cg.dir)
        os.mkdir(cg.dir)
        cg.start_child()
        run(4)
        assert any(line.startswith("trigger restart:") for line in lines), lines
        tr = track()
        assert tr.delta is not None and tr.delta.sampler is not old_sampler and tr.delta.flat is not None
        cg.stop_child()
        assert remove_cgroup_dir(cg.dir)
        run(3)
        assert any(line.startswith("trigger exit:") for line in lines), lines
    finally:
        fr.close()
        cg.stop_child()
        remove_cgroup_dir(cg.dir)
    label = f"cgroup:{cg.path}".replace(":", "_").replace("/", "_")
    ends = []
    for bf in base_files(str(tmp_path / "flight"), label):
        with Recording(bf.path) as rec:
            ends += [e.value for e in rec.events("target") if e.value.get("kind") == "ended"]
    assert len(ends) == 1, ends                      # the base file says how it ended


def test_a_full_disk_is_said_and_recording_goes_on_once_there_is_room(cg, tmp_path):
    """A real ENOSPC: the flight directory on a small tmpfs of its own, filled while the recorder
    writes rows and whole ticks. The recorder says so in a line, loses nothing committed, keeps
    ticking, and writes again (new files) once there is room."""
    d = tmp_path / "small"
    d.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "memprobe-test", str(d)],
                       capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"no tmpfs of our own to fill: mount said {m.stderr.strip()!r}")
    said: list[str] = []
    fr = None
    try:
        cg.start_child()
        path = fresh_file(str(tmp_path), MiB)
        fr = in_process(str(d / "flight"), [cg], log=said.append)
        run_busy(fr, cg, path, 3.5)
        before = {f.path: len(rec_samples(f.path)) for f in flight_files(str(d / "flight"))}
        with open(d / "filler", "wb") as f:              # the rest of the tmpfs
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        run_busy(fr, cg, path, 3.5)
        full = [m for m in said if "full" in m]
        os.unlink(d / "filler")
        n_said = len(said)
        run_busy(fr, cg, path, 3.5)
        again = [m for m in said[n_said:] if m.startswith("writing ")]
        fr.close()
        fr = None
        after = {f.path: len(rec_samples(f.path)) for f in flight_files(str(d / "flight"))}
    finally:
        if fr is not None:
            fr.close()
        subprocess.run(["umount", "-l", str(d)])
    assert full and all("\n" not in m for m in full), said
    assert all(after[p] >= n for p, n in before.items()), (before, after)     # nothing committed lost
    assert again and len(after) > len(before), (said, after)                  # new files once there was room
