"""memprobe attach TARGET: resolve a container, pod, unit, cgroup or PID, print it, then one
sample per interval until Ctrl-C/SIGTERM or the target exits (docs/attach.md)."""
from __future__ import annotations

import json
import sys
import time

from . import EXIT_MISSING, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, CliError
from .args import duration, fraction, interval, positive_int


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def add_parser(sub):
    p = sub.add_parser("attach", help="follow a container, pod, unit, cgroup or PID: live ledger on a terminal, "
                                      "one line per sample otherwise",
                       description="Resolve TARGET (container name or ID prefix of Docker, Podman or "
                                   "containerd; pod UID or namespace/name; systemd unit; cgroup path; PID; "
                                   "forms like docker:NAME, pod:UID, unit:NAME, cgroup:PATH, pid:N force a "
                                   "kind) and follow it until q, Ctrl-C, SIGTERM or the target exits. On a "
                                   "terminal: the live ledger screen (docs/attach.md); otherwise one line "
                                   "(or, with --json, one JSON object) per sample.")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--demo", action="store_true",
                   help="attach to a throwaway cgroup with a process holding 64 MiB anonymous memory and 64 MiB "
                        "of mapped page cache (removed at exit); without a terminal it stops after 5 samples")
    p.add_argument("--interval", type=interval, metavar="DURATION",
                   help="time between samples (default 100ms on a terminal, 1s otherwise; e.g. 250ms, 2s)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (target, sample, event, end)")
    p.add_argument("--count", type=positive_int, metavar="N", help="stop after N samples")
    p.add_argument("--record", metavar="FILE", help="also record into FILE (as `memprobe record` does)")
    p.add_argument("--force", action="store_true", help="with --record: overwrite an existing file")
    p.add_argument("--bpf", dest="bpf", action="store_true", default=None,
                   help="require the eBPF probes (default: use them when this host allows)")
    p.add_argument("--no-bpf", dest="bpf", action="store_false", help="do not load eBPF probes")
    p.add_argument("--kv-fraction", type=fraction, default=0.9, metavar="F",
                   help="fraction of CUDA free an engine gives its KV cache (default 0.9)")
    p.add_argument("--exit-grace", type=duration, default=2.0, metavar="DURATION",
                   help="how long a vanished target may take to come back (restart) before attach ends "
                        "(default 2s)")
    return p


def run(args) -> int:
    if (args.target is None) == (not args.demo):
        raise CliError("give a TARGET or --demo", EXIT_USAGE)
    tty = sys.stdout.isatty() and sys.stdin.isatty() and not args.json
    interval = args.interval or (0.1 if tty else 1.0)
    demo = None
    if args.demo:
        from .demo import Demo
        demo = Demo(args.cgroup_root)
        args.target = f"cgroup:{demo.path}"
        if not tty and args.count is None:
            args.count = 5
    try:
        return _attach(args, tty, interval)
    finally:
        if demo is not None:
            demo.close()


def _attach(args, tty: bool, interval: float) -> int:
    from ..feed.recorder import Recorder, recording_header
    from ..recording import RecordingError
    from .record import close_recording
    from .target import live_feed

    feed = live_feed(args)
    rec = None
    try:
        if feed.follower.target.cgroup_path is None and not feed.follower.target.pids:
            raise CliError(f"{feed.target_text()}: nothing to sample", EXIT_MISSING)
        if args.record:
            try:
                rec = Recorder(args.record, recording_header(feed, interval, args.kv_fraction),
                               overwrite=args.force)
            except (RecordingError, OSError) as e:
                raise CliError(f"cannot create {args.record}: {e}", EXIT_OUTPUT)
        if tty and args.count is None:
            from .tui import run_live
            try:
                end = run_live(feed, interval, args.kv_fraction, recorder=rec)
            except KeyboardInterrupt:
                end = None
            samples = rec.samples if rec else None
            print(event_text(end, feed, samples))
        else:
            _plain(args, feed, interval, rec)
    finally:
        feed.close()
        if rec is not None:
            print(close_recording(rec), file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def event_text(end, feed, samples) -> str:
    from ..views.attach import event_line
    n = f"; {plural(samples, 'sample')} recorded" if samples is not None else ""
    if end is None:
        return event_line("quit", f"left {feed.target_text()}{n}", time.time_ns())
    return event_line(end["kind"], f"{end['message']}{n}", end["wall_ns"])


def _plain(args, feed, interval: float, rec) -> None:
    """One line (or JSON object) per sample, until the target ends, --count, or Ctrl-C/SIGTERM."""
    from ..feed.ticker import Ticker
    from ..samples import sample_to_dict
    from ..sources.targets import target_to_dict
    from ..views.attach import event_line, header_line, sample_line, target_lines
    from .common import host_header

    out = sys.stdout
    header = host_header(feed.sampler_kind, feed.target_text())

    def emit(obj):
        out.write(json.dumps(obj, default=str) + "\n")
        out.flush()

    def show_target():
        if args.json:
            emit({"type": "target", "header": header, "target": target_to_dict(feed.follower.target)})
        else:
            out.write("\n".join(target_lines(target_to_dict(feed.follower.target))) + "\n")
            out.write(header_line() + "\n")
            out.flush()

    def show_event(kind, message, wall_ns, facts):
        if args.json:
            emit({"type": "end" if kind in ("ended", "count", "interrupted") else "event", "kind": kind,
                  "message": message, "wall_ns": wall_ns, "facts": facts, "samples": feed.follower.samples})
        else:
            out.write(event_line(kind, message, wall_ns) + "\n")
            out.flush()

    show_target()
    tick = Ticker(interval)
    final = None
    woke = False
    try:
        while True:
            item, end = feed.tick()
            if rec is not None:
                rec.write(item)
            for e in item.events:
                if e["kind"] == "ended":
                    final = (e["kind"], f"{e['message']}; {plural(feed.follower.samples, 'sample')}", e["wall_ns"],
                             e["facts"])
                    continue
                show_event(e["kind"], e["message"], e["wall_ns"], e["facts"])
                if e["kind"] == "cgroup-changed":
                    show_target()
            if item.sample is not None:
                if args.json:
                    emit({"type": "sample", "sample": sample_to_dict(item.sample)})
                else:
                    out.write(sample_line(item.sample) + "\n")
                    out.flush()
            if final is not None:
                break
            if args.count is not None and feed.follower.samples >= args.count:
                final = ("count", f"stopped after --count {args.count}; {plural(feed.follower.samples, 'sample')}",
                         time.time_ns(), {})
                break
            delay = tick.left() if woke else tick.next()    # a woken tick comes in addition to the schedule
            if item.sample is None:
                delay = tick.within(0.2)      # while the target is away, look again sooner
            woke = feed.wait(delay)           # memory pressure or limit events end it early
    except KeyboardInterrupt:
        final = ("interrupted", f"interrupted; {plural(feed.follower.samples, 'sample')}", time.time_ns(), {})
    show_event(*final)
