"""memprobe doctor: what this host allows, and what each missing piece costs."""
from __future__ import annotations

import json
import sys

from .common import print_renderable


def add_parser(sub):
    p = sub.add_parser("doctor", help="show what this host allows (root, cgroups, tracefs, bcc, NVML, native sampler)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args) -> int:
    from ..sources.capabilities import checks_to_dicts, run_checks
    from ..views.doctor import render_checks

    checks = run_checks()
    if args.json:
        json.dump(checks_to_dicts(checks), sys.stdout, indent=1)
        print()
    else:
        print_renderable(render_checks(checks_to_dicts(checks)))
    return 0
