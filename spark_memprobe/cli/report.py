"""memprobe report: explain a recording (or compare two) as self-contained HTML or Markdown.

    memprobe report run.db                    Markdown on stdout
    memprobe report run.db -o report.html     one HTML file: inline CSS and SVG, no script, no fetch
    memprobe report a.db b.db -o diff.md      comparison: ledgers side by side, the difference explained

Bad recordings (missing, corrupt, foreign, newer, empty) exit 6 with one line, an output that
cannot be written exits 7 with one line (docs/report.md)."""
from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile

from . import EXIT_BAD_INPUT, EXIT_OUTPUT, EXIT_USAGE, CliError
from .args import fraction

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


def run(args) -> int:
    from ..recording import RecordingError
    from ..analysis.report import analyse, open_recording

    if len(args.recordings) > 2:
        raise CliError("give one recording, or two to compare", EXIT_USAGE)
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
