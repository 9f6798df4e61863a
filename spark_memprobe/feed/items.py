"""What a view needs at one instant, live or replayed, and the one way to get ledger inputs
from it.

A FeedItem is the raw sample, the target events since the previous item, the eBPF report
current at that instant and the target's context read with it (file mappings, other cgroups).
`ledger_inputs` is the only code that turns an item into LedgerInputs: attach, record, replay,
report and export all go through it, so one sample gives one ledger everywhere."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..probe_report import ProbeReport
from ..ledger import LedgerInputs, MappedFile, build_ledger, from_probe_report
from ..samples import CgroupSample, HostInfo, Sample, cgroup_from_dict, kernel_from_dict


@dataclass
class FeedItem:
    sample: Optional[Sample]
    events: list[dict] = field(default_factory=list)    # {"kind", "message", "wall_ns", "facts"}
    report: Optional[ProbeReport] = None
    mapped_files: Optional[dict] = None      # "mapped_files" event value current at this sample
    other_cgroups: Optional[dict] = None     # "other_cgroups" event value current at this sample
    kernel: Optional[dict] = None            # "kernel" event value current at this sample
    before: Optional[Sample] = None          # the sample about a second earlier (counter deltas)


def mapped_files_from_event(value: dict) -> list[MappedFile]:
    return [MappedFile(pid=f["pid"], path=f["path"], size_bytes=f.get("size_bytes") or 0, dev=f.get("dev"),
                       inode=f.get("inode")) for f in (value or {}).get("files") or []]


class _Built:
    """What was built from a dict, kept while that same dict object comes again: the exporter
    hands every target under one parent the same sibling dicts, and every target the same
    kernel dict, until they are read again (feed/context.py); such dicts are never changed."""

    def __init__(self, build, keep: int = 4096):
        self.build, self.keep = build, keep
        self.made: dict[int, tuple] = {}          # id(value) -> (value, built): the value kept, so its id is not reused

    def __call__(self, value: dict):
        hit = self.made.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        if len(self.made) >= self.keep:
            self.made.clear()
        built = self.build(value)
        self.made[id(value)] = (value, built)
        return built


_cgroup = _Built(cgroup_from_dict)
_kernel = _Built(kernel_from_dict, keep=4)
_mapped = _Built(mapped_files_from_event)      # a target's mappings dict comes again until they are read again


def others_from_event(value: dict) -> list[CgroupSample]:
    return [_cgroup(c) for c in (value or {}).get("cgroups") or []]


@dataclass
class FeedHeader:
    host: HostInfo
    target: dict                       # sources.targets.target_to_dict
    probes: Optional[list[dict]]       # ProbeStatus dicts; None: eBPF off
    interval_ns: Optional[int] = None


def adder_cgroup(s: Sample) -> Optional[str]:
    """The memory cgroup that page cache added by the target's processes is charged to, where
    the probes cannot name it: on hybrid hosts they key page cache by cgroup v2 id, while v1
    charges the memory cgroup of the task that added the pages (ledger/inputs.py)."""
    return s.cgroup.path if s.cgroup is not None and s.cgroup.version == 1 else None


def ledger_inputs(item: FeedItem, header: FeedHeader) -> Optional[LedgerInputs]:
    """What the ledger gets beyond the sample: the eBPF report mapped to the target, the
    target's file mappings and the other cgroups read with it, the page allocator's state and
    the /proc/vmstat of about a second earlier."""
    s = item.sample
    if s is None:
        return None
    if item.report is not None:
        pids = sorted({p.pid for p in s.processes} | set((s.cgroup.procs or []) if s.cgroup else []))
        inputs = from_probe_report(item.report, pids, adder_cgroup=adder_cgroup(s))
    else:
        inputs = LedgerInputs()
    if item.mapped_files is not None:
        inputs.mapped_files = list(_mapped(item.mapped_files))
    if item.other_cgroups is not None:
        inputs.others = others_from_event(item.other_cgroups)
    if item.kernel is not None:
        inputs.kernel = _kernel(item.kernel)
    b = item.before
    if b is not None and b.vmstat is not None and s.vmstat is not None and b.mono_ns < s.mono_ns:
        inputs.vmstat_before, inputs.vmstat_before_s = b.vmstat, (s.mono_ns - b.mono_ns) / 1e9
    return inputs


def ledger_of(item: FeedItem, header: FeedHeader, kv_fraction: float = 0.9):
    return build_ledger(header.host, item.sample, ledger_inputs(item, header), kv_fraction=kv_fraction)
