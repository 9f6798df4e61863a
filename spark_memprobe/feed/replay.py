"""ReplayFeed: a recording's items, by index, as the live feed gave them."""
from __future__ import annotations

from typing import Optional

from ..probe_report import ProbeReport, report_from_dict
from ..recording import KEYFRAME_EVERY, Recording, RecordingError
from ..samples import Sample
from .context import HostKernel
from .items import FeedHeader, FeedItem


class ReplayFeed:
    """Random access to a recording's items. Samples are decoded a keyframe span at a time, events
    when an item needs them (recording.py Events)."""

    def __init__(self, rec: Recording):
        self.rec = rec
        h = rec.header
        self.header = FeedHeader(host=rec.host, target=h.get("target") or {}, probes=h.get("probes"),
                                 interval_ns=h.get("interval_ns"))
        self.reports = rec.events("probes")
        self.targets = rec.events("target")
        self.mapped = rec.events("mapped_files")
        self.others = rec.events("other_cgroups")
        self.kernel = rec.events("kernel")
        self._spans: dict[int, list[Sample]] = {}     # two keyframe spans: an item and its `before`
        self._parsed: tuple[int, Optional[ProbeReport]] = (-1, None)     # one parsed report

    def __len__(self) -> int:
        return len(self.rec)

    def _sample(self, i: int, with_: Optional[int] = None) -> Sample:
        """Sample i from its span's cache. Playing on from a decoded sample decodes the rest of the
        span at once; a jump decodes sample i alone (and with_, in the same walk when it is in the
        same span): walking the deltas from the keyframe is cheap, building 600 Samples is not."""
        start = i - i % KEYFRAME_EVERY
        span = self._spans.get(start)
        if span is None:
            if len(self._spans) >= 2:
                self._spans.pop(next(iter(self._spans)))
            span = self._spans[start] = {}
        if i not in span:
            if i - 1 in span:
                span.update(enumerate(self.rec.samples(i, start + KEYFRAME_EVERY), i))
            else:
                near = [with_] if with_ is not None and with_ >= start and with_ not in span else []
                span.update(self.rec.samples_at(near + [i]))
        return span[i]

    def report(self, k: int) -> ProbeReport:
        """The k-th 'probes' event as a ProbeReport."""
        if self._parsed[0] != k:
            try:
                self._parsed = (k, report_from_dict(self.reports.value(k)))
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                raise RecordingError(f"{self.rec.path}: corrupt 'probes' event ({e})") from None
        return self._parsed[1]

    def report_at(self, mono_ns: int, nearest: bool = False) -> Optional[ProbeReport]:
        """The last report at or before mono_ns, as the live screen had it; with nearest=True the
        report completed nearest in time, before or after (reports come about once a second, so
        the one before an allocation can lag the counters by up to that much)."""
        k = self.reports.last_at(mono_ns)
        nxt = 0 if k is None else k + 1
        if nearest and nxt < len(self.reports) and (
                k is None or self.reports.mono[nxt] - mono_ns < mono_ns - self.reports.mono[k]):
            k = nxt
        return None if k is None else self.report(k)

    def at(self, s: Sample, after_ns: Optional[int] = None, nearest: bool = False,
           held: Optional[dict[int, Sample]] = None) -> FeedItem:
        """The item of sample s: the report, mappings and other cgroups current at it, and the
        target events after after_ns (none when None). nearest: the eBPF report nearest in time
        (analysis of a finished recording), not the last one the screen had. held: samples by
        index the caller already built (the `before` sample is taken from it when there)."""
        events = self.targets.between(after_ns, s.mono_ns) if after_ns is not None else []
        k = self.before_index(s.mono_ns)
        before = None if k is None else held[k] if held and k in held else self._sample(k)
        return FeedItem(sample=s, events=events, report=self.report_at(s.mono_ns, nearest),
                        kernel=self.kernel.value_at(s.mono_ns), before=before,
                        mapped_files=self.mapped.value_at(s.mono_ns), other_cgroups=self.others.value_at(s.mono_ns))

    def before_index(self, mono_ns: int) -> Optional[int]:
        """Index of the sample the context compares with (HostKernel.BEFORE_S earlier)."""
        return self.rec.index_at(mono_ns - int(HostKernel.BEFORE_S * 1e9))

    def item(self, i: int) -> FeedItem:
        k = self.before_index(self.rec.mono[i])
        return self.at(self._sample(i, with_=k), self.rec.mono[i - 1] if i > 0 else -1)
