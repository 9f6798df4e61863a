"""memprobe report: explain a recording (or compare two) as self-contained HTML or Markdown.

    memprobe report run.db                    Markdown on stdout
    memprobe report run.db -o report.html     one HTML file: inline CSS and SVG, no script, no fetch
    memprobe report a.db b.db -o diff.md      comparison: ledgers side by side, the difference explained

Bad recordings (missing, corrupt, foreign, newer, empty) exit 6 with one line (docs/report.md)."""
from __future__ import annotations

import os
import stat
import sys

from . import EXIT_BAD_INPUT, EXIT_USAGE, CliError

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
    p.add_argument("--kv-fraction", type=float, default=None, metavar="F",
                   help="fraction of CUDA free an engine gives its KV cache (default: the recording's, else 0.9)")
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
    """Create or replace `path` with mode 0600, refusing symlinks and anything but a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise CliError(f"refusing to write {path}: it is {kind}", EXIT_USAGE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CliError(f"refusing to write {path}: not a regular file", EXIT_USAGE)
        os.fchmod(fd, 0o600)
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def run(args) -> int:
    from ..recording import RecordingError
    from ..views.report_data import analyse, open_recording

    if len(args.recordings) > 2:
        raise CliError("give one recording, or two to compare", EXIT_USAGE)
    if args.kv_fraction is not None and not 0 < args.kv_fraction <= 1:
        raise CliError(f"--kv-fraction must be in (0, 1], got {args.kv_fraction}", EXIT_USAGE)
    fmt = _format(args)
    datas = []
    try:
        for path in args.recordings:
            rec = open_recording(path)
            try:
                datas.append(analyse(rec, args.kv_fraction))
            finally:
                rec.close()
    except RecordingError as e:
        raise CliError(str(e), EXIT_BAD_INPUT) from None
    if len(datas) == 1:
        from ..views.report_doc import build_report
        doc = build_report(datas[0])
    else:
        from ..views.report_compare import build_comparison, compare
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
