"""Render `memprobe ls`: attachable targets (dicts of ListedTarget) and what was asked.

An ENGINE ending in "?" was inferred from the cgroup path's name (no engine that answered
lists that container). Plain aligned columns like `docker ps` (no wrapping, so cgroup paths with 64-character
IDs stay whole and the output can be piped to grep/awk)."""
from __future__ import annotations

from typing import Optional

from .fmt import MISSING, fmt_bytes

COLUMNS = ("KIND", "ENGINE", "NAME", "ID", "STATE", "MEMORY", "PROCS", "CGROUP")
RIGHT = {"MEMORY", "PROCS"}
ORDER = {"container": 0, "pod": 1, "unit": 2}


def _ident(r: dict) -> str:
    if r["kind"] == "unit":
        return MISSING
    i = r.get("id") or MISSING
    return i[:12] if r["kind"] == "container" and len(i) == 64 else i


def ls_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    out = []
    for r in sorted(rows, key=lambda r: (ORDER.get(r["kind"], 9), r.get("engine") or "", r.get("name") or "",
                                         r.get("id") or "")):
        eng = (r.get("engine") or "") + (f"/{r['namespace']}" if r.get("namespace") else "")
        if r["kind"] == "container" and r.get("source") == "cgroup-path":
            eng += "?"           # inferred from the cgroup name: no engine that answered lists it
        name = r.get("name") or MISSING
        if r.get("note"):
            name += f" ({r['note']})"
        cg = f"v{r['cgroup_version']}:{r['cgroup_path']}" if r.get("cgroup_path") else MISSING
        out.append((r["kind"], eng, name, _ident(r), r.get("state") or MISSING,
                    fmt_bytes(r.get("memory_current_bytes")),
                    MISSING if r.get("processes") is None else str(r["processes"]), cg))
    return out


def suggestions(largest: list[tuple[str, int]]) -> list[str]:
    """What else to attach: the demo, a PID, a cgroup path (with the largest memory cgroups
    found as examples)."""
    lines = ["", "other ways to attach (docs/attach.md):",
             "  memprobe attach --demo             a throwaway cgroup holding 64 MiB anon and 64 MiB page cache",
             "  memprobe attach PID                a process, followed through its memory cgroup",
             "  memprobe attach cgroup:/PATH       a memory cgroup" + (", e.g. the largest here:" if largest else "")]
    # a delegated cgroup's name is anyone's text: escape what a terminal would act on
    lines.extend(f"    memprobe attach cgroup:{''.join(c if c.isprintable() else repr(c)[1:-1] for c in p)}  "
                 f"({fmt_bytes(b)})" for p, b in largest)
    return lines


def render_ls(rows: list[dict], tried: list[str], largest: Optional[list[tuple[str, int]]] = None) -> str:
    """`largest`: (path, bytes) of the biggest memory cgroups; given (when nothing was listed or
    no container engine answered), the other ways to attach follow the table, with those as examples."""
    lines = []
    table = ls_rows(rows)
    if table:
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(COLUMNS)]

        def fmt(cells):
            return "  ".join((cell.rjust(w) if COLUMNS[i] in RIGHT else cell.ljust(w)) if i < len(cells) - 1
                             else cell for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()
        lines.append(fmt(COLUMNS))
        lines.extend(fmt(row) for row in table)
    else:
        lines.append("no attachable targets found")
    if largest is not None:
        lines.extend(suggestions(largest))
    if tried:
        lines.append("")
        lines.append("asked:")
        lines.extend(f"  {x}" for x in tried)
    return "\n".join(lines)
