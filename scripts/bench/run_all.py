#!/usr/bin/env python3
"""Every benchmark of issues 21 and 22 in one run, one after the other on this host, then its table
side by side: the sampler (bench_sampler.py), the eBPF probes (bench_bpf.py), the exporter and
scale (bench_export.py), the 24 h report (bench_report.py) and the flight recorder's base cost,
idle and busy (bench_flight.py). Each bench's own output is printed as
it runs; the summary at the end gives each measure, its goal, and whether it was met.

    sudo .venv/bin/python scripts/bench/run_all.py [--quick] [--skip NAME ...]

--quick: a 1 h recording instead of 24 h, 2 rounds of the eBPF bench, 20 s of scale CPU.
--baseline DIR: another source tree (e.g. `git archive HEAD | tar -x -C DIR`): its exporter and
its report run too, on the same cgroups and recording, and the table gives both (before/after).
The load average before and after says how much other work shared the machine."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NAMES = ("sampler", "bpf", "export", "report", "flight")


def run(name: str, argv: list[str]) -> tuple[str, float]:
    print(f"\n===== {name}: {' '.join(argv)}", flush=True)
    t = time.monotonic()
    p = subprocess.run([sys.executable, os.path.join(HERE, argv[0]), *argv[1:]], cwd=ROOT, capture_output=True,
                       text=True)
    print(p.stdout + (f"\n(stderr) {p.stderr.strip()[-2000:]}" if p.returncode else ""), flush=True)
    if p.returncode:
        print(f"{name}: exit {p.returncode}", flush=True)
    return p.stdout, time.monotonic() - t


def load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"missed: {miss}"


def sampler_rows(out: str) -> list[str]:
    """The summary rows of bench_sampler.py's output, each with its goal and verdict."""
    cells = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith(("| what", "|---")):
            c = [x.strip() for x in line.strip("|").split("|")]
            cells[c[0]] = c[1:]

    def x(name: str) -> float:
        return float(cells[name][1])
    rows = []
    c_row, conv_row = "native sampler: C read + parse (mp_sample_once)", \
        "native sampler + conversion to a Python Sample (fields built when read)"
    ps_row = next((k for k in cells if k.startswith("psutil")), None)
    if c_row in cells:
        rows.append(f"| sampler: C read + parse | {x(c_row):.2f}x the pread floor | <= 1.2x | "
                    f"{verdict(x(c_row) <= 1.2, 'by %+.2fx' % (x(c_row) - 1.2))} |")
    if conv_row in cells:
        rows.append(f"| sampler: C + conversion to a Python Sample | {x(conv_row):.2f}x | <= 1.5x | "
                    f"{verdict(x(conv_row) <= 1.5, 'by %+.2fx' % (x(conv_row) - 1.5))} |")
    if ps_row and conv_row in cells:
        ahead, bound = x(ps_row) / x(conv_row), x(ps_row)
        miss = f"{ahead:.2f}x; " + (f"the floor itself is only {bound:.2f}x ahead: no reader of these files reaches 3x"
                                    if bound < 3 else "the floor allows it")
        rows.append(f"| sampler: psutil's time / native + conversion | {ahead:.2f}x | >= 3x | "
                    f"{verdict(ahead >= 3, miss)} |")
    whole = next((v for k, v in cells.items() if k.startswith("whole process")), None)
    m = re.search(r"([0-9.]+)x floor", whole[0]) if whole else None
    if m:
        drop = next((v[0] for k, v in cells.items() if k.startswith("samples / dropped")), "?")
        rows.append(f"| sampler: 1 kHz, whole process CPU / the floor's ({drop}) | {float(m.group(1)):.2f}x | "
                    f"<= 2x, 0 dropped | {verdict(float(m.group(1)) <= 2 and drop.endswith('/ 0'), 'see the row')} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], choices=NAMES)
    ap.add_argument("--baseline", metavar="DIR", help="source tree to compare the exporter and report with")
    a = ap.parse_args()
    base = ["--baseline", a.baseline] if a.baseline else []
    tmp = tempfile.mkdtemp(prefix="memprobe-bench-all-")
    j = {n: os.path.join(tmp, f"{n}.json") for n in NAMES}
    load0 = os.getloadavg()
    outs: dict[str, str] = {}
    if "sampler" not in a.skip:
        outs["sampler"], _ = run("sampler", ["bench_sampler.py"])
    if "bpf" not in a.skip:
        outs["bpf"], _ = run("bpf", ["bench_bpf.py", "--gib", "1", "--rounds", "2" if a.quick else "5",
                                     "--json", j["bpf"]])
    if "export" not in a.skip:
        outs["export"], _ = run("export", ["bench_export.py", "both", "--seconds", "20" if a.quick else "60",
                                           "--json", j["export"], *base])
    if "report" not in a.skip:
        outs["report"], _ = run("report", ["bench_report.py", "--minutes", "60" if a.quick else "1440", "--child",
                                           "--seeks", "50", "--no-events", "--json", j["report"], *base])
    if "flight" not in a.skip:
        for kind in ("idle", "busy"):
            j[f"flight-{kind}"] = os.path.join(tmp, f"flight-{kind}.json")
            outs[f"flight-{kind}"], _ = run(f"flight ({kind})", ["bench_flight.py", "20", "20" if a.quick else "40",
                                                                *(["--busy"] if kind == "busy" else []),
                                                                "--json", j[f"flight-{kind}"]])
    load1 = os.getloadavg()
    u = os.uname()
    print(f"\n===== issues 21 and 22, side by side (one run)\nhost {u.nodename}, kernel {u.release} {u.machine}, "
          f"{os.cpu_count()} CPUs; load average {load0[0]:.2f} before, {load1[0]:.2f} after "
          "(other work on this machine shares its CPUs and inflates every number)\n")
    print("| measure | now | goal | verdict |\n|---|---|---|---|")
    for row in sampler_rows(outs.get("sampler", "")):
        print(row)
    b = load(j["bpf"])
    if b:
        sd = b["slowdown"]
        bt = sd.get("bpftrace one-liner")
        for key, goal in (("memprobe: faults (perf event, period 1)", None),
                          ("perf counter per cgroup (counting, no BPF)", None),
                          ("memprobe: default set (probes --run)", 1.03),
                          ("memprobe: everything (--fault-addresses --memcg-events)", 1.10),
                          ("bpftrace one-liner", None)):
            if key not in sd:
                continue
            v = sd[key]
            if goal is None:
                print(f"| eBPF, 1 GiB page by page: {key} | {v:.3f}x | - | |")
            else:
                ok = v <= goal and (bt is None or v < bt)
                print(f"| eBPF, 1 GiB page by page: {key} | {v:.3f}x | <= {goal:.2f}x and below bpftrace "
                      f"({'not installed' if bt is None else f'{bt:.3f}x'}) | "
                      f"{verdict(ok, 'by %+.3fx' % (v - goal) + ('' if bt is None or v < bt else ', above bpftrace'))} |")
    e = load(j["export"])
    if e and "scrape" in e:
        s = e["scrape"]
        print(f"| exporter, {s['parallel']} parallel scrapes, {s['targets']} targets, {s['body_bytes'] / 1000:.0f} KB "
              f"| p50 {s['p50_s'] * 1e3:.1f} ms, p99 {s['p99_s'] * 1e3:.1f} ms | p99 <= 50 ms | "
              f"{verdict(s['p99_s'] <= 0.05, 'by %.0f ms' % ((s['p99_s'] - 0.05) * 1e3))} |")
    if e and "scale" in e:
        s = e["scale"]
        b0 = s.get("baseline")
        was = f"; baseline {b0['cpu_share'] * 100:.2f} %" if b0 else ""
        print(f"| export --all-containers, {s['containers']} containers at {s['interval_s']:g} s "
              f"| {s['cpu_share'] * 100:.2f} % of a core ({s['followed']} followed{was}) | < 5 % | "
              f"{verdict(s['cpu_share'] < 0.05, 'by %.2f points' % ((s['cpu_share'] - 0.05) * 100))} |")
    r = load(j["report"])
    if r:
        h = r["minutes"] / 60
        ok = r["report_s"] <= 30 and r["report_rss_bytes"] <= 1 << 30
        was = (f"; baseline {r['baseline_report_s']:.1f} s, {r['baseline_rss_bytes'] / 2 ** 20:.0f} MiB, same "
               f"report: {r['same_as_baseline']}") if "baseline_report_s" in r else ""
        print(f"| report of a {h:g} h recording at {r['hz']:g} Hz ({r['samples']} samples) | {r['report_s']:.1f} s, "
              f"{r['report_rss_bytes'] / 2 ** 20:.0f} MiB RSS{was} | <= 30 s, <= 1 GiB | "
              f"{verdict(ok, 'see the numbers') if h >= 24 else 'not the 24 h run (--quick)'} |")
        if r.get("seek_max_s") is not None:
            print(f"| replay seek anywhere ({h:g} h recording) | p50 {r['seek_p50_s'] * 1e3:.1f} ms, max "
                  f"{r['seek_max_s'] * 1e3:.1f} ms | <= 100 ms | "
                  f"{verdict(r['seek_max_s'] <= 0.1, 'by %.0f ms' % ((r['seek_max_s'] - 0.1) * 1e3))} |")
    for kind in ("idle", "busy"):
        f = load(j.get(f"flight-{kind}", ""))
        if f:
            now, floor = f["share"]["now"], f["share"]["floor"]
            print(f"| flight recorder, {f['targets']} cgroups + host at 1 Hz, {kind} | {now * 100:.2f} % of a core, "
                  f"{f['bytes_per_day']['now'] / 2 ** 20:.0f} MiB/day on disk, "
                  f"{f['written_per_day']['now'] / 2 ** 30:.1f} GiB/day written (floor of its reads {floor * 100:.2f} %) | "
                  f"< 0.5 % | {verdict(now < 0.005, 'by %.2f points, %.1fx' % ((now - 0.005) * 100, now / 0.005))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
