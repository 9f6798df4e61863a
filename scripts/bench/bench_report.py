#!/usr/bin/env python3
"""Report benchmark: a one-hour recording at 10 Hz (36,000 samples) is written with
RecordingWriter from the real H100 inference fixture steps (each step held for a stretch of the
hour, every counter jittered sample by sample the way live counters move), with the events a
recording with eBPF on carries (a cumulative `probes` report, `mapped_files` and `other_cgroups`
once a second). Then, side by side, in this process:
  - the time to decode every sample (Recording.samples(), what a naive report would do);
  - the time of `memprobe report run.db -o report.html` and `-o report.md` (main() in process);
  - with --child: `memprobe report run.db -o report.html` in a child process, its time and peak RSS;
  - replay seeks: ReplayFeed.item(i) at --seeks random places of a freshly opened recording.

    .venv/bin/python scripts/bench/bench_report.py [--minutes 60] [--hz 10] [--keep DIR]
    .venv/bin/python scripts/bench/bench_report.py --minutes 1440 --child --seeks 50 --json out.json
"""
import argparse
import copy
import json
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from fixture_loader import load_step, steps  # noqa: E402
from report_recordings import read_maps  # noqa: E402
from spark_memprobe.cli import main  # noqa: E402
from spark_memprobe.probe_report import (CudaCall, CudaOutstanding, PageCacheFile, ProbeReport, ProbeStatus,  # noqa: E402
                                   report_to_dict)
from spark_memprobe.recording import Recording, RecordingWriter  # noqa: E402

SCENARIO, CGROUP = "h100-inference-scenario", "memprobe_engine"
PAGE = 4096


def jitter(s, rnd: random.Random, k: int):
    """Counters move a little every sample: meminfo, memory.stat, RSS, NVML used. s: a Sample, or
    one pickled (unpickling copies it several times faster than deepcopy: a 24 h recording)."""
    s = pickle.loads(s) if isinstance(s, bytes) else copy.deepcopy(s)
    if s.meminfo is not None:
        for key in ("MemFree", "MemAvailable", "Cached", "Active(file)", "Inactive(file)", "Dirty", "AnonPages"):
            if key in s.meminfo.bytes:
                s.meminfo.bytes[key] = max(0, s.meminfo.bytes[key] + PAGE * rnd.randint(-64, 64))
    if s.vmstat is not None:
        for key in ("pgfault", "pgpgin", "nr_free_pages", "pgalloc_normal"):
            if key in s.vmstat.counters:
                s.vmstat.counters[key] += k * rnd.randint(0, 50)
    cg = s.cgroup
    if cg is not None and cg.stat:
        for key in ("anon", "file", "active_file", "inactive_file", "slab", "file_dirty"):
            if key in cg.stat:
                cg.stat[key] = max(0, cg.stat[key] + PAGE * rnd.randint(-8, 8))
        if cg.current_bytes is not None:
            cg.current_bytes = max(0, cg.current_bytes + PAGE * rnd.randint(-8, 8))
        if cg.pressure is not None and cg.pressure.some_total_us is not None:
            cg.pressure.some_total_us += rnd.randint(0, 20)
    for p in s.processes:
        if p.rss_anon_bytes is not None:
            p.rss_anon_bytes += PAGE * rnd.randint(-4, 4)
            p.rss_bytes = (p.rss_anon_bytes or 0) + (p.rss_file_bytes or 0) + (p.rss_shmem_bytes or 0)
    for g in s.gpus or []:
        if g.used_bytes is not None and g.used_bytes > 0:
            d = (1 << 20) * rnd.randint(-2, 2)
            g.used_bytes += d
            g.free_bytes -= d
    return s


