"""memprobe ab --a CMD --b CMD --rounds N: an A/B experiment with the page cache held equal, each run
recorded, the engine's KV cache compared with an interval, and the difference attributed (docs/ab.md)."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time

from . import EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, CliError
from .args import fraction, interval, positive_int


def add_parser(sub):
    p = sub.add_parser("ab", help="run two commands in A/B/B/A order, recorded, and compare what the engine reports",
                       description="A/B experiment: A and B alternate (A B B A ...), the named files' page cache is "
                                   "evicted (cold) or read (warm) before every run and measured, every run is "
                                   "recorded, and the engine's KV cache from each run's output is compared: mean "
                                   "and 95 %% interval per arm, the difference, and what it is made of (docs/ab.md).")
    p.add_argument("--a", required=True, metavar="CMD", help="arm A: a command line (split like a shell, never run "
                                                             "by one)")
    p.add_argument("--b", required=True, metavar="CMD", help="arm B; a `docker run ...` is followed as its container")
    p.add_argument("--rounds", type=positive_int, required=True, metavar="N", help="runs per arm")
    p.add_argument("--cache", choices=("cold", "warm", "as-is"), default="as-is",
                   help="before every run: evict the files' page cache, read them, or leave it (default as-is)")
    p.add_argument("--files", nargs="+", default=[], metavar="PATH",
                   help="the files whose page cache is set and measured before every run (model weights)")
    p.add_argument("--metric", metavar="REGEX",
                   help="take this from each run's output instead of the engine's KV cache: a regular expression "
                        "whose first group is a number and second an optional unit (B, KiB, MiB, GiB, kB, MB, GB)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="directory for the recordings, outputs and report (created, mode 0700; default "
                        "./memprobe-ab-DATE-TIME)")
    p.add_argument("--interval", type=interval, default=0.1, metavar="DURATION",
                   help="time between samples (default 100ms)")
    p.add_argument("--kv-fraction", type=fraction, default=0.9, metavar="F",
                   help="fraction for the KV-cache budget in the recordings' ledgers (default 0.9)")
    return p


def _command(text: str, flag: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise CliError(f"{flag}: {e}", EXIT_USAGE) from None
    if not argv:
        raise CliError(f"{flag}: empty command", EXIT_USAGE)
    if "-d" in argv or "--detach" in argv:
        from ..feed.ab import is_docker_run
        if is_docker_run(argv):
            raise CliError(f"{flag}: a detached `docker run` ends at once; run it in the foreground", EXIT_USAGE)
    return argv


def _metric(text):
    if text is None:
        return None
    try:
        rx = re.compile(text)
    except re.error as e:
        raise CliError(f"--metric: not a regular expression: {e}", EXIT_USAGE) from None
    if rx.groups < 1:
        raise CliError("--metric: needs a group capturing the number, e.g. 'KV cache: ([0-9.]+) (GiB)'", EXIT_USAGE)
    return rx


def _outdir(path) -> str:
    path = path or time.strftime("memprobe-ab-%Y%m%d-%H%M%S")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if os.path.islink(path) or not os.path.isdir(path) or os.listdir(path):
            raise CliError(f"-o {path}: exists and is not an empty directory", EXIT_OUTPUT) from None
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            # another user could plant files the runs then open (a FIFO as a --cidfile blocks)
            raise CliError(f"-o {path}: an existing directory must be yours and writable by you alone",
                           EXIT_OUTPUT) from None
    except OSError as e:
        raise CliError(f"-o {path}: {e.strerror}", EXIT_OUTPUT) from None
    return path


def run(args) -> int:
    from ..analysis.ab import analyse_ab
    from ..feed.ab import AbError, run_arms
    from ..sources.targets.resolver import Resolver
    from ..views.ab import ab_json, build_ab
    from ..views.report_html import render_html
    from ..views.report_md import render_markdown
    from .report import write_private

    argv_a, argv_b = _command(args.a, "--a"), _command(args.b, "--b")
    metric = _metric(args.metric)
    if args.cache != "as-is" and not args.files:
        raise CliError(f"--cache {args.cache} needs --files (the files whose page cache to set)", EXIT_USAGE)
    for f in args.files:
        if not os.path.isfile(f):
            raise CliError(f"--files: {f}: not a regular file", EXIT_USAGE)
    files = [os.path.abspath(f) for f in args.files]
    out = _outdir(args.output)
    print(f"memprobe ab: {2 * args.rounds} runs into {out}", flush=True)
    resolver = Resolver(proc=args.proc, cgroup_root=args.cgroup_root)
    try:
        runs, stopped = run_arms(argv_a, argv_b, args.rounds, args.cache, files, out, args.interval, args.kv_fraction,
                        metric, resolver)
    except AbError as e:
        raise CliError(str(e)) from None
    res = analyse_ab(runs, args.cache, args.kv_fraction)
    doc = build_ab(res, argv_a, argv_b, f"--metric {args.metric}" if metric else "the engine's KV cache")
    md = render_markdown(doc)
    write_private(os.path.join(out, "ab.md"), md)
    write_private(os.path.join(out, "ab.html"), render_html(doc))
    write_private(os.path.join(out, "ab.json"), json.dumps(ab_json(res), indent=1) + "\n")
    sys.stdout.write(md)
    print(f"memprobe: wrote {out}/ab.html, ab.md and ab.json", file=sys.stderr)
    return EXIT_INTERRUPTED if stopped else EXIT_OK
