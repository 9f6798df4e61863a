"""Render the probe inventory and one probe run (ProbeReport) as text tables."""
from __future__ import annotations

from collections import defaultdict

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..probe_report import ProbeReport, ProbeStatus
from .fmt import MISSING, fmt_bytes, fmt_int


def render_probe_list(statuses: list[ProbeStatus], headline: str = "") -> Group:
    t = Table(title="eBPF probes on this host", title_justify="left", box=box.SIMPLE)
    for c in ("probe", "mechanism", "", "why"):
        t.add_column(c)
    for s in statuses:
        t.add_row(s.name, escape(s.mechanism), "yes" if s.chosen else "no",
                  escape(s.reason + (f" [{s.target}]" if s.target else "")))
    parts = [t]
    if headline:
        parts.insert(0, Text(headline))
    return Group(*parts)


def _cg(path, cgid) -> str:
    return escape(f"{path} ({cgid})") if path else f"id {cgid}"


def render_report(r: ProbeReport, top: int = 15) -> Group:
    parts: list = [Text(f"memprobe probes: {r.duration_s:.1f} s" + (f", target {r.target}" if r.target else
                                                                     ", whole host"))]
    parts.append(render_probe_list(r.probes))

    if r.faults is not None:
        per_cg: dict[int, int] = defaultdict(int)
        for f in r.faults:
            per_cg[f.cgroup_id] += f.faults
        src = f"; from {r.fault_source}" if r.fault_source else ""
        t = Table(title=f"page faults per cgroup v2 ({sum(per_cg.values()):,} in all{src})", title_justify="left",
                  box=box.SIMPLE)
        t.add_column("cgroup v2 (id)")
        t.add_column("faults", justify="right")
        for cg, n in sorted(per_cg.items(), key=lambda x: -x[1])[:top]:
            t.add_row(_cg(r.cgroup_paths.get(cg), cg), fmt_int(n))
        parts.append(t)
        t = Table(title="page faults per process", title_justify="left", box=box.SIMPLE)
        for c in ("pid", "comm", "cgroup v2", "memory cgroup", "faults"):
            t.add_column(c, justify="right" if c in ("pid", "faults") else "left")
        for f in r.faults[:top]:
            t.add_row(str(f.pid), escape(f.comm or MISSING), _cg(f.cgroup_path, f.cgroup_id),
                      escape(f.memory_cgroup or MISSING),
                      fmt_int(f.faults))
        parts.append(t)
    if r.fault_regions:
        t = Table(title="user page faults by mapping (exceptions:page_fault_user)", title_justify="left",
                  box=box.SIMPLE)
        for c in ("pid", "mapping", "faults", "2 MiB regions"):
            t.add_column(c, justify="left" if c == "mapping" else "right")
        for x in r.fault_regions[:top]:
            t.add_row(str(x.pid), escape(x.mapping), fmt_int(x.faults), fmt_int(x.regions))
        parts.append(t)

    if r.page_cache is not None:
        t = Table(title="page cache by file and owner cgroup v2 (pages added during the run minus removed)",
                  title_justify="left", box=box.SIMPLE)
        for c in ("owner cgroup v2", "file", "added", "removed", "net", "removed by others"):
            t.add_column(c, justify="left" if c in ("owner cgroup v2", "file") else "right")
        ps = r.page_size
        for p in r.page_cache[:top]:
            owner = "(cached before start)" if p.cgroup_id == 0 else _cg(p.cgroup_path, p.cgroup_id)
            name = p.path or f"dev {p.dev_major}:{p.dev_minor} inode {p.inode}"
            t.add_row(escape(owner), escape(name), fmt_bytes(p.added_pages * ps), fmt_bytes(p.removed_pages * ps),
                      fmt_bytes(p.net_pages * ps), fmt_bytes(p.removed_by_other_pages * ps))
        parts.append(t)

    if r.memcg is not None:
        t = Table(title=f"memcg stat changes ({r.memcg_source})", title_justify="left", box=box.SIMPLE)
        for c in ("memory cgroup (memcg id)", "item", "memory.stat key", "increase", "decrease", "net"):
            t.add_column(c, justify="left" if c in ("memory cgroup (memcg id)", "item", "memory.stat key") else "right")

        def amount(d, v):
            if v is None:
                return MISSING
            if d.unit == "pages":
                return fmt_bytes(v * r.page_size)
            if d.unit == "approx-pages":
                return "~" + fmt_bytes(v * r.page_size)
            if d.unit == "bytes":
                return fmt_bytes(v)
            return f"{v:+,} {d.unit}"

        def size(d):
            big = max(abs(d.increase or 0), abs(d.decrease or 0), abs(d.delta))
            return big * (r.page_size if "pages" in d.unit else 1)
        for d in sorted(r.memcg, key=lambda d: -size(d))[:top * 2]:
            t.add_row(_cg(d.cgroup_path, d.memcg_id), d.item_name or str(d.item), d.stat_key or MISSING,
                      amount(d, d.increase), amount(d, d.decrease), amount(d, d.delta))
        parts.append(t)

    if r.cuda is not None:
        calls = r.cuda_calls or []
        t = Table(title=f"CUDA driver allocations outstanding ({len(calls)} calls seen"
                        + (f", {r.cuda_lost_events} events lost" if r.cuda_lost_events else "") + ")",
                  title_justify="left", box=box.SIMPLE)
        for c in ("pid", "comm", "kind", "outstanding", "allocs", "frees", "failed calls"):
            t.add_column(c, justify="left" if c in ("comm", "kind") else "right")
        for c in r.cuda:
            t.add_row(str(c.pid), escape(c.comm or MISSING), c.kind, fmt_bytes(c.outstanding_bytes), fmt_int(c.allocs),
                      fmt_int(c.frees), fmt_int(c.failed_calls))
        if not r.cuda:
            t.add_row(MISSING, "no hooked call seen", "", "", "", "", "")
        parts.append(t)
    if r.notes:
        parts.append(Text("notes:\n" + "\n".join(f"  - {n}" for n in r.notes)))
    return Group(*parts)