def probe_report(t0: int, now: int, pid: int, files: list, k: int) -> ProbeReport:
    """A cumulative eBPF report as `memprobe record --bpf` writes once a second (sizes fixed by the fixture's
    engine: weights on the GPU, KV cache, pinned buffers)."""
    gib = 1 << 30
    phase = min(k / 3600, 1.0)
    cuda = [CudaOutstanding(pid, "device", int(2.27 * gib + (6 * gib if phase > 0.5 else 0)), 300 + k, 10 + k),
            CudaOutstanding(pid, "host-pinned", 256 << 20 if phase > 0.5 else 0, 1, 0),
            CudaOutstanding(pid, "pool", 64 << 20, 2, 0)]
    calls = [CudaCall(t0 + i * 10 ** 9, pid, pid, 1234, "cuMemAlloc_v2", "device", (i % 64 + 1) << 20, 0x7f0000 + i, 0)
             for i in range(min(k, 200))]
    pc = [PageCacheFile(1234, 254, 1, 1000 + i, added_pages=4096 + i, removed_pages=i, last_pid=pid,
                        path=f["path"], cgroup_path="/memprobe_engine") for i, f in enumerate(files[:300])]
    return ProbeReport(started_mono_ns=t0, ended_mono_ns=now,
                       probes=[ProbeStatus("pagecache", "tracepoint:filemap", True, "tracepoints present"),
                               ProbeStatus("cuda", "uprobe:libcuda.so.1", True, "uprobe PMU")],
                       target="cgroup /memprobe_engine", page_cache=pc, page_cache_untracked_pages=0, cuda=cuda,
                       cuda_calls=calls, cuda_lost_events=0, cgroup_paths={1234: "/memprobe_engine"})


def make_recording(path: str, minutes: float, hz: float, seed: int = 1, events: bool = True) -> int:
    rnd = random.Random(seed)
    sts = steps(SCENARIO)
    base = [load_step(st, CGROUP) for st in sts]
    maps = []
    for st in sts:
        files = []
        for pid in os.listdir(os.path.join(st, "proc")):
            if pid.isdigit() and os.path.exists(os.path.join(st, "proc", pid, "maps")):
                files += read_maps(os.path.join(st, "proc", pid, "maps"))
        maps.append(files)
    from spark_memprobe.sources.cgroupfs import CgroupFS
    warmer = [asdict(CgroupFS(os.path.join(st, "cgroup")).read("warmer")) for st in sts]
    host = base[0][0]
    n = int(minutes * 60 * hz)
    step_ns = int(1e9 / hz)
    header = {"host": asdict(host), "target": {"kind": "cgroup", "cgroup_path": "/memprobe_engine", "cgroup_version": 2,
                                               "description": "cgroup /memprobe_engine (benchmark)"},
              "probes": [asdict(ProbeStatus("pagecache", "tracepoint:filemap", True, "tracepoints present")),
                         asdict(ProbeStatus("cuda", "uprobe:libcuda.so.1", True, "uprobe PMU"))] if events else None,
              "capabilities": [], "interval_ns": step_ns, "argv": ["bench_report.py"], "kv_fraction": 0.9}
    frozen = [pickle.dumps(b[1]) for b in base]
    w = RecordingWriter(path, header, overwrite=True)
    t0 = 10 ** 12
    per_step = n // len(base)
    for i in range(n):
        k = min(i // per_step, len(base) - 1)
        s = jitter(frozen[k], rnd, i)
        s.mono_ns, s.wall_ns = t0 + i * step_ns, 1_764_000_000 * 10 ** 9 + i * step_ns
        w.add_sample(s)
        if events and i % int(hz) == 0:
            sec = i // int(hz)
            pid = s.processes[0].pid if s.processes else 763
            w.add_event(s.mono_ns, "probes", report_to_dict(probe_report(t0, s.mono_ns, pid, maps[k], sec)))
            w.add_event(s.mono_ns, "mapped_files", {"files": maps[k]})
            w.add_event(s.mono_ns, "other_cgroups", {"cgroups": [warmer[k]]})
    w.close()
    return n


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main_bench():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--hz", type=float, default=10)
    ap.add_argument("--keep", metavar="DIR", help="write the recording and reports here and keep them")
    ap.add_argument("--no-events", action="store_true", help="samples only (a recording made with --no-bpf)")
    ap.add_argument("--child", action="store_true",
                    help="only the HTML report, in a child process (its time and peak RSS), and the seeks")
    ap.add_argument("--seeks", type=int, default=0, help="replay seeks to random places (0: none)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--baseline", metavar="DIR", help="--child: also run the report of this source tree (e.g. "
                    "`git archive HEAD` unpacked) on the same recording, right after (before/after in one run)")
    a = ap.parse_args()
    if a.child:
        return child_bench(a)
    d, db, n, made = recording(a)
    size = os.path.getsize(db)
    rec = Recording(db)
    events = len(rec.events())
    decode = timed(lambda: sum(1 for _ in rec.samples()))
    rec.close()
    html = timed(lambda: main(["report", db, "-o", os.path.join(d, "report.html")]))
    md = timed(lambda: main(["report", db, "-o", os.path.join(d, "report.md")]))
    cmp_ = timed(lambda: main(["report", db, db, "-o", os.path.join(d, "compare.html")]))
    u = os.uname()
    print(f"host {u.nodename}, kernel {u.release}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"recording: {n} samples ({a.minutes:g} min at {a.hz:g} Hz), {events} events, "
          f"{size / 2 ** 20:.1f} MiB, written in {made:.0f} s")
    print("\n| what | seconds |\n|---|---:|")
    print(f"| decode every sample (Recording.samples) | {decode:.2f} |")
    print(f"| memprobe report run.db -o report.html | {html:.2f} |")
    print(f"| memprobe report run.db -o report.md | {md:.2f} |")
    print(f"| memprobe report run.db run.db -o compare.html (two analyses) | {cmp_:.2f} |")
    print(f"\nreport sizes: html {os.path.getsize(os.path.join(d, 'report.html')) / 1024:.0f} KiB, "
          f"md {os.path.getsize(os.path.join(d, 'report.md')) / 1024:.0f} KiB")
    if not a.keep:
        import shutil
        shutil.rmtree(d)


def seek_times(db: str, n: int, seed: int = 2) -> list[float]:
    """Seconds of ReplayFeed.item(i) (the sample, its context and eBPF report current at it) at n
    random places of a freshly opened recording, as `memprobe replay` jumps."""
    from spark_memprobe.feed.replay import ReplayFeed
    rnd = random.Random(seed)
    rec = Recording(db)
    try:
        feed = ReplayFeed(rec)
        out = []
        for _ in range(n):
            i = rnd.randrange(len(feed))
            t = time.perf_counter()
            feed.item(i)
            out.append(time.perf_counter() - t)
        return out
    finally:
        rec.close()


def recording(a) -> tuple[str, str, int, float]:
    """(folder, recording path, samples, seconds to write it)."""
    d = a.keep or tempfile.mkdtemp(prefix="memprobe-bench-report-")
    os.makedirs(d, exist_ok=True)
    db = os.path.join(d, "bench.db")
    t = time.perf_counter()
    n = make_recording(db, a.minutes, a.hz, events=not a.no_events)
    return d, db, n, time.perf_counter() - t


def report_child(root: str, db: str, html: str) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of `memprobe report db -o html` run from source tree `root`."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "report", db, "-o", html], cwd=root,
                         stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"bench_report: the report from {root} failed (exit {p.returncode})")
    return time.perf_counter() - t, ru.ru_maxrss * 1024


