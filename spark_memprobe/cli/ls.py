"""memprobe ls: attachable targets (containers of every engine that answers, pods, systemd
units with memory accounting) with their cgroup and current memory (docs/ls.md)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict


def add_parser(sub):
    p = sub.add_parser("ls", help="list attachable targets: containers, pods, systemd units, with cgroup and memory")
    p.add_argument("--all", "-a", action="store_true", help="also containers that are not running")
    p.add_argument("--no-units", action="store_true", help="leave out systemd units")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args) -> int:
    from ..sources.targets import Resolver, list_targets
    from ..views.ls import render_ls

    r = Resolver(proc=args.proc, cgroup_root=args.cgroup_root)
    rows = [asdict(x) for x in list_targets(r, all=args.all, units=not args.no_units)]
    scan = r.scan()
    tried = r.tried_lines() + [f"/proc scan: {scan.processes} processes"
                               + (f" ({scan.unreadable} unreadable)" if scan.unreadable else "")]
    if args.json:
        json.dump({"targets": rows, "asked": tried}, sys.stdout, indent=1)
        print()
    else:
        print(render_ls(rows, tried))
    return 0
