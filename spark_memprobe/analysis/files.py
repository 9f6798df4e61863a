"""The files in the page cache at a recording's peak: per file and owning cgroup from eBPF
page-cache ownership when it was recorded, else the target's file mappings (resident bytes from
smaps Rss)."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

from ..feed import FeedItem, ledger_inputs
from ..feed.replay import ReplayFeed
from ..ledger.facts import under
from .timeline import Moment


@dataclass
class FileRow:
    path: str
    bytes: Optional[int]
    owner: Optional[str] = None      # owning cgroup (eBPF), None when unknown
    owner_is_target: Optional[bool] = None
    mapped_by_target: Optional[bool] = None
    mapping_bytes: Optional[int] = None
    pids: list[int] = field(default_factory=list)


def files_at_peak(feed: ReplayFeed, peak: Moment, t0: tuple[int, float]) -> tuple[list[FileRow], Optional[str]]:
    """(at most 15 files, largest first; where they come from). t0: (mono_ns, t_s) of one sample."""
    mapped = peak.inputs.mapped_files or []
    by_key: dict[tuple, dict] = {}
    for m in mapped:
        d = by_key.setdefault((m.dev, m.inode, m.path), {"bytes": 0, "pids": set()})
        d["bytes"] += m.size_bytes
        d["pids"].add(m.pid)
    reports = feed.reports
    if reports and reports.key(len(reports) - 1, "page_cache") is not None:
        # the first probe report at or after the peak (else the last one): reports are cumulative and
        # come at most once a second, so the last one before the peak may miss pages the peak holds
        # (the ledgers themselves keep to the last report at or before their sample, as the live
        # view did)
        s = peak.sample
        cg = s.cgroup.path if s.cgroup is not None else None
        after = min(bisect.bisect_left(reports.mono, s.mono_ns), len(reports) - 1)
        before = reports.last_at(s.mono_ns)
        options = []
        for j in sorted({k for k in (before, after) if k is not None}):
            pc = ledger_inputs(FeedItem(sample=s, report=feed.report(j)), feed.header).page_cache or []
            mine = sum(p.bytes for p in pc if cg is not None and under(p.cgroup, cg))
            row = peak.ledger.row("page_cache").cells.get("current") if peak.ledger.rows else None
            # reports come at most once a second: keep the one (just before or just after the peak)
            # whose page cache charged to the target is closest to what memory.stat showed there
            options.append((abs(mine - row) if row is not None else 0, 0 if j == after else 1, j, pc))
        _d, _o, j, pc = min(options, key=lambda x: (x[0], x[1]))
        rows = []
        paths = {m.path for m in mapped}
        ids = {(m.dev, m.inode) for m in mapped if m.inode}
        t_rep = (reports.mono[j] - t0[0]) / 1e9 + t0[1]
        for p in sorted(pc, key=lambda p: (-p.bytes, p.path or "", p.cgroup or "")):
            name = p.path or f"inode {p.inode} on {p.dev}"
            maps = (p.dev, p.inode) in ids or (p.path is not None and p.path in paths)
            mapping = sum(d["bytes"] for (dev, ino, pth), d in by_key.items()
                          if (dev, ino) == (p.dev, p.inode) or pth == p.path) if maps else None
            rows.append(FileRow(name, p.bytes, p.cgroup, under(p.cgroup, cg) if cg and p.cgroup else None,
                                maps if peak.inputs.mapped_files is not None else None, mapping))
        return rows[:15], (f"eBPF page-cache ownership (pages added minus removed, per file and owning cgroup), "
                           f"from the probe report next to the peak (t={t_rep:.1f} s) whose page cache charged to the target "
                           f"is closest to memory.stat's there")
    value = feed.mapped.value_at(peak.sample.mono_ns)
    if value is not None:
        rows: dict[tuple, FileRow] = {}
        for f in value.get("files") or []:
            key = (f.get("dev"), f.get("inode"), f["path"])
            r = rows.setdefault(key, FileRow(f["path"], None, mapped_by_target=True, mapping_bytes=0))
            r.mapping_bytes += f.get("size_bytes") or 0
            if f.get("rss_bytes") is not None:
                r.bytes = (r.bytes or 0) + f["rss_bytes"]
            r.pids.append(f["pid"])
        out = sorted(rows.values(), key=lambda r: (-(r.bytes if r.bytes is not None else -1), -(r.mapping_bytes or 0),
                                                   r.path))
        return out[:15], ("the target's file mappings at the peak (mapped_files event): resident bytes are the "
                          "mappings' Rss in /proc/<pid>/smaps, summed over processes; which cgroup is charged for "
                          "these pages is not known without eBPF")
    return [], None
