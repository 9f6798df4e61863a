"""memprobe evict PATH...: drop the clean page cache of the named files, and only theirs; print
per file the bytes freed and what stayed, and why (docs/evict.md)."""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import asdict

from . import EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_USAGE


def add_parser(sub):
    p = sub.add_parser("evict", help="drop the clean page cache of named files (posix_fadvise), say what stayed and why")
    p.add_argument("paths", nargs="+", metavar="PATH", help="regular files (links, FIFOs, devices are refused)")
    p.add_argument("--recursive", "-r", action="store_true",
                   help="a directory PATH: every regular file below it (links are not followed)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def files_below(top: str) -> list[str]:
    """Regular files under a directory, links neither followed nor listed (os.walk with
    followlinks=False lists a link to a directory as a name, never enters it)."""
    out = []
    for d, _, names in os.walk(top, followlinks=False):
        for n in sorted(names):
            p = os.path.join(d, n)
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p)
    return sorted(out)


def _code(e: OSError) -> int:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return EXIT_NOT_FOUND
    if e.errno in (errno.EACCES, errno.EPERM):
        return EXIT_PERMISSION
    return EXIT_USAGE


def run(args) -> int:
    from ..sources.pagecache import NotRegularFile, evict
    from ..views.fmt import fmt_bytes

    results, errors = [], []
    for path in args.paths:
        if args.recursive and os.path.isdir(path) and not os.path.islink(path):
            targets = files_below(path)
        else:
            targets = [path]
        for t in targets:
            try:
                results.append(evict(t, proc=args.proc))
            except NotRegularFile as e:
                errors.append((t, f"{e}" + ("; a directory needs --recursive" if os.path.isdir(t) else ""),
                               EXIT_USAGE))
            except OSError as e:
                errors.append((t, f"{t}: {e.strerror or e}", _code(e)))
    freed = sum(r.freed_bytes for r in results)
    if args.json:
        json.dump({"files": [asdict(r) for r in results], "freed_bytes": freed,
                   "errors": [{"path": p, "error": m} for p, m, _ in errors]}, sys.stdout, indent=1)
        print()
    else:
        for r in results:
            print(f"{r.path}: freed {fmt_bytes(r.freed_bytes)} of {fmt_bytes(r.cached_before_bytes)} cached"
                  f" (file {fmt_bytes(r.file_bytes)})")
            if r.stayed_mapped_bytes:
                who = ", ".join(f"{m.comm} ({m.pid})" for m in r.mappers)
                print(f"  stayed {fmt_bytes(r.stayed_mapped_bytes)}: mapped by {who}")
            if r.stayed_dirty_bytes:
                print(f"  stayed {fmt_bytes(r.stayed_dirty_bytes)}: dirty or under writeback; run evict again later")
        if len(results) > 1:
            print(f"total freed {fmt_bytes(freed)}")
    for _, message, _ in errors:
        print(f"memprobe: {message}", file=sys.stderr)
    return errors[0][2] if errors else 0
