"""Helpers shared by subcommands."""
from __future__ import annotations

import os
import sys

from .. import __version__


def host_header(sampler_kind: str, target: str) -> dict:
    u = os.uname()
    return {"host": u.nodename, "kernel": u.release, "machine": u.machine,
            "sampler": sampler_kind, "target": target, "tool_version": __version__}


def print_renderable(r) -> None:
    """Rich on a terminal; the same tables as plain text (no colour codes) otherwise."""
    from rich.console import Console
    tty = sys.stdout.isatty()
    Console(width=None if tty else 120, no_color=not tty, highlight=False,
            color_system="auto" if tty else None).print(r)
