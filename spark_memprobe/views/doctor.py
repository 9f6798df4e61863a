"""Render doctor checks."""
from __future__ import annotations

from rich import box
from rich.table import Table


def render_checks(checks: list[dict]) -> Table:
    t = Table(box=box.SIMPLE, title="memprobe doctor", title_justify="left")
    t.add_column("check")
    t.add_column("")
    t.add_column("found")
    t.add_column("if missing")
    for c in checks:
        t.add_row(c["name"], "ok" if c["ok"] else "MISSING", c["detail"], "" if c["ok"] else c["cost"])
    return t
