#!/usr/bin/env python3
"""CPU of the live screen at 10 Hz, side by side in one run with what it costs to take the same
samples headless (`memprobe record`, no screen) and with the samples alone.

    sudo .venv/bin/python scripts/bench/bench_tui.py [--seconds 30] [--size 80x24 --size 200x60]

A throwaway memory cgroup with one process holding 64 MiB is the target; eBPF is off so the
numbers are the sampler + ledger + rendering. Each run's CPU is utime+stime of the memprobe
process from /proc/<pid>/stat over the measured window (after a 3 s warm-up)."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from livecg import MiB, LiveCgroup  # noqa: E402
from tmuxterm import Tmux  # noqa: E402

CLI = [sys.executable, "-m", "spark_memprobe.cli"]
HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ


def measure(pid: int, seconds: float) -> float:
    time.sleep(3.0)
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0) * 100


def find_pid(pattern: str) -> int:
    """The Python process running memprobe (not the shell tmux started it from)."""
    for _ in range(100):
        for pid in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split():
            if open(f"/proc/{pid}/comm").read().startswith("python"):
                return int(pid)
        time.sleep(0.1)
    raise RuntimeError(f"no process {pattern}")


def print_rows(title: str, rows: list, seconds: float) -> None:
    """The host line and the Markdown table of (name, % of one core) rows."""
    print(f"host {os.uname().nodename} kernel {os.uname().release}, {os.cpu_count()} CPUs, {seconds:.0f} s each")
    print(f"\n| {title} | % of one core |\n|---|---:|")
    for name, pct in rows:
        print(f"| {name} | {pct:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", action="append", default=None)
    a = ap.parse_args()
    sizes = a.size or ["80x24", "200x60"]
    cg = LiveCgroup()
    tmp = tempfile.mkdtemp()
    rows = []
    try:
        cg.start_child()
        cg.do(f"anon {64 * MiB}")
        target = f"cgroup:{cg.path}"
        p = subprocess.Popen([*CLI, "record", target, "-o", f"{tmp}/h.db", "--interval", "100ms", "--no-bpf"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows.append(("headless record at 10 Hz (sample + write, no ledger, no screen)", measure(p.pid, a.seconds)))
        p.terminate()
        p.wait()
        for size in sizes:
            w, h = map(int, size.split("x"))
            t = Tmux([*CLI, "attach", target, "--interval", "100ms", "--no-bpf"], w, h)
            try:
                t.wait_for("where the bytes are counted", timeout=60)
                pid = find_pid(f"attach {target}")
                rows.append((f"attach screen {size} at 10 Hz (sample + ledger + render)", measure(pid, a.seconds)))
                t.send("q")
                t.rc()
            finally:
                t.close()
        print_rows("what", rows, a.seconds)
    finally:
        cg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
