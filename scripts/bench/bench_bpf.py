#!/usr/bin/env python3
"""Overhead of the eBPF probes on a fault-heavy workload, measured side by side in one run.

The workload (C, built here) maps SIZE bytes of private anonymous memory with THP off and
writes one byte per 4 KiB page: one page fault per page. Each round runs it with no probes,
with each of our probes alone, with the default set and with everything, and with the
equivalent bpftrace one-liner (if bpftrace is installed), with no-op BPF programs on the same
attach points (the floor of any per-fault program) and with the programs of the last commit
(`git archive HEAD`, run in a child process: "before" rows), in a shuffled order; each
configuration keeps the least CPU time of --reps runs, and the table shows the median over
rounds and slowdown ratios. Also measures how long bcc takes to compile and load our programs.

    sudo .venv/bin/python scripts/bench/bench_bpf.py [--gib 4] [--rounds 5] [--reps 3]
Results for docs/performance.md ("eBPF probes")."""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession, base_status, bccload  # noqa: E402
from spark_memprobe.sources.bpf.quiet import quiet_stderr  # noqa: E402
from spark_memprobe.sources.cgroupfs import CgroupFS  # noqa: E402

TOUCH_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
int main(int argc, char **argv) {
    size_t size = strtoull(argv[1], NULL, 10);
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(p, size, MADV_NOHUGEPAGE);          /* one fault per 4 KiB page */
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ca);
    for (size_t i = 0; i < size; i += 4096)
        p[i] = 1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cb);
    clock_gettime(CLOCK_MONOTONIC, &b);
    /* CPU time of the faulting process (user + system, BPF programs included: they run in
       its context): robust against other load on the host, unlike wall time */
    printf("%.6f %.6f\n", (cb.tv_sec - ca.tv_sec) + (cb.tv_nsec - ca.tv_nsec) / 1e9,
           (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""

BPFTRACE = "software:page-faults:1 { @[cgroup, pid] = count(); }"

# perf_event_open(2): a counting (not sampling) page-fault event per CPU for one cgroup
# (PERF_FLAG_PID_CGROUP): the kernel adds 1 to the counter on each fault in that cgroup or below,
# no BPF program and no overflow handling run; read() gives the count.
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine)
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS = 1, 2
PERF_FLAG_PID_CGROUP, PERF_FLAG_FD_CLOEXEC = 1 << 2, 1 << 3


def v2_cgroup_dir() -> str:
    """This process's cgroup v2 directory (pure v2: under /sys/fs/cgroup; hybrid: under .../unified)."""
    root = CgroupFS().layout.v2_root
    if root is None:
        raise OSError("no cgroup v2 mount")
    rel = next(ln.split("::", 1)[1].strip() for ln in open("/proc/self/cgroup") if ln.startswith("0::"))
    return os.path.join(root, rel.lstrip("/"))


def perf_count_cgroup(cgdir: str) -> list[int]:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("IIQ", PERF_TYPE_SOFTWARE, 64, PERF_COUNT_SW_PAGE_FAULTS), 64)
    cg = os.open(cgdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds = []
    try:
        for cpu in sorted(os.sched_getaffinity(0)):
            fd = libc.syscall(PERF_EVENT_OPEN, attr, cg, cpu, -1, PERF_FLAG_PID_CGROUP | PERF_FLAG_FD_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), f"perf_event_open: {os.strerror(ctypes.get_errno())}")
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(cg)
    return fds


def with_perf_count(exe: str, size: int, reps: int) -> float:
    fds = perf_count_cgroup(v2_cgroup_dir())
    try:
        t = best_of(exe, size, reps)
        counted = sum(struct.unpack("Q", os.read(fd, 8))[0] for fd in fds)
        if counted < reps * size // 4096:
            raise RuntimeError(f"perf counted {counted} faults, fewer than the {reps * size // 4096} touched")
        return t
    finally:
        for fd in fds:
            os.close(fd)


NOOP_PERF = "struct bpf_perf_event_data;\nint mp_noop(struct bpf_perf_event_data *ctx) { return 0; }"
NOOP_TP = "int mp_noop_raw(void *ctx) { return 0; }\nint mp_noop_tp(void *ctx) { return 0; }"
# the attach points of the "everything" set that fire on an anonymous fault
NOOP_TPS = [b"memcg:mod_memcg_state", b"memcg:mod_memcg_lruvec_state", b"memcg:count_memcg_events"]


