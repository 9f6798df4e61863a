"""memprobe record TARGET -o run.db: sample a target headless into a recording (docs/record.md)."""
from __future__ import annotations

import argparse
import sys
import time

from . import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, CliError
from .engine_log import add_record_arguments, engine_follower
from .args import MIN_INTERVAL_S, burst_interval, duration, fraction, size


def add_parser(sub):
    p = sub.add_parser("record", help="record a target's samples (and eBPF events) into an SQLite file, headless")
    p.add_argument("target", metavar="TARGET", nargs="*",
                   help="anything `memprobe attach` takes (with --dir: any number, or none with --all-containers)")
    p.add_argument("-o", "--output", metavar="FILE", help="recording to create (mode 0600)")
    p.add_argument("--interval", type=burst_interval, default=None, metavar="DURATION",
                   help="time between samples (default 100ms, with --dir 1s; under 10ms: burst mode, docs/record.md)")
    p.add_argument("--duration", type=duration, metavar="DURATION", help="stop after this long (e.g. 10m, 1h30m)")
    p.add_argument("--bpf", dest="bpf", action="store_true", default=None,
                   help="require the eBPF probes (default: use them when this host allows)")
    p.add_argument("--no-bpf", dest="bpf", action="store_false", help="do not load eBPF probes")
    p.add_argument("--max-size", default="1G", metavar="SIZE", help="stop recording at this file size (default 1G)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--kv-fraction", type=fraction, default=0.9, metavar="F",
                   help="fraction for the KV-cache budget, kept in the header for reports (default 0.9)")
    p.add_argument("--exit-grace", type=duration, default=2.0, metavar="DURATION",
                   help="how long a vanished target may take to come back (default 2s)")
    add_record_arguments(p)
    add_flight_arguments(p)
    return p


def add_flight_arguments(p) -> None:
    g = p.add_argument_group("flight recorder (docs/flight-recorder.md)")
    g.add_argument("--dir", metavar="DIR", help="record as a service into rotated files in DIR (created 0700)")
    g.add_argument("--all-containers", action="store_true", help="with --dir: every running container and pod")
    g.add_argument("--rotate", type=duration, default=3600.0, metavar="DURATION", help="new files every (default 1h)")
    g.add_argument("--retain", type=duration, default=86400.0, metavar="DURATION",
                   help="delete files older than this (default 24h)")
    g.add_argument("--max-total", default="2G", metavar="SIZE", help="delete the oldest files above this (default 2G)")
    g.add_argument("--psi-stall", type=_off_or_duration, default=0.1, metavar="DURATION",
                   help="PSI trigger: memory stall within --psi-window (default 100ms; off: none)")
    g.add_argument("--psi-window", type=duration, default=2.0, metavar="DURATION",
                   help="PSI trigger window, 2s to 10s in steps of 2s (default 2s)")
    g.add_argument("--available-below", metavar="SIZE", help="trigger when MemAvailable falls below SIZE")
    g.add_argument("--before", type=duration, default=60.0, metavar="DURATION",
                   help="kept at 100 ms before a trigger (default 60s)")
    g.add_argument("--after", type=duration, default=60.0, metavar="DURATION",
                   help="recorded at 100 ms after a trigger (default 60s)")


def _off_or_duration(text: str) -> float:
    return 0.0 if text in ("0", "off") else duration(text)


