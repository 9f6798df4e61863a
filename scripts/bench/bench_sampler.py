#!/usr/bin/env python3
"""Sampler benchmark: one full sample of host + one cgroup + 8 processes, measured side by
side in one run: raw pread of the same files (the floor, in C), the native sampler, the
pure-Python sampler, and psutil's nearest equivalent. Then the native loop at 1 kHz.

    sudo .venv/bin/python scripts/bench/bench_sampler.py [--iters 2000] [--sustain 60]

Creates a throwaway memory cgroup with 8 sleeping processes (removed at exit)."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

from spark_memprobe.sources.cgroupfs import CgroupFS
from spark_memprobe.sources.sampler import PureSampler

HERE = os.path.dirname(os.path.abspath(__file__))


def timeit(fn, iters):
    fn()
    best = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            fn()
        best.append((time.perf_counter_ns() - t0) / iters)
    return sorted(best)[2] / 1000          # median of 5 runs, in us


def floor_us(files, iters):
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "pread_floor")
        subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(HERE, "pread_floor.c")], check=True)
        out = subprocess.run([exe, str(iters), *files], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    per = [(int(x.split(" ", 1)[0]) / 1000, x.split(" ", 1)[1]) for x in lines[1:]]
    return int(lines[0]) / 1000, per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--sustain", type=float, default=60.0, help="seconds of the 1 kHz run (0: skip)")
    ap.add_argument("--procs", type=int, default=8)
    a = ap.parse_args()

    cgfs = CgroupFS()
    path = f"/memprobe-bench-{uuid.uuid4().hex[:8]}"
    d = cgfs.directory(path)
    os.mkdir(d)
    sleepers = []
    try:
        for _ in range(a.procs):
            p = subprocess.Popen(["sleep", "3600"])
            with open(f"{d}/cgroup.procs", "w") as f:
                f.write(str(p.pid))
            sleepers.append(p)
        pure = PureSampler(cgroup=path)
        try:
            from spark_memprobe._native import lib
            from spark_memprobe.sources.native import NativeSampler
            native = NativeSampler(cgroup=path)
        except ImportError:
            native = None
        files = ["/proc/meminfo", "/proc/vmstat"] + list(pure.cgroup_files().values()) + \
            [f"/proc/{p}/status" for p in pure.pids]
        files = [f for f in files if os.path.exists(f)]
        fl, per = floor_us(files, a.iters)
        rows = [("raw pread of the same files (floor, C)", fl)]
        if native:
            rows.append(("native sampler: C read + parse (mp_sample_once)", timeit(lambda: lib.mp_sample_once(native.t, native._buf), a.iters)))
            rows.append(("native sampler + conversion to a Python Sample", timeit(native.sample, a.iters // 4)))
        rows.append(("pure-Python sampler (same files, fds kept open)", timeit(pure.sample, a.iters // 4)))
        procs = [psutil.Process(p.pid) for p in sleepers]
        stat = f"{d}/memory.stat"

        def ps():
            psutil.virtual_memory()
            psutil.swap_memory()
            for p in procs:
                p.memory_info()
            with open(stat) as f:     # psutil has no cgroup reader
                f.read()
        rows.append((f"psutil: virtual_memory + swap_memory + {len(procs)} x memory_info + memory.stat",
                     timeit(ps, a.iters // 4)))

        u = os.uname()
        print(f"host {u.nodename} kernel {u.release} {u.machine}, {os.cpu_count()} CPUs, cgroup layout "
              f"{cgfs.layout.mode} (memory v{cgfs.layout.memory_version}), {len(pure.pids)} processes, "
              f"{len(files)} files per sample, {a.iters} iterations, median of 5 runs")
        print(f"\n| what | us per sample | x floor |\n|---|---:|---:|")
        for name, us in rows:
            print(f"| {name} | {us:.1f} | {us / fl:.2f} |")
        print("\nfloor per file (us):", ", ".join(f"{os.path.basename(os.path.dirname(f)) + '/' if '/proc/' in f and f.count('/') > 2 else ''}{os.path.basename(f)} {us:.1f}" for us, f in per))

        if native and a.sustain > 0:
            n_ok, gaps = 0, []
            t0, c0 = time.monotonic(), os.times()
            native.start(0.001, capacity=4096)
            last = None
            while time.monotonic() - t0 < a.sustain:
                time.sleep(0.1)
                for s in native.drain():
                    n_ok += 1
                    if last is not None:
                        gaps.append((s.mono_ns - last) / 1e6)
                    last = s.mono_ns
            native.stop()
            for s in native.drain():
                n_ok += 1
            wall = time.monotonic() - t0
            c1 = os.times()
            proc_cpu = (c1.user - c0.user + c1.system - c0.system) / wall * 100
            thr_cpu = native.cpu_seconds() / wall * 100
            gaps.sort()
            print(f"\n1 kHz for {wall:.0f} s: {n_ok} samples ({n_ok / wall:.0f}/s), {native.dropped} dropped; "
                  f"sampler thread {thr_cpu:.1f} % of one core; whole process incl. draining and building "
                  f"Python Samples {proc_cpu:.1f} %; tick interval p50 {gaps[len(gaps) // 2]:.3f} ms, "
                  f"p99 {gaps[int(len(gaps) * 0.99)]:.3f} ms")
            print(f"the floor alone at 1 kHz: {fl / 10:.1f} % of one core")
        pure.close()
        if native:
            native.close()
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
