"""memprobe snapshot: one full sample (host + target cgroup + its processes) and the page
allocator's state (zones, free blocks by size and migrate type), as tables or JSON."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from . import EXIT_MISSING, EXIT_NOT_FOUND, EXIT_USAGE, CliError
from .args import cgroup_path, fraction
from .common import host_header, print_renderable


def add_parser(sub):
    p = sub.add_parser("snapshot", help="print one full sample of the host and a target cgroup")
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="container name or ID prefix, pod UID, systemd unit, cgroup path or PID "
                        "(every form `memprobe attach` takes; docs/attach.md)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cgroup", type=cgroup_path, metavar="PATH", help="memory cgroup path inside its hierarchy, e.g. /docker/<id>")
    g.add_argument("--pid", type=int, help="a process: its memory cgroup and itself")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--ledger", action="store_true",
                   help="print the ledger instead: every view of the target's bytes, findings, KV-cache budget "
                        "(docs/ledger.md)")
    p.add_argument("--kv-fraction", type=fraction, default=0.9, metavar="F",
                   help="with --ledger: the fraction of CUDA free an engine gives its KV cache (default 0.9)")
    return p


def run(args) -> int:
    from ..feed.host import open_host
    from ..samples import sample_to_dict
    from ..sources.cgroupfs import CgroupFS, norm_path, parse_proc_cgroup
    from ..sources.procfs import read_pid_cgroup
    from ..sources.targets import is_real_dir
    from ..sources.zones import read_kernel_memory
    from ..views.snapshot import render_sample

    cgfs = CgroupFS(args.cgroup_root)
    cgroup, pids, target = args.cgroup, None, "host only (give --cgroup or --pid for a target)"
    version = None
    if args.target is not None:
        if args.pid is not None or args.cgroup is not None:
            raise CliError("give TARGET or --cgroup/--pid, not both", EXIT_USAGE)
        from .target import resolve_target
        _, t = resolve_target(args, args.target)
        cgroup, version, pids, target = t.cgroup_path, t.cgroup_version, t.pids, t.describe()
    elif args.pid is not None:
        try:
            version, cgroup = cgfs.memory_cgroup_of(parse_proc_cgroup(read_pid_cgroup(args.pid, args.proc)))
        except FileNotFoundError:
            raise CliError(f"no process {args.pid}", EXIT_NOT_FOUND)
        if cgroup is None:
            raise CliError(f"process {args.pid} has no memory cgroup (layout: {cgfs.layout.mode})", EXIT_MISSING)
        pids = [args.pid]
        target = f"pid {args.pid} in memory cgroup v{version} {cgroup}"
    elif cgroup is not None:
        if cgfs.layout.memory_version is None:
            raise CliError(f"no memory cgroup hierarchy under {args.cgroup_root}", EXIT_MISSING)
        d = cgfs.directory(cgroup)
        if not is_real_dir(d, cgfs.memory_root()):
            raise CliError(f"no such memory cgroup: {cgroup} (looked in {d})", EXIT_NOT_FOUND)
        target = f"memory cgroup v{cgfs.layout.memory_version} {norm_path(cgroup)}"
    smp, s, host = open_host(args.proc, args.cgroup_root, detail=True, cgroup=cgroup, version=version, pids=pids)
    smp.close()
    # read right after the sample, whose meminfo MemAvailable is taken apart with; pagetypeinfo
    # only here, not per tick (root only, and the kernel walks every free list to print it)
    kernel = read_kernel_memory(args.proc, s.notes, page_types=True)
    header = host_header(smp.kind, target)
    if args.ledger:
        return _print_ledger(args, header, host, s, kernel)
    from ..ledger.available import decompose_mem_available, free_in_blocks_bytes
    zones = kernel.zones if kernel is not None else None
    avail = decompose_mem_available(s.meminfo, zones, host.page_size)
    if args.json:
        json.dump({"header": header, "host": asdict(host), "sample": sample_to_dict(s),
                   "kernel": asdict(kernel) if kernel is not None else None,
                   "mem_available": asdict(avail) if avail is not None else None,
                   "free_in_2mib_blocks_bytes": free_in_blocks_bytes(zones, host.page_size)}, sys.stdout, indent=1)
        print()
    else:
        print_renderable(render_sample(s, header, host, kernel, avail))
    return 0


def _print_ledger(args, header, host, s, kernel) -> int:
    from ..ledger import LedgerInputs, build_ledger, ledger_to_dict
    from ..views.ledger import render_ledger

    ledger = build_ledger(host, s, LedgerInputs(kernel=kernel), kv_fraction=args.kv_fraction)
    if args.json:
        json.dump({"header": header, "host": asdict(host), "ledger": ledger_to_dict(ledger),
                   "kernel": asdict(kernel) if kernel is not None else None}, sys.stdout, indent=1)
        print()
    else:
        print_renderable(render_ledger(ledger))
    return 0
