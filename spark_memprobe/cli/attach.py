"""memprobe attach TARGET: resolve a container, pod, unit, cgroup or PID, print it, then one
sample per interval until Ctrl-C/SIGTERM or the target exits (docs/attach.md)."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

from . import (EXIT_ERROR, EXIT_MISSING, EXIT_NOT_FOUND, EXIT_OK, EXIT_PERMISSION, EXIT_USAGE,
               CliError)

# TargetError kinds -> exit codes (docs/exit-codes.md)
TARGET_EXIT = {"not_found": EXIT_NOT_FOUND, "not_running": EXIT_NOT_FOUND, "ambiguous": EXIT_USAGE,
               "usage": EXIT_USAGE, "permission": EXIT_PERMISSION, "missing": EXIT_MISSING}


def parse_interval(text: str) -> float:
    """'1s', '250ms', '0.5', '2m' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 1s, 250ms, 0.5)")
    v = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if v < 0.01:
        raise argparse.ArgumentTypeError(f"interval {text!r} is below 10 ms")
    return v


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def resolve_target(args, query: str):
    """Resolve TARGET for any subcommand; resolution errors become one-line CliErrors."""
    from ..sources.targets import Resolver, TargetError
    r = Resolver(proc=args.proc, cgroup_root=args.cgroup_root)
    try:
        return r, r.resolve(query)
    except TargetError as e:
        raise CliError(str(e), TARGET_EXIT.get(e.kind, EXIT_ERROR))


def add_parser(sub):
    p = sub.add_parser("attach", help="follow a container, pod, unit, cgroup or PID: one sample per interval",
                       description="Resolve TARGET (container name or ID prefix of Docker, Podman or "
                                   "containerd; pod UID or namespace/name; systemd unit; cgroup path; PID; "
                                   "forms like docker:NAME, pod:UID, unit:NAME, cgroup:PATH, pid:N force a "
                                   "kind), print it, then one sample per interval until Ctrl-C, SIGTERM or "
                                   "the target exits.")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--interval", type=parse_interval, default=1.0, metavar="DURATION",
                   help="time between samples (default 1s; e.g. 250ms, 2s)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (target, sample, event, end)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N samples")
    p.add_argument("--exit-grace", type=parse_interval, default=2.0, metavar="DURATION",
                   help="how long a vanished target may take to come back (restart) before attach ends "
                        "(default 2s)")
    return p


def run(args) -> int:
    from ..samples import sample_to_dict
    from ..sources.targets import Follower, FollowEvent, follow_loop, target_to_dict
    from ..views.attach import event_line, header_line, live_view, sample_line, target_lines
    from .common import host_header

    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", EXIT_USAGE)
    resolver, target = resolve_target(args, args.target)
    if target.cgroup_path is None and not target.pids:
        raise CliError(f"{target.describe()}: nothing to sample", EXIT_MISSING)
    follower = Follower(resolver, target, exit_grace_s=args.exit_grace)
    out = sys.stdout
    tty = out.isatty() and not args.json
    header = host_header(follower.sampler.kind, target.describe())

    def emit(obj):
        out.write(json.dumps(obj, default=str) + "\n")
        out.flush()

    samples, events = [], []
    live = None
    if args.json:
        emit({"type": "target", "header": header, "target": target_to_dict(target)})
    elif tty:
        from rich.console import Console
        from rich.live import Live
        live = Live(live_view(target_to_dict(target), [], []), console=Console(), auto_refresh=False,
                    transient=False)
        live.start()
    else:
        out.write("\n".join(target_lines(target_to_dict(target))) + "\n")
        out.write(header_line() + "\n")
        out.flush()

    def on_sample(s):
        if args.json:
            emit({"type": "sample", "sample": sample_to_dict(s)})
        elif live is not None:
            samples.append(s)
            del samples[:-100]
            live.update(live_view(target_to_dict(follower.target), samples, events), refresh=True)
        else:
            out.write(sample_line(s) + "\n")
            out.flush()

    def on_event(e):
        if e.kind == "ended":
            e = FollowEvent(e.kind, f"{e.message}; {plural(follower.samples, 'sample')}", e.wall_ns, e.facts)
        if args.json:
            emit({"type": "end" if e.kind in ("ended", "count", "interrupted") else "event", "kind": e.kind,
                  "message": e.message, "wall_ns": e.wall_ns, "facts": e.facts,
                  "samples": follower.samples})
            if e.kind == "cgroup-changed":
                emit({"type": "target", "header": header, "target": target_to_dict(follower.target)})
        elif live is not None:
            events.append(event_line(e.kind, e.message, e.wall_ns))
            live.update(live_view(target_to_dict(follower.target), samples, events), refresh=True)
        else:
            out.write(event_line(e.kind, e.message, e.wall_ns) + "\n")
            if e.kind == "cgroup-changed":
                out.write("\n".join(target_lines(target_to_dict(follower.target))) + "\n")
                out.write(header_line() + "\n")
            out.flush()

    end = None
    try:
        end = follow_loop(follower, args.interval, on_sample, on_event, count=args.count)
    except KeyboardInterrupt:
        end = FollowEvent("interrupted", "interrupted", time.time_ns())
    finally:
        follower.close()
        if live is not None:
            live.stop()
    if end.kind in ("count", "interrupted"):
        final = f"{end.message}; {plural(follower.samples, 'sample')}"
        if args.json:
            on_event(FollowEvent(end.kind, final, end.wall_ns, end.facts))
        else:
            out.write(event_line(end.kind, final, end.wall_ns) + "\n")
    elif live is not None:
        # the "ended" event is in the live view; say it once more below it, where it stays
        out.write(event_line(end.kind, f"{end.message}; {plural(follower.samples, 'sample')}", end.wall_ns) + "\n")
    out.flush()
    return EXIT_OK
