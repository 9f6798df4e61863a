"""Render `memprobe attach`: the target (from its dict), one plain line per sample, events,
and a small live Rich view for terminals. Pure functions of their arguments; the full TUI
comes later and can reuse `sample_row`."""
from __future__ import annotations

import time
from typing import Optional


from ..samples import Sample
from .fmt import MISSING, fmt_bytes

PROCS_SHOWN = 20

# (header, width) of the per-interval line; values come from sample_row()
COLUMNS = [("time", 8), ("current", 10), ("workingset", 10), ("anon", 10), ("file", 10), ("shmem", 10),
           ("kernel", 10), ("limit", 10), ("procs", 5), ("rss_sum", 10), ("oom_kill", 8)]


def target_lines(t: dict) -> list[str]:
    """What was resolved, where its memory is accounted, and its processes (both PIDs)."""
    lines = []
    who = {"container": "container", "pod": "pod", "unit": "systemd unit", "cgroup": "cgroup",
           "pid": "process"}.get(t["kind"], t["kind"])
    labels = t.get("labels") or {}
    extra = []
    if t["kind"] in ("pid", "cgroup", "unit"):
        ident = str(t["pids"][0]) if t["kind"] == "pid" else (t.get("name") or t.get("cgroup_path"))
        if t.get("id") and t.get("engine") and t["engine"] not in ("systemd", "kubernetes"):
            extra.append(f"in {t['engine']} container {labels.get('container_name') or t['id'][:12]}")
        elif t["kind"] == "unit":
            extra.append("systemd")
    else:
        ident = t.get("name") or t.get("id")
        if t.get("engine"):
            extra.append(t["engine"])
        if t.get("id") and t.get("id") != ident:
            extra.append(t["id"][:12] if t["kind"] == "container" else t["id"])
    if t.get("namespace"):
        extra.append(f"namespace {t['namespace']}")
    if t.get("state"):
        extra.append(t["state"])
    lines.append(f"target: {who} {ident}" + (f" ({', '.join(extra)})" if extra else ""))
    if t.get("cgroup_path"):
        lines.append(f"cgroup: v{t['cgroup_version']} {t['cgroup_path']}  ({t['cgroup_dir']})")
    else:
        lines.append("cgroup: none (only the process itself is read)")
    if labels.get("pod_uid"):
        lines.append(f"pod: UID {labels['pod_uid']}, QoS {labels.get('qos') or MISSING}")
    for e in t.get("evidence") or []:
        lines.append(f"resolved: {e}")
    procs = t.get("processes") or []
    more = t.get("processes_truncated") or 0
    lines.append(f"processes: {len(procs) + more}" + ("  (host pid / pid in its namespace / name)" if procs else ""))
    for p in procs[:PROCS_SHOWN]:
        ns = MISSING if p.get("ns_pid") is None else str(p["ns_pid"])
        lines.append(f"  {p['pid']:>7} / {ns:>7}  {p.get('comm') or MISSING}")
    if len(procs) + more > PROCS_SHOWN:
        lines.append(f"  ... and {len(procs) + more - PROCS_SHOWN} more")
    for n in t.get("notes") or []:
        lines.append(f"note: {n}")
    return lines


def sample_row(s: Sample) -> dict[str, str]:
    """The per-interval numbers of one sample, formatted; a dash where the reading is missing."""
    cg = s.cgroup
    cur = cg.current_bytes if cg else None
    inactive = cg.stat_get("inactive_file") if cg else None
    ws = cur - inactive if cur is not None and inactive is not None else None
    rss = [p.rss_bytes for p in s.processes]
    oom = (cg.events or {}).get("oom_kill") if cg else None
    return {
        "time": time.strftime("%H:%M:%S", time.localtime(s.wall_ns / 1e9)),
        "current": fmt_bytes(cur),
        "workingset": fmt_bytes(ws),
        "anon": fmt_bytes(cg.stat_get("anon") if cg else None),
        "file": fmt_bytes(cg.stat_get("file") if cg else None),
        "shmem": fmt_bytes(cg.stat_get("shmem") if cg else None),
        "kernel": fmt_bytes(cg.stat_get("kernel") if cg else None),
        "limit": fmt_bytes(cg.max_bytes if cg else None),
        "procs": str(len(s.processes)),
        "rss_sum": fmt_bytes(sum(rss) if rss and all(r is not None for r in rss) else None),
        "oom_kill": MISSING if oom is None else str(oom),
    }


def header_line() -> str:
    return "  ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(COLUMNS))


def sample_line(s: Sample) -> str:
    row = sample_row(s)
    return "  ".join(f"{row[h]:>{w}}" if i else f"{row[h]:<{w}}" for i, (h, w) in enumerate(COLUMNS))


def event_line(kind: str, message: str, wall_ns: Optional[int] = None) -> str:
    when = time.strftime("%H:%M:%S", time.localtime((wall_ns or time.time_ns()) / 1e9))
    label = {"ended": "end", "count": "end", "interrupted": "end"}.get(kind, kind)
    return f"{when}  {label}: {message}"
