"""TARGET on the command line: resolving it for any subcommand, its errors as exit codes, and
the live feed that `attach` and `record` follow it with."""
from __future__ import annotations

from . import EXIT_ERROR, EXIT_MISSING, EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_USAGE, CliError

# TargetError kinds -> exit codes (docs/exit-codes.md)
TARGET_EXIT = {"not_found": EXIT_NOT_FOUND, "not_running": EXIT_NOT_FOUND, "ambiguous": EXIT_USAGE,
               "usage": EXIT_USAGE, "permission": EXIT_PERMISSION, "missing": EXIT_MISSING}


def resolve_target(args, query: str):
    """Resolve TARGET for any subcommand; resolution errors become one-line CliErrors."""
    from ..sources.targets import Resolver, TargetError
    r = Resolver(proc=args.proc, cgroup_root=args.cgroup_root)
    try:
        return r, r.resolve(query)
    except TargetError as e:
        raise CliError(str(e), TARGET_EXIT.get(e.kind, EXIT_ERROR))


def bpf_wanted(args) -> bool:
    """--bpf: yes (fail if impossible); --no-bpf: no; default: when root and bcc are there."""
    from ..sources.bpf import base_status
    if args.bpf is not None:
        if args.bpf:
            ok, why = base_status()
            if not ok:
                raise CliError(f"--bpf: {why}", EXIT_USAGE)
        return args.bpf
    return base_status()[0]


def live_feed(args):
    """The LiveFeed of args.target (attach, record): resolved, with eBPF as asked."""
    from ..feed.live import LiveFeed
    bpf = bpf_wanted(args)                  # an impossible --bpf is said before TARGET is looked for
    resolver, target = resolve_target(args, args.target)
    return LiveFeed(resolver, target, bpf, exit_grace_s=args.exit_grace)
