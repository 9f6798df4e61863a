"""Base cost of the flight recorder (docs/performance.md, "Issue 22: flight recorder"): N live
memory cgroups with a small process each, `memprobe record --dir` over all of them at 1 Hz, its
CPU time (its threads' schedstat) over a measured stretch after a warm-up, the
bytes its files hold and the bytes it wrote to storage (SQLite's -wal takes a whole page a
commit), both scaled to a day. Beside it, over the same cgroups and the same seconds:
  - the floor: a loop doing only the reads the recorder must do (per second the host's meminfo
    and vmstat and each target's cgroup files and its process's status, per 100 ms meminfo and
    each usage counter), with descriptors kept open and nothing parsed;
  - with --before DIR, the recorder from another copy of the package (DIR holds spark_memprobe/).
--busy: each cgroup's process reads a 1 MiB file into the page cache, or the bench drops those
pages (POSIX_FADV_DONTNEED), every second, so that every usage counter moves (idle targets are
read whole only every 30 s, feed/flight.py; freed anonymous memory would stay with malloc).
Run as root: python scripts/bench/bench_flight.py [N] [SECONDS] [--busy] [--before DIR] [--json FILE]
(--json: the shares of a core and the disk per day, for run_all.py)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from livecg import MiB, LiveCgroup, fresh_file  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def cpu_s(pid: int) -> float:
    """CPU time of all of pid's threads: their schedstat nanoseconds (utime + stime in
    /proc/<pid>/stat are whole clock ticks: 0.025 % of a core over 40 s, too coarse here)."""
    try:
        return sum(int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
                   for t in os.listdir(f"/proc/{pid}/task")) / 1e9
    except (FileNotFoundError, ProcessLookupError):        # no schedstat (CONFIG_SCHED_INFO off)
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def write_bytes(pid: int) -> int:
    """Bytes pid caused to be written to storage (/proc/<pid>/io write_bytes: page-cache pages
    it dirtied), counted when dirtied, whatever writeback does later."""
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def bytes_per_day(d: str) -> tuple[float, int]:
    """What the closed recordings in d hold per day of recording: the sample blobs and event
    texts plus about 40 bytes a row (SQLite's row and index overhead), over each file's span;
    the header and path table, written once per file and rotation, are left out. Also returns
    the samples written."""
    total, samples = 0.0, 0
    for n in os.listdir(d):
        if not n.endswith(".db"):
            continue
        with sqlite3.connect(f"file:{os.path.join(d, n)}?mode=ro", uri=True) as db:
            rows, data, first, last = db.execute("SELECT count(*), sum(length(data)), min(mono_ns), max(mono_ns) "
                                                 "FROM samples").fetchone()
            erows, edata = db.execute("SELECT count(*), sum(length(value)) FROM events").fetchone()
        samples += rows
        if rows and last > first:
            total += (data + (edata or 0) + 40 * (rows + erows)) / ((last - first) / 1e9) * 86400
    return total, samples


def started(d: str, files: int) -> bool:
    try:
        return sum(n.startswith("flight-base-") and n.endswith(".db") for n in os.listdir(d)) >= files
    except FileNotFoundError:
        return False


def floor(args: list[str]) -> None:
    """The raw reads alone: args are cgroup-dir:pid pairs (run as a child of the bench)."""
    def fd(p: str) -> int:
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    meminfo, vmstat = fd("/proc/meminfo"), fd("/proc/vmstat")
    usage, whole = [], []
    for a in args:
        d, pid = a.rsplit(":", 1)
        v1 = os.path.exists(f"{d}/memory.usage_in_bytes")
        names = ["memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.limit_in_bytes", "memory.stat",
                 "memory.oom_control", "memory.failcnt", "memory.kmem.usage_in_bytes"] if v1 else \
            ["memory.current", "memory.peak", "memory.max", "memory.high", "memory.stat", "memory.events",
             "memory.pressure"]
        fds = [fd(f"{d}/{n}") for n in names if os.path.exists(f"{d}/{n}")]
        usage.append(fds[0])
        whole.append(fds + [fd(f"{d}/cgroup.procs"), fd(f"/proc/{pid}/status")])
    n = 0
    while True:
        os.pread(meminfo, 65536, 0)
        for f in usage:
            os.pread(f, 64, 0)
        if n % 10 == 0:
            os.pread(meminfo, 65536, 0)
            os.pread(vmstat, 65536, 0)
            for fds in whole:
                for f in fds:
                    os.pread(f, 65536, 0)
        n += 1
        time.sleep(0.1)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--floor"]:
        return floor(argv[1:])
    busy = "--busy" in argv
    before = argv[argv.index("--before") + 1] if "--before" in argv else None
    out_json = argv[argv.index("--json") + 1] if "--json" in argv else None
    pos = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] not in ("--before", "--json"))]
    n = int(pos[0]) if pos else 20
    secs = float(pos[1]) if len(pos) > 1 else 60
    cgs = []
    d = tempfile.mkdtemp(prefix="bench-flight-")
    procs: dict[str, subprocess.Popen] = {}
    try:
        for _ in range(n):
            cg = LiveCgroup()
            cgs.append(cg)
            cg.start_child()
        files = [fresh_file(d, MiB) for _ in cgs] if busy else []
        targets = [f"cgroup:{cg.path}" for cg in cgs]
        runs = {"now": ROOT, **({"before": os.path.abspath(before)} if before else {})}
        for name, root in runs.items():
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "spark_memprobe.cli", "record", "--dir", os.path.join(d, name), "--no-bpf",
                 *targets], stdout=open(os.path.join(d, f"{name}.log"), "w"), stderr=subprocess.STDOUT, cwd=root,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])))
        procs["floor"] = subprocess.Popen([sys.executable, __file__, "--floor",
                                           *[f"{cg.dir}:{cg.child.pid}" for cg in cgs]])
        # start-up (imports, host facts, NVML's first init) until every recorder has its host's and
        # each target's base file, then a 5 s warm-up (a fixed 5 s let one recorder's start-up, on a
        # GPU machine just lent, run into the measured stretch: 492 samples of 865)
        deadline = time.monotonic() + 120
        while not all(started(os.path.join(d, k), n + 1) for k in runs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                for k in runs:
                    print(open(os.path.join(d, f"{k}.log")).read()[-3000:], file=sys.stderr)
                raise SystemExit(f"a recorder did not start its {n + 1} base files in 120 s; nothing measured")
            time.sleep(0.2)
        time.sleep(5)
        c0 = {k: cpu_s(p.pid) for k, p in procs.items()}
        w0 = {k: write_bytes(procs[k].pid) for k in runs}
        t0 = time.monotonic()
        grown = False
        while time.monotonic() - t0 < secs:
            if busy:                                    # every usage counter moves every second
                for cg, path in zip(cgs, files):
                    if grown:
                        fd = os.open(path, os.O_RDONLY)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.close(fd)
                    else:
                        cg.do(f"read {path}")
                grown = not grown
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
        t1 = time.monotonic()
        c1 = {k: cpu_s(p.pid) for k, p in procs.items()}
        written = {k: (write_bytes(procs[k].pid) - w0[k]) / (t1 - t0) * 86400 for k in runs}
        died = {k: p.poll() for k, p in procs.items() if p.poll() is not None}
        if died:                                        # a zombie's CPU time reads as a cheap run
            for k in died:
                if k in runs:
                    print(open(os.path.join(d, f"{k}.log")).read()[-3000:], file=sys.stderr)
            raise SystemExit(f"exited during the measured stretch (name: rc): {died}; nothing measured")
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
        day = {k: bytes_per_day(os.path.join(d, k)) for k in runs}
        print(f"{n} cgroups ({'busy: 1 MiB cached or dropped in each every second' if busy else 'idle'}) "
              f"+ host at 1 Hz, measured {t1 - t0:.0f} s after every base file was there and a 5 s warm-up, "
              "side by side:")
        if out_json:
            with open(out_json, "w") as f:
                json.dump({"targets": n, "busy": busy, "seconds": t1 - t0,
                           "share": {k: (c1[k] - c0[k]) / (t1 - t0) for k in procs},
                           "bytes_per_day": {k: day[k][0] for k in runs},
                           "written_per_day": written}, f)
        for k in procs:
            share = (c1[k] - c0[k]) / (t1 - t0) * 100
            disk = (f"; {day[k][1]} samples, {day[k][0] / 2**20:.0f} MiB/day on disk, "
                    f"{written[k] / 2**30:.1f} GiB/day written") if k in runs else ""
            print(f"  {k:7s} {share:5.2f} % of a core ({(c1[k] - c0[k]) / (t1 - t0) / (n + 1) * 1e3:.3f} ms "
                  f"per target-second){disk}")
        print(f"on {os.cpu_count()} CPUs, kernel {os.uname().release}, load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for cg in cgs:
            cg.cleanup()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
