"""memprobe ls: attachable targets (containers of every engine that answers, pods, systemd
units with memory accounting) with their cgroup and current memory (docs/ls.md)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

EXAMPLES = 3       # largest memory cgroups shown as `attach cgroup:` examples (docs/ls.md)


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
        stuck = not rows or not any(a.ok for a in r.attempts)    # nothing listed, or no engine answered
        print(render_ls(rows, tried, largest_cgroups(r) if stuck else None))
    return 0


def largest_cgroups(r, n: int = EXAMPLES) -> list[tuple[str, int]]:
    """(path, memory.current) of the n leaf memory cgroups holding the most memory: examples
    of what `memprobe attach cgroup:PATH` can follow."""
    from ..sources.targets.listing import read_current_bytes
    from ..sources.targets.paths import walk_cgroups

    v = r.cgfs.layout.memory_version
    base = r.cgfs.memory_root(v)
    if base is None:
        return []
    paths = list(walk_cgroups(base))
    parents = {p.rsplit("/", 1)[0] for p in paths}
    sized = [(p, read_current_bytes(r.cgfs.directory(p, v), v)) for p in paths if p not in parents]
    return sorted(((p, b) for p, b in sized if b), key=lambda x: (-x[1], x[0]))[:n]
