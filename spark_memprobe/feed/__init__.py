"""One reader interface for live runs and replays: a feed of FeedItems.

A FeedItem is what a view needs at one instant: the raw sample, the target events since the
previous item, and the eBPF report current at that instant. The live feed (cli/live.py)
reads the machine; ReplayFeed reads a recording. Both hand the same items to the same views
and the ledger is recomputed from them, so a replay shows what the live run showed.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

from ..events import ProbeReport, report_from_dict
from ..ledger import LedgerInputs, MappedFile, build_ledger, from_probe_report
from ..recording import KEYFRAME_EVERY, Recording
from ..samples import CgroupSample, HostInfo, Sample, cgroup_from_dict


@dataclass
class FeedItem:
    sample: Optional[Sample]
    events: list[dict] = field(default_factory=list)    # {"kind", "message", "wall_ns", "facts"}
    report: Optional[ProbeReport] = None
    mapped_files: Optional[dict] = None      # "mapped_files" event value current at this sample
    other_cgroups: Optional[dict] = None     # "other_cgroups" event value current at this sample


def mapped_files_from_event(value: dict) -> list[MappedFile]:
    return [MappedFile(pid=f["pid"], path=f["path"], size_bytes=f.get("size_bytes") or 0, dev=f.get("dev"),
                       inode=f.get("inode")) for f in (value or {}).get("files") or []]


def others_from_event(value: dict) -> list[CgroupSample]:
    return [cgroup_from_dict(c) for c in (value or {}).get("cgroups") or []]


@dataclass
class FeedHeader:
    host: HostInfo
    target: dict                       # sources.targets.target_to_dict
    probes: Optional[list[dict]]       # ProbeStatus dicts; None: eBPF off
    interval_ns: Optional[int] = None


def ledger_inputs(item: FeedItem, header: FeedHeader) -> Optional[LedgerInputs]:
    """What the ledger gets beyond the sample: the eBPF report mapped to the target, the
    target's file mappings and the other cgroups read with it."""
    if item.sample is None:
        return None
    if item.report is not None:
        pids = [p.pid for p in item.sample.processes]
        cg = item.sample.cgroup
        inputs = from_probe_report(item.report, pids, adder_cgroup=cg.path if cg is not None and cg.version == 1 else None)
    else:
        inputs = LedgerInputs()
    if item.mapped_files is not None:
        inputs.mapped_files = mapped_files_from_event(item.mapped_files)
    if item.other_cgroups is not None:
        inputs.others = others_from_event(item.other_cgroups)
    return inputs


def ledger_of(item: FeedItem, header: FeedHeader, kv_fraction: float = 0.9):
    return build_ledger(header.host, item.sample, ledger_inputs(item, header), kv_fraction=kv_fraction)


class ReplayFeed:
    """Random access to a recording's items. Samples are decoded a keyframe span at a time."""

    def __init__(self, rec: Recording):
        self.rec = rec
        h = rec.header
        self.header = FeedHeader(host=rec.host, target=h.get("target") or {}, probes=h.get("probes"),
                                 interval_ns=h.get("interval_ns"))
        self._reports = [(m, v) for m, _, v in rec.events("probes")]
        self._report_mono = [m for m, _ in self._reports]
        self._targets = [(m, v) for m, _, v in rec.events("target")]
        self._mapped = _timeline(rec.events("mapped_files"))
        self._others = _timeline(rec.events("other_cgroups"))
        self._cache_start = -1
        self._cache: list[Sample] = []
        self._parsed: dict[int, ProbeReport] = {}

    def __len__(self) -> int:
        return len(self.rec)

    def _sample(self, i: int) -> Sample:
        if not (self._cache_start <= i < self._cache_start + len(self._cache)):
            start = i - i % KEYFRAME_EVERY
            self._cache = list(self.rec.samples(start, start + KEYFRAME_EVERY))
            self._cache_start = start
        return self._cache[i - self._cache_start]

    def report_at(self, mono_ns: int) -> Optional[ProbeReport]:
        k = bisect.bisect_right(self._report_mono, mono_ns) - 1
        if k < 0:
            return None
        if k not in self._parsed:
            self._parsed = {k: report_from_dict(self._reports[k][1])}   # keep one parsed report
        return self._parsed[k]

    def item(self, i: int) -> FeedItem:
        s = self._sample(i)
        prev = self.rec.mono[i - 1] if i > 0 else -1
        events = [v for m, v in self._targets if prev < m <= s.mono_ns]
        return FeedItem(sample=s, events=events, report=self.report_at(s.mono_ns),
                        mapped_files=_last(self._mapped, s.mono_ns), other_cgroups=_last(self._others, s.mono_ns))


def _timeline(events: list) -> tuple[list[int], list[dict]]:
    return [m for m, _, _ in events], [v for _, _, v in events]


def _last(timeline: tuple[list[int], list[dict]], mono_ns: int) -> Optional[dict]:
    """The value of the last event at or before mono_ns."""
    k = bisect.bisect_right(timeline[0], mono_ns) - 1
    return timeline[1][k] if k >= 0 else None
