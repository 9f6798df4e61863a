"""memprobe record TARGET -o run.db: sample a target headless into a recording (docs/record.md)."""
from __future__ import annotations

import argparse
import sys
import time

from . import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, CliError
from .args import duration, fraction, interval, size


def add_parser(sub):
    p = sub.add_parser("record", help="record a target's samples (and eBPF events) into an SQLite file, headless")
    p.add_argument("target", metavar="TARGET", help="anything `memprobe attach` takes")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="recording to create (mode 0600)")
    p.add_argument("--interval", type=interval, default=0.1, metavar="DURATION",
                   help="time between samples (default 100ms)")
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
    return p


def run(args) -> int:
    from ..feed.recorder import Recorder, recording_header
    from ..feed.ticker import Ticker
    from ..recording import MIN_MAX_BYTES, RecordingError
    from .target import live_feed

    try:
        max_bytes = size(args.max_size)
    except argparse.ArgumentTypeError as e:
        raise CliError(f"--max-size: {e}", EXIT_USAGE)
    if max_bytes < MIN_MAX_BYTES:
        raise CliError(f"--max-size {args.max_size} is too small: a recording's header and first sample need up "
                       f"to {MIN_MAX_BYTES >> 10}K", EXIT_USAGE)
    feed = live_feed(args)
    rec = None
    try:
        try:
            rec = Recorder(args.output, recording_header(feed, args.interval, args.kv_fraction),
                           overwrite=args.force, max_bytes=max_bytes)
        except RecordingError as e:
            raise CliError(f"cannot create {args.output}: {e}", EXIT_OUTPUT)
        probes = [p["name"] for p in feed.header.probes or [] if p.get("chosen")]
        print(f"recording {feed.target_text()} every {args.interval * 1000:g} ms to {args.output}; eBPF: "
              f"{', '.join(sorted(set(probes))) if probes else 'off'}", flush=True)
        t0 = time.monotonic()
        tick = Ticker(args.interval)
        end = None
        try:
            while True:
                item, end = feed.tick()
                rec.write(item)
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