def with_noop(exe: str, size: int, reps: int, everything: bool) -> float:
    """A BPF program that returns at once on the perf page-fault event (and, with `everything`,
    on the raw tracepoint page_fault_user and the memcg tracepoints): the floor of our probes."""
    bcc = bccload.import_bcc()
    bccload.prepare_environment()
    with quiet_stderr():
        b = bcc.BPF(text=NOOP_PERF.encode())
        tp = bcc.BPF(text=NOOP_TP.encode())
        b.attach_perf_event(ev_type=bcc.PerfType.SOFTWARE, ev_config=bcc.PerfSWConfig.PAGE_FAULTS,
                            fn_name=b"mp_noop", sample_period=1)
        if everything:
            tp.attach_raw_tracepoint(tp=b"page_fault_user", fn_name=b"mp_noop_raw")
            for t in NOOP_TPS:
                tp.attach_tracepoint(tp=t, fn_name=b"mp_noop_tp")
    try:
        return best_of(exe, size, reps)
    finally:
        b.cleanup()
        tp.cleanup()


OLD_SESSION = """
import sys
from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession
with ProbeSession(ProbeOptions(**eval(sys.argv[1]))):
    print("ready", flush=True)
    sys.stdin.read()
"""


def with_old_session(tree: str, opts: dict, exe: str, size: int, reps: int) -> float:
    """The probes of the last commit, started from its source tree in a child process."""
    p = subprocess.Popen([sys.executable, "-c", OLD_SESSION, repr(opts)], cwd=tree, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("the probes of HEAD did not start")
        return best_of(exe, size, reps)
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def head_tree(tmp: str) -> str:
    """spark_memprobe/ as in the last commit (git archive: reads the repository, changes nothing)."""
    tree = os.path.join(tmp, "head")
    os.mkdir(tree)
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    arc = subprocess.run(["git", "-C", repo, "archive", "HEAD", "spark_memprobe"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", tree], input=arc.stdout, check=True)
    return tree


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_touch(exe: str, size: int) -> float:
    """CPU seconds the workload spent in its touch loop (wall seconds go to WALL)."""
    cpu, wall = subprocess.run([exe, str(size)], capture_output=True, text=True, check=True).stdout.split()
    WALL.append(float(wall))
    return float(cpu)


WALL: list[float] = []


def best_of(exe: str, size: int, reps: int) -> float:
    """Least CPU time of `reps` runs: interference from other load only ever adds time."""
    return min(run_touch(exe, size) for _ in range(reps))


def with_session(opts: ProbeOptions, exe: str, size: int, reps: int) -> tuple[float, float]:
    t0 = time.monotonic()
    s = ProbeSession(opts)
    s.start()
    load = time.monotonic() - t0
    try:
        return best_of(exe, size, reps), load
    finally:
        s.close()


def with_bpftrace(exe: str, size: int, reps: int) -> float:
    p = subprocess.Popen(["bpftrace", "-e", BPFTRACE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while True:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("bpftrace exited before attaching")
            if line.startswith("Attaching"):
                break
        time.sleep(0.2)
        return best_of(exe, size, reps)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=60)       # it prints its map on the way out
        except subprocess.TimeoutExpired:   # seen once (bpftrace 0.17): the timing above stands
            p.kill()
            p.communicate()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="memory touched per run (default 4 GiB)")
    ap.add_argument("--only", metavar="SUBSTRING", action="append", default=[],
                    help="run only the modes whose name holds one of these (no probes always runs)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; modes run in a shuffled order in each")
    ap.add_argument("--reps", type=int, default=3, help="runs per mode and round; the least CPU time counts")
    ap.add_argument("--json", metavar="FILE", help="also write the slowdowns (median of rounds) as JSON")
    args = ap.parse_args()
    ok, why = base_status()
    if not ok:
        print(f"bench_bpf: eBPF probes unavailable: {why}", file=sys.stderr)
        return 5
    size = int(args.gib * (1 << 30))
    avail = mem_available()
    if avail < size + (2 << 30):
        size = max((avail - (2 << 30)) // 4096 * 4096, 256 << 20)
        print(f"bench_bpf: only {avail / 2**30:.1f} GiB available; touching {size / 2**30:.2f} GiB instead")
    tmp = tempfile.mkdtemp(prefix="bench-bpf-")
    try:
        src = os.path.join(tmp, "touch.c")
        exe = os.path.join(tmp, "touch")
        with open(src, "w") as f:
            f.write(TOUCH_C)
        subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
        none = dict(faults=False, fault_addresses=False, pagecache=False, memcg=False, cuda=False, uvm=False)
        every = dict(fault_events=True, fault_addresses=True, memcg_stream=True, memcg_events=True)
        # row names are read by run_all.py: "everything" is every opt-in (--fault-events too)
        probe_modes = {
            "memprobe: faults (perf event, period 1)": ProbeOptions(**{**none, "faults": True, "fault_events": True}),
            "memprobe: faults + addresses (--fault-events --fault-addresses)": ProbeOptions(
                **{**none, "faults": True, "fault_events": True, "fault_addresses": True}),
            "memprobe: fault counters (/proc/<pid>/stat, default)": ProbeOptions(**{**none, "faults": True}),
            "memprobe: memcg stream (--memcg-stream)": ProbeOptions(**{**none, "memcg": True, "memcg_stream": True}),
            "memprobe: memcg stream + events (--memcg-events)": ProbeOptions(**{**none, "memcg": True,
                                                                                "memcg_events": True}),
            "memprobe: page cache (tracepoints)": ProbeOptions(**{**none, "pagecache": True}),
            "memprobe: default set (probes --run)": ProbeOptions(),
            "memprobe: everything (--fault-addresses --memcg-events)": ProbeOptions(**every),
        }
        # the same sets with the programs and options of the last commit (its defaults differ)
        old_modes = {
            "before: faults (perf event, period 1)": {**none, "faults": True},
            "before: default set (probes --run)": {},
            "before: everything (--fault-addresses --memcg-events)": {"fault_addresses": True, "memcg_events": True},
        }
        floors = {"floor: no-op BPF on perf page-faults (period 1)": False,
                  "floor: no-op BPF on every attach point of everything": True}
        tree = head_tree(tmp)
        modes = ["no probes", "perf counter per cgroup (counting, no BPF)", *floors, *probe_modes, *old_modes]
        have_bt = shutil.which("bpftrace") is not None
        if have_bt:
            modes.append("bpftrace one-liner")
        if args.only:
            modes = [m for m in modes if m == "no probes" or any(o in m for o in args.only)]
        times = {m: [] for m in modes}
        loads = {m: [] for m in probe_modes if m in modes}
        run_touch(exe, size)                         # warm-up (page allocator, caches)
        walls = {m: [] for m in modes}
        rng = random.Random(1)
        for r in range(args.rounds):
            order = list(modes)
            rng.shuffle(order)                       # no mode always runs first or last
            for m in order:
                if m == "no probes":
                    times[m].append(best_of(exe, size, args.reps))
                elif m.startswith("perf counter"):
                    times[m].append(with_perf_count(exe, size, args.reps))
                elif m == "bpftrace one-liner":
                    times[m].append(with_bpftrace(exe, size, args.reps))
                elif m in floors:
                    times[m].append(with_noop(exe, size, args.reps, floors[m]))
                elif m in old_modes:
                    times[m].append(with_old_session(tree, old_modes[m], exe, size, args.reps))
                else:
                    t, ld = with_session(probe_modes[m], exe, size, args.reps)
                    times[m].append(t)
                    loads[m].append(ld)
                walls[m].append(WALL[-1])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{times[m][-1]:.3f}" for m in modes), flush=True)
        base = statistics.median(times["no probes"])
        pages = size // 4096
        print()
        print(f"workload: touch {size / 2**30:.2f} GiB page by page ({pages:,} faults); {args.rounds} rounds x "
              f"best of {args.reps} runs per mode; "
              f"kernel {os.uname().release}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} "
              "(other work shares this machine: compare ratios within this run only)")
        print()
        print("| run | CPU time (median of rounds) | CPU ns per fault | slowdown (median) | slowdown (best round) "
              "| wall time of last run (median) |")
        print("|---|---:|---:|---:|---:|---:|")
        bmin = min(times["no probes"])
        for m in modes:
            med = statistics.median(times[m])
            print(f"| {m} | {med:.3f} s | {med / pages * 1e9:.0f} | {med / base:.3f}x | "
                  f"{min(times[m]) / bmin:.3f}x | {statistics.median(walls[m]):.3f} s |")
        print()
        print("| probe load (bcc compile + attach) | median | min | max |")
        print("|---|---:|---:|---:|")
        for m, v in loads.items():
            print(f"| {m} | {statistics.median(v):.2f} s | {min(v):.2f} s | {max(v):.2f} s |")
        if not have_bt:
            print("\nbpftrace not installed: its row is missing")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"faults": pages, "cpu_s": {m: statistics.median(times[m]) for m in modes},
                           "slowdown": {m: statistics.median(times[m]) / base for m in modes}}, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
