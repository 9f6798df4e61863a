"""memprobe report: explain a recording (or compare two) as self-contained HTML or Markdown.

    memprobe report run.db                    Markdown on stdout
    memprobe report run.db -o report.html     one HTML file: inline CSS and SVG, no script, no fetch
    memprobe report a.db b.db -o diff.md      comparison: ledgers side by side, the difference explained

Bad recordings (missing, corrupt, foreign, newer, empty) exit 6 with one line, an output that
cannot be written exits 7 with one line (docs/report.md)."""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import stat
import sys
import tempfile
import time
from typing import Optional

from . import EXIT_BAD_INPUT, EXIT_OUTPUT, EXIT_USAGE, CliError
from .args import duration, fraction

FORMATS = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}


def add_parser(sub):
    p = sub.add_parser("report", help="explain a recording (or compare two) as HTML or Markdown",
                       description="Root-cause report from a recording: verdict, findings with evidence, the ledger "
                                   "at the moments that matter, timelines, page-cache files, inventory. With two "
                                   "recordings: both ledgers side by side and the difference explained "
                                   "(docs/report.md).")
    p.add_argument("recordings", nargs="+", metavar="RUN.db", help="one recording, or two to compare (A then B)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write FILE (.html or .md; mode 0600, never through a symlink); default: Markdown on stdout")
    p.add_argument("--format", choices=("html", "md"), help="override the format the output name implies")
    p.add_argument("--kv-fraction", type=fraction, default=None, metavar="F",
                   help="fraction of CUDA free an engine gives its KV cache (default: the recording's, else 0.9)")
    g = p.add_argument_group("a flight recorder's directory (docs/flight-recorder.md)")
    g.add_argument("--event", metavar="KIND", help="the event recording of a trigger: oom, max, psi, exit, restart, "
                                                   "available or any (the newest, or the nearest to --at)")
    g.add_argument("--at", metavar="TIME", help="around TIME (ISO 8601, local time unless it says; or Unix seconds): "
                                                "--last before it and 1 minute after")
    g.add_argument("--last", type=duration, metavar="DURATION", help="the last DURATION (default with --at: 10m)")
    g.add_argument("--target", metavar="NAME", help="whose files: a target's name as in the file names (default: "
                                                    "the host; with --event the target whose trigger it was)")
    return p


def _format(args) -> str:
    if args.format:
        return args.format
    if args.output is None:
        return "md"
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in FORMATS:
        raise CliError(f"cannot tell the format of {args.output!r}: name it .html or .md, or give --format",
                       EXIT_USAGE)
    return FORMATS[ext]


def write_private(path: str, text: str) -> None:
    """Create or replace `path` with mode 0600, refusing a symlink or anything but a regular
    file there. Written into a new file beside it (mkstemp: O_EXCL, 0600) and renamed over it,
    so a failed write (full disk, read-only, interrupted) leaves no partial file and the old one
    whole, and a hard link planted at `path` is replaced, not written through. Every failure is
    one line with exit 7."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}", EXIT_OUTPUT) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise CliError(f"refusing to write {path}: it is {kind}", EXIT_OUTPUT)
    directory, name = os.path.split(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name[:64]}.", suffix=".part", dir=directory or ".")
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        os.rename(tmp, path)
        tmp = None
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}", EXIT_OUTPUT) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def flight_recording(args, directory: str) -> tuple[list[str], Optional[str]]:
    """The recording a flight directory's --event/--at/--last names: an event recording, or the
    stretch of base files cut into a new recording in a private temporary directory (returned
    second, for the caller to remove)."""
    from ..analysis.flight import extract, flight_files, pick_event
    from ..recording import RecordingError
    files = flight_files(directory)
    at = _when(args.at) if args.at else None
    if args.event:
        return [pick_event(files, args.event, args.target, at).path], None
    if at is None and args.last is None:
        raise CliError(f"{directory} is a directory: give --event KIND, --at TIME or --last DURATION", EXIT_USAGE)
    end = at + 60 if at is not None else time.time()
    start = (at if at is not None else end) - (args.last or 600)
    tmp = tempfile.mkdtemp(prefix="memprobe-flight-")          # 0700
    out = os.path.join(tmp, "stretch.db")
    target = args.target or "host"
    if extract(files, target, start, end, out) == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        span = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start))} to {time.strftime('%H:%M:%S', time.localtime(end))}"
        raise RecordingError(f"{directory}: no samples of {target!r} from {span}")
    return [out], tmp


def _when(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()      # naive: local time
    except ValueError:
        raise CliError(f"--at {text!r}: not a time (e.g. 2026-03-01T14:05:00, or Unix seconds)", EXIT_USAGE) from None


def run(args) -> int:
    from ..recording import RecordingError
    from ..analysis.report import analyse, open_recording

    if len(args.recordings) > 2:
        raise CliError("give one recording, or two to compare", EXIT_USAGE)
    fmt = _format(args)
    datas = []
    tmp = None
    try:
        paths = args.recordings
        if len(paths) == 1 and stat.S_ISDIR(os.lstat(paths[0]).st_mode):
            paths, tmp = flight_recording(args, paths[0])
        elif args.event or args.at or args.last:
            raise CliError("--event, --at and --last read a flight recorder's directory (give DIR)", EXIT_USAGE)
        for path in paths:
            rec = open_recording(path)
            try:
                datas.append(analyse(rec, args.kv_fraction))
            finally:
                rec.close()
    except FileNotFoundError as e:
        raise CliError(f"{e.filename}: no such recording", EXIT_BAD_INPUT) from None
    except RecordingError as e:
        raise CliError(str(e), EXIT_BAD_INPUT) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(datas) == 1:
        from ..views.report_doc import build_report
        doc = build_report(datas[0])
    else:
        from ..analysis.compare import compare
        from ..views.report_compare import build_comparison
        doc = build_comparison(compare(datas[0], datas[1]))
    if fmt == "html":
        from ..views.report_html import render_html
        text = render_html(doc)
    else:
        from ..views.report_md import render_markdown
        text = render_markdown(doc)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_private(args.output, text)
        print(f"memprobe: wrote {args.output} ({fmt}, {len(text.encode())} bytes)", file=sys.stderr)
    return 0
