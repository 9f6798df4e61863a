"""memprobe replay run.db: the attach screen from a recording, or one JSON object per sample."""
from __future__ import annotations

import json
import sys

from . import EXIT_BAD_INPUT, EXIT_OK, CliError
from .args import fraction, positive_number


def add_parser(sub):
    p = sub.add_parser("replay", help="show a recording: the live screen with pause, step and seek, or JSON")
    p.add_argument("recording", metavar="FILE")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per sample: index, mono_ns, wall_ns, events, sample and ledger (its "
                        "rows, columns, findings and KV budget); no terminal needed")
    p.add_argument("--speed", type=positive_number, default=1.0, metavar="X",
                   help="playback speed on the terminal (default 1.0)")
    p.add_argument("--kv-fraction", type=fraction, metavar="F",
                   help="fraction for the KV-cache budget (default: the recording's, else 0.9)")
    return p


def open_feed(path: str):
    from ..feed.replay import ReplayFeed
    from ..recording import Recording, RecordingError
    try:
        rec = Recording(path)
    except RecordingError as e:
        raise CliError(str(e), EXIT_BAD_INPUT)
    try:
        feed = ReplayFeed(rec)
    except RecordingError as e:
        rec.close()
        raise CliError(str(e), EXIT_BAD_INPUT)
    if len(feed) == 0:
        rec.close()
        raise CliError(f"{path}: the recording holds no samples", EXIT_BAD_INPUT)
    return feed


def run(args) -> int:
    from ..feed import ledger_of
    from ..ledger import ledger_to_dict
    from ..recording import RecordingError
    from ..samples import sample_to_dict

    feed = open_feed(args.recording)
    fraction = args.kv_fraction or feed.rec.kv_fraction or 0.9
    try:
        if args.json or not (sys.stdout.isatty() and sys.stdin.isatty()):
            out = sys.stdout
            for i in range(len(feed)):
                item = feed.item(i)
                ledger = ledger_of(item, feed.header, fraction)
                out.write(json.dumps({"index": i, "mono_ns": item.sample.mono_ns, "wall_ns": item.sample.wall_ns,
                                      "events": item.events, "sample": sample_to_dict(item.sample),
                                      "ledger": ledger_to_dict(ledger)}, default=str) + "\n")
            out.flush()
        else:
            from .tui import run_replay
            try:
                run_replay(feed, fraction, speed=args.speed)
            except KeyboardInterrupt:
                pass
    except RecordingError as e:
        raise CliError(str(e), EXIT_BAD_INPUT)
    finally:
        feed.rec.close()               # nothing is left beside the file (recording.py)
    return EXIT_OK
