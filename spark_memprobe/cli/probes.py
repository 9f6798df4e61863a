"""memprobe probes: which eBPF probes this host supports; with --run, attach them and print
page faults, page cache by file, memcg changes and CUDA allocations (docs/probes.md)."""
from __future__ import annotations

import json
import os
import sys
import time

from . import EXIT_MISSING, EXIT_NOT_FOUND, EXIT_PERMISSION, CliError
from .args import cgroup_path, duration, positive_int
from .common import host_header, print_renderable


def add_parser(sub):
    p = sub.add_parser("probes", help="eBPF attribution: page faults, page cache by file, memcg charges, "
                                      "CUDA allocations (list what this host supports; --run to attach)")
    p.add_argument("--run", action="store_true", help="attach the probes and print what they saw")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cgroup", type=cgroup_path, metavar="PATH", help="target memory cgroup path inside its hierarchy")
    g.add_argument("--pid", type=int, help="target process")
    p.add_argument("--duration", type=duration, metavar="DURATION",
                   help="how long to run, e.g. 30s, 10m, 1h (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--dump-bpf", action="store_true", help="print the BPF program text and exit")
    p.add_argument("--cuda-lib", action="append", default=[], metavar="PATH",
                   help="also hook this libcuda.so.1 (host path), e.g. before the target loads it")
    p.add_argument("--cuda-stacks", action="store_true", help="record the user stack of each CUDA call")
    p.add_argument("--scan-dir", action="append", default=[], metavar="DIR",
                   help="name page-cache files by scanning DIR (e.g. a model directory)")
    p.add_argument("--top", type=positive_int, default=15, metavar="N", help="rows per table (default 15)")
    p.add_argument("--page-owner-entries", type=positive_int, default=1 << 20, metavar="N",
                   help="folios whose owner is remembered (kernel memory, not preallocated)")
    p.add_argument("--fault-events", action="store_true",
                   help="count faults per (cgroup, process) with a BPF program on every fault, exited processes "
                        "included (default: /proc/<pid>/stat counters, no per-fault cost)")
    p.add_argument("--fault-addresses", action="store_true",
                   help="also count user faults per mapping (x86 raw tracepoint; a BPF program on every user fault)")
    p.add_argument("--memcg-stream", action="store_true",
                   help="sum memcg stat updates with tracepoints, increases and decreases apart (several hits per "
                        "fault; default: memory.stat at start and end)")
    p.add_argument("--memcg-events", action="store_true",
                   help="also sum memcg event counters (pgfault, ...; fires on every fault; implies --memcg-stream)")
    for name in ("faults", "pagecache", "memcg", "cuda", "uvm"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"do not attach the {name} probe")
    return p


def _options(args):
    from ..sources.bpf import ProbeOptions
    return ProbeOptions(faults=not args.no_faults, fault_events=args.fault_events,
                        fault_addresses=args.fault_addresses, memcg_stream=args.memcg_stream,
                        memcg_events=args.memcg_events, pagecache=not args.no_pagecache, memcg=not args.no_memcg,
                        cuda=not args.no_cuda, uvm=not args.no_uvm, cuda_libs=args.cuda_lib, cuda_stacks=args.cuda_stacks,
                        scan_dirs=args.scan_dir, page_owner_entries=args.page_owner_entries,
                        cgroup=args.cgroup, pid=args.pid)


def run(args) -> int:
    from ..probe_report import report_to_dict
    from ..sources.bpf import ProbeSession, ProbesUnavailable, base_status, detect
    from ..sources.targets import is_real_dir
    from ..views.probes import render_probe_list, render_report

    if args.dump_bpf:
        s = ProbeSession(_options(args), proc=args.proc, cgroup_root=args.cgroup_root)
        sys.stdout.write(s.program_text() + "\n")
        return 0
    if not args.run:
        ok, why = base_status()
        statuses = detect(want_fentry=ok)
        if args.json:
            json.dump({"usable": ok, "reason": why, "probes": [vars(s) for s in statuses]}, sys.stdout, indent=1)
            print()
        else:
            print_renderable(render_probe_list(statuses, "" if ok else f"eBPF probes unavailable: {why}"))
        return 0

    if args.pid is not None and not os.path.isdir(f"{args.proc}/{args.pid}"):
        raise CliError(f"no process {args.pid}", EXIT_NOT_FOUND)
    session = ProbeSession(_options(args), proc=args.proc, cgroup_root=args.cgroup_root,
                           log=lambda m: print(f"memprobe: {m}", file=sys.stderr))
    cgfs = session.cgfs
    if args.cgroup is not None and not is_real_dir(cgfs.directory(args.cgroup), cgfs.memory_root()):
        raise CliError(f"no such memory cgroup: {args.cgroup}", EXIT_NOT_FOUND)
    try:
        try:
            session.start()
        except ProbesUnavailable as e:
            code = EXIT_PERMISSION if os.geteuid() != 0 else EXIT_MISSING
            raise CliError(f"eBPF probes unavailable: {e}", code)
        chosen = ", ".join(sorted({s.name for s in session.statuses if s.chosen}))
        deadline = time.monotonic() + args.duration if args.duration else None
        try:
            print(f"memprobe: probes attached ({chosen}); "
                  + (f"running {args.duration:g} s" if args.duration else "running until Ctrl-C"),
                  file=sys.stderr, flush=True)
            while deadline is None or time.monotonic() < deadline:
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                time.sleep(max(left, 0))
                session.poll()
        except KeyboardInterrupt:
            pass                        # Ctrl-C / SIGTERM end the run: report what was seen
        report = session.collect()
    finally:
        session.close()                 # detach before printing (and on any error)
    if args.json:
        json.dump({"header": host_header("bpf", report.target or "whole host"), "report": report_to_dict(report)},
                  sys.stdout, indent=1)
        print()
    else:
        print_renderable(render_report(report, top=args.top))
    return 0
