#!/usr/bin/env python3
"""Exporter benchmarks on real cgroups, each with one real process (`sleep`), created here and
removed at the end (run as root):

  scrape: `memprobe export` follows --targets cgroups; --rounds times, --parallel clients connect
          at once and GET /metrics (curl); latency from connect to the last
          byte, p50 / p99 / max over every request, and the body size.
  scale:  --containers synthetic containers: cgroups named like moby's (<parent>/docker/<64 hex>)
          that `export --all-containers` finds in its /proc scan (no engine runs them); the
          exporter's CPU time (utime + stime of /proc/<pid>/stat) over --seconds at --interval,
          as a share of one core, and its RSS.

    sudo .venv/bin/python scripts/bench/bench_export.py [scrape|scale|both] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from engines.cleanup import remove_cgroup_tree  # noqa: E402
from spark_memprobe.sources.cgroupfs import CgroupFS  # noqa: E402


class Cgroups:
    """n memory cgroups <memory root>/mpbench-<random>/docker/<64 hex>, one `sleep` in each."""

    def __init__(self, n: int):
        fs = CgroupFS()
        self.version = fs.layout.memory_version
        self.base = f"/mpbench-{secrets.token_hex(4)}"
        self.paths, self.procs = [], []
        os.makedirs(fs.directory(self.base + "/docker", self.version), mode=0o700)
        try:
            for _ in range(n):
                path = f"{self.base}/docker/{secrets.token_hex(32)}"
                d = fs.directory(path, self.version)
                os.mkdir(d, 0o700)
                self.paths.append(path)
                p = subprocess.Popen(["sleep", "3600"])
                self.procs.append(p)
                with open(f"{d}/cgroup.procs", "w") as f:
                    f.write(str(p.pid))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        left = remove_cgroup_tree(self.base)
        if left:
            print(f"bench_export: could not remove {left}", file=sys.stderr)


def start_exporter(args: list[str], root: str = ROOT) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "export", "--listen", "127.0.0.1:0", *args],
                         cwd=root, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"serving http://[^:]+:(\d+)/metrics", line)
        if m:
            os.set_blocking(p.stderr.fileno(), False)
            return p, int(m.group(1))
    p.kill()
    raise SystemExit(f"bench_export: the exporter did not start: {p.stderr.read()}")


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def scrape_rounds(port: int, parallel: int, rounds: int, gap_s: float) -> tuple[list[float], int]:
    """curl (C, one process, every transfer started at once) as the client: a Python client on
    this 2-core VM would spend more CPU than the server it measures."""
    url = f"http://127.0.0.1:{port}/metrics"
    lat, size = [], 0
    for _ in range(rounds):
        out = subprocess.run(["curl", "-sS", "--fail", "--parallel", "--parallel-immediate", "--parallel-max",
                              str(parallel), "-H", "Accept: text/plain", "-w", "%{time_total} %{size_download}\\n",
                              *(["-o", "/dev/null", url] * parallel)], capture_output=True, text=True, check=True)
        rows = [ln.split() for ln in out.stdout.splitlines()]
        if len(rows) != parallel:
            raise RuntimeError(f"curl answered {len(rows)} of {parallel} scrapes: {out.stderr[:200]}")
        lat += [float(t) for t, _ in rows]
        size = int(rows[-1][1])
        time.sleep(gap_s)
    return lat, size


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


def metric(port: int, name: str) -> list[float]:
    import urllib.request
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln.startswith(name + "{")]


def bench_scrape(targets: int, parallel: int, rounds: int, interval: float) -> dict:
    cg = Cgroups(targets)
    try:
        p, port = start_exporter([f"cgroup:{c}" for c in cg.paths] + ["--interval", f"{interval}"])
        try:
            time.sleep(2 * interval)
            lat, size = scrape_rounds(port, parallel, rounds, interval / 3)
        finally:
            stop(p)
    finally:
        cg.close()
    lat.sort()
    return {"targets": targets, "parallel": parallel, "requests": len(lat), "body_bytes": size,
            "p50_s": statistics.median(lat), "p99_s": lat[int(0.99 * (len(lat) - 1))], "max_s": lat[-1]}


def bench_scale(containers: int, interval: float, seconds: float, baseline: Optional[str] = None) -> dict:
    """The exporter of this tree on `containers` synthetic containers; with baseline (another
    source tree, e.g. `git archive HEAD` unpacked), that tree's exporter on the same cgroups
    right after, as out["baseline"]."""
    cg = Cgroups(containers)
    try:
        out = scale_cpu(ROOT, containers, interval, seconds)
        if baseline:
            out["baseline"] = scale_cpu(baseline, containers, interval, seconds)
        return out
    finally:
        cg.close()


def scale_cpu(root: str, containers: int, interval: float, seconds: float) -> dict:
    p, port = start_exporter(["--all-containers", "--interval", f"{interval}"], root)
    try:
        deadline = time.monotonic() + 120       # until every container is followed
        while time.monotonic() < deadline:
            if len(metric(port, "memprobe_target_info")) >= containers:
                break
            time.sleep(interval)
        time.sleep(interval)
        c0, t0 = cpu_s(p.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_s(p.pid), time.monotonic()
        followed = len(metric(port, "memprobe_target_info"))
        cycle = metric(port, "memprobe_exporter_cycle_duration_seconds")
        rss = rss_bytes(p.pid)
    finally:
        stop(p)
    return {"containers": containers, "followed": followed, "interval_s": interval, "seconds": round(t1 - t0, 1),
            "cpu_share": (c1 - c0) / (t1 - t0), "cycle_s": cycle[0] if cycle else None, "rss_bytes": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=("scrape", "scale", "both"), default="both")
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--interval", type=float, default=None, help="default: 1 s for scrape, 5 s for scale")
    ap.add_argument("--seconds", type=float, default=60.0, help="scale: CPU measured over this long")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--baseline", metavar="DIR", help="scale: also run the exporter of this source tree on the "
                    "same cgroups, right after (before/after in one run)")
    args = ap.parse_args()
    out = {}
    if args.what in ("scrape", "both"):
        r = out["scrape"] = bench_scrape(args.targets, args.parallel, args.rounds, args.interval or 1.0)
        print(f"exporter, {r['parallel']} parallel scrapes x {args.rounds} rounds, {r['targets']} targets, "
              f"{r['body_bytes'] / 1000:.0f} KB: p50 {r['p50_s'] * 1e3:.1f} ms, p99 {r['p99_s'] * 1e3:.1f} ms, "
              f"max {r['max_s'] * 1e3:.1f} ms", flush=True)
    if args.what in ("scale", "both"):
        r = out["scale"] = bench_scale(args.containers, args.interval or 5.0, args.seconds, args.baseline)
        for who, x in (("", r), (f" (baseline {args.baseline})", r.get("baseline"))):
            if x is not None:
                print(f"export --all-containers{who}, {x['followed']}/{x['containers']} containers followed, every "
                      f"{x['interval_s']:g} s: {x['cpu_share'] * 100:.2f} % of a core over {x['seconds']:g} s; "
                      f"last cycle {x['cycle_s'] or 0:.3f} s; RSS {x['rss_bytes'] / 2**20:.0f} MiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