def run_flight(args) -> int:
    """--dir: the flight recorder, until SIGTERM or Ctrl-C (then every file is closed whole)."""
    import signal
    from ..feed.flight import FlightOptions, FlightRecorder
    from ..feed.multi import TargetSet
    from ..feed.ticker import Ticker
    from ..recording import RecordingError
    from .target import bpf_wanted
    if args.dir is None:
        raise CliError("--all-containers records into a directory: give --dir DIR", EXIT_USAGE)
    if args.output is not None:
        raise CliError("give -o FILE (one recording) or --dir DIR (the flight recorder), not both", EXIT_USAGE)
    if not args.target and not args.all_containers:
        raise CliError("give TARGETs, --all-containers, or both", EXIT_USAGE)
    window = int(args.psi_window * 1e6)
    if args.psi_stall and (window % 2_000_000 or not 2_000_000 <= window <= 10_000_000):
        raise CliError("--psi-window: 2s to 10s in steps of 2s (what the kernel allows every caller)", EXIT_USAGE)
    try:
        max_total = size(args.max_total)
        below = size(args.available_below) if args.available_below else None
    except argparse.ArgumentTypeError as e:
        raise CliError(f"size: {e}", EXIT_USAGE)
    base = args.interval or 1.0
    opts = FlightOptions(directory=args.dir, base_s=base, fast_s=min(0.1, base), ring_s=args.before,
                         after_s=args.after, rotate_s=args.rotate, retain_s=args.retain, max_total_bytes=max_total,
                         psi_stall_us=int(args.psi_stall * 1e6) or None, psi_window_us=window,
                         available_below_bytes=below, kv_fraction=args.kv_fraction, bpf=bpf_wanted(args))

    def log(msg: str) -> None:
        print(msg, flush=True)
    said: dict[str, str] = {}

    def say(key: str, msg: str) -> None:
        if said.get(key) != msg:
            said[key] = msg
            log(msg)
    ts = TargetSet(args.proc, args.cgroup_root, list(args.target), args.all_containers, 5.0, args.kv_fraction,
                   say, lambda stage, e: say(f"error:{stage}", f"{stage}: {type(e).__name__}: {e}"))
    try:
        fr = FlightRecorder(opts, ts, log, proc=args.proc, cgroup_root=args.cgroup_root)
    except (RecordingError, OSError) as e:
        ts.close()
        raise CliError(f"cannot record into {args.dir}: {e}", EXIT_OUTPUT) from None
    signal.signal(signal.SIGTERM, _interrupt)
    log(f"flight recorder: {args.dir}, every {base:g} s, {opts.fast_s * 1000:g} ms around triggers")
    tick = Ticker(opts.fast_s)
    try:
        while True:
            fr.tick()
            step, ring_in_c = fr.step_s(), fr.thread_ring is not None
            left = tick.next()                  # to the next base tick while the C ring reads, else 100 ms,
            while left < step - opts.fast_s / 2:
                left = tick.next()              # with the deadlines on the 100 ms grid: no drift
            fr.wait(left)
            if ring_in_c and fr.thread_ring is None:
                tick.restart()                  # a trigger opened a window: 100 ms ticks from now
    except KeyboardInterrupt:
        log("stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)      # a second SIGTERM must not cut the close short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fr.close()
    return EXIT_OK


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def run(args) -> int:
    from ..feed.recorder import Recorder, recording_header
    from ..feed.ticker import Ticker
    from ..recording import MIN_MAX_BYTES, RecordingError
    from .target import live_feed

    if args.dir is not None or args.all_containers:
        return run_flight(args)
    if len(args.target) != 1 or args.output is None:
        raise CliError("give one TARGET and -o FILE (or --dir DIR: docs/flight-recorder.md)", EXIT_USAGE)
    args.target = args.target[0]
    args.interval = 0.1 if args.interval is None else args.interval
    try:
        max_bytes = size(args.max_size)
    except argparse.ArgumentTypeError as e:
        raise CliError(f"--max-size: {e}", EXIT_USAGE)
    if max_bytes < MIN_MAX_BYTES:
        raise CliError(f"--max-size {args.max_size} is too small: a recording's header and first sample need up "
                       f"to {MIN_MAX_BYTES >> 10}K", EXIT_USAGE)
    feed = live_feed(args)
    follower = None
    burst_s = None
    if args.interval < MIN_INTERVAL_S:        # burst mode: the C ring at that rate (feed/burst.py)
        from ..feed.burst import burst_plan
        burst_s, args.interval, plan = burst_plan(feed, args.interval)
        print(plan, flush=True)
    rec = None
    try:
        try:
            rec = Recorder(args.output, recording_header(feed, args.interval, args.kv_fraction),
                           overwrite=args.force, max_bytes=max_bytes)
        except RecordingError as e:
            raise CliError(f"cannot create {args.output}: {e}", EXIT_OUTPUT)
        if burst_s is not None:
            from ..feed.burst import BurstFeed
            feed = BurstFeed(feed, rec, burst_s, say=lambda msg: print(msg, flush=True))
        probes = [p["name"] for p in feed.header.probes or [] if p.get("chosen")]
        print(f"recording {feed.target_text()} every {args.interval * 1000:g} ms to {args.output}; eBPF: "
              f"{', '.join(sorted(set(probes))) if probes else 'off'}", flush=True)
        follower = engine_follower(args, feed.header.target)
        t0 = time.monotonic()
        tick = Ticker(args.interval)
        end = None
        try:
            while True:
                item, end = feed.tick()
                rec.write(item)
                if follower is not None:
                    rec.add_engine_facts(follower.take())
                for e in item.events:
                    print(f"{e['kind']}: {e['message']}", flush=True)
                if end is not None or rec.full:
                    break
                if args.duration is not None and time.monotonic() - t0 >= args.duration:
                    break
                time.sleep(tick.next())
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
        except RecordingError as e:                   # disk full, I/O error
            raise CliError(str(e), EXIT_OUTPUT) from None
    finally:
        if follower is not None:
            follower.close()
            if rec is not None:
                rec.add_engine_facts(follower.take())
        feed.close()
        if rec is not None:
            print(close_recording(rec), flush=True)
    return EXIT_OK


def recording_status(rec) -> str:
    """The recording's line on the live screen: file, size, FULL once --max-size is reached."""
    from ..views.fmt import fmt_bytes
    return f"{rec.path} {fmt_bytes(rec.size_bytes())}" + (" FULL" if rec.full else "")


def close_recording(rec) -> str:
    """Commit and close a feed.recorder.Recorder; one line: what was recorded (and why a -wal
    is left, if one is)."""
    from ..views.fmt import fmt_bytes
    note = rec.close()
    size_b = rec.size_bytes()
    n = rec.saved
    per = f", {size_b / n:.0f} bytes/sample" if n else ""
    lost = f"; {rec.samples - n} samples not written" if rec.samples > n else ""
    return f"recorded {n} samples to {rec.path} ({fmt_bytes(size_b)}{per}){lost}" + (f"; {note}" if note else "")