def child_bench(a) -> int:
    d, db, n, made = recording(a)
    report_s, rss = report_child(ROOT, db, os.path.join(d, "report.html"))
    seeks = seek_times(db, a.seeks) if a.seeks else []
    out = {"samples": n, "minutes": a.minutes, "hz": a.hz, "recording_bytes": os.path.getsize(db),
           "written_s": made, "report_s": report_s, "report_rss_bytes": rss,
           "seek_p50_s": statistics.median(seeks) if seeks else None, "seek_max_s": max(seeks) if seeks else None}
    print(f"recording: {n} samples ({a.minutes / 60:g} h at {a.hz:g} Hz), {out['recording_bytes'] / 2 ** 20:.0f} MiB, "
          f"written in {made:.0f} s")
    print(f"memprobe report -o report.html (child process): {report_s:.1f} s, peak RSS {rss / 2 ** 20:.0f} MiB")
    if a.baseline:
        base = os.path.join(d, "report-baseline.html")
        out["baseline_report_s"], out["baseline_rss_bytes"] = report_child(a.baseline, db, base)
        with open(os.path.join(d, "report.html"), "rb") as f1, open(base, "rb") as f2:
            out["same_as_baseline"] = f1.read() == f2.read()
        print(f"the same from {a.baseline}: {out['baseline_report_s']:.1f} s, peak RSS "
              f"{out['baseline_rss_bytes'] / 2 ** 20:.0f} MiB; reports byte-identical: {out['same_as_baseline']}")
    if seeks:
        print(f"replay seek to {len(seeks)} random places: p50 {out['seek_p50_s'] * 1e3:.1f} ms, "
              f"max {out['seek_max_s'] * 1e3:.1f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if not a.keep:
        import shutil
        shutil.rmtree(d)
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
