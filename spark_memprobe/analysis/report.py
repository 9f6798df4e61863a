"""What a report says, worked out from one recording: timelines, the moments that matter, the
ledger at each of them, the findings seen over the run, files, CUDA allocations, inventory.

Long recordings stay fast because
  - scalar timelines come from the samples table's scalar columns (no blob decoding);
  - one pass over the samples (Recording.walk) rebuilds only the GPU fields of each sample, from
    the samples table's gpu_data column where the recording has it (no blob decoding), and full
    Samples only at the indices the report needs;
  - ledgers are built only at the moments and at a bounded set of candidate samples.
Every ledger is built from feed's ledger_inputs, as replay and attach build theirs.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Optional

from ..feed import ledger_inputs
from ..feed.replay import ReplayFeed
from ..ledger import LedgerInputs, build_ledger
from ..ledger.inputs import CUDA_DEVICE_KINDS
from ..ledger.model import Finding, Ledger
from ..recording import Recording, RecordingError
from ..samples import HostInfo, Sample
from .cuda_calls import CudaCallRow, cuda_from_probes
from .engine_timeline import EngineTimeline, engine_timeline
from .files import FileRow, files_at_peak
from .flight import trigger_moments
from .timeline import (GPU_STEPS, SCALAR_STEPS, GpuTrack, Marker, Moment, Series, burst_notes, burst_track,
                       find_moments, scalar_series, wanted)

IRRELEVANT_CHECKS = {"container engines", "native sampler"}


class EmptyRecording(RecordingError):
    """A readable recording that holds no sample."""


@dataclass
class FindingSeen:
    """One rule's finding over the scanned samples, at its largest."""
    finding: Finding
    index: int
    t_s: float
    raised: int                      # scanned samples where the rule raised it
    scanned: int
    first_s: float
    last_s: float
    moment: Optional[str] = None     # label of the moment it peaked at, when it is one
    inputs: Optional[LedgerInputs] = None   # what the ledger had at that sample (mappings, eBPF)


@dataclass
class ReportData:
    path: str
    header: dict
    meta: dict
    host: HostInfo
    n: int
    times: list[float]              # seconds since the first sample
    wall0_ns: Optional[int]
    duration_s: float
    interval_s: Optional[float]
    target: str
    platform: str
    kv_fraction: float
    series: dict[str, Series]
    markers: list[Marker]
    moments: list[Moment]
    findings: list[FindingSeen]
    scanned: int
    files: list[FileRow]
    files_source: Optional[str]
    cuda_kinds: dict[str, Series]
    cuda_calls: list[CudaCallRow]
    cuda_calls_total: dict
    probes: Optional[list[dict]]
    capabilities: Optional[list[dict]]
    not_measured: list[str]
    notes: list[str]
    stopped: Optional[str]
    target_events: list[tuple[float, dict]]
    gpu_series_key: Optional[str] = None    # which series the GPU moments were detected on
    engine: Optional[EngineTimeline] = None # the engine log's facts and KV comparison (engine_timeline.py)

    def moment(self, key: str) -> Optional[Moment]:
        return next((m for m in self.moments if key in m.keys), None)

    @property
    def peak(self) -> Moment:
        return self.moment("peak") or self.moments[-1]


def open_recording(path: str) -> Recording:
    """Open for reporting: RecordingError (one line) for unreadable files, EmptyRecording for
    recordings without a sample."""
    rec = Recording(path)
    if len(rec) == 0:
        why = ""
        try:
            stopped = rec.events("recording_stopped")
            if stopped:
                why = f" (it stopped: {stopped[-1].value.get('reason', stopped[-1].value)})"
        except RecordingError:
            pass
        rec.close()
        raise EmptyRecording(f"{path}: the recording holds no samples{why}; nothing to report")
    return rec


def analyse(rec: Recording, kv_fraction: Optional[float] = None,
            progress: Optional[Callable[[str], None]] = None) -> ReportData:
    progress = progress or (lambda msg: None)
    header = rec.header
    try:
        feed = ReplayFeed(rec)
    except (TypeError, ValueError, AttributeError) as e:
        raise RecordingError(f"{rec.path}: corrupt header 'host' ({e})") from None
    host = feed.header.host
    fraction = kv_fraction if kv_fraction is not None else rec.kv_fraction or 0.9
    n = len(rec)
    mono0 = rec.mono[0]
    times = [(m - mono0) / 1e9 for m in rec.mono]
    platform = host.platform.kind if host.platform is not None else "unknown"

    # 1. scalar timelines (no blobs), and the samples worth a ledger as far as they tell
    series, wall0 = scalar_series(rec)
    progress("scalar timelines read")
    first = wanted(series, find_moments(series, None, times), n, SCALAR_STEPS)

    def with_before(indices) -> set[int]:
        """indices and the samples their contexts compare with (ReplayFeed.at's `before`)"""
        return set(indices) | {k for k in (feed.before_index(rec.mono[i]) for i in indices) if k is not None}

    # 2. one pass over the samples: the GPU fields of every sample; whole Samples at `first` and
    # at their contexts' `before` samples, in the same pass where it decodes blobs (a recording
    # without gpu_data), else from their keyframes
    gpu = GpuTrack(host, series)
    samples: dict[int, Sample] = {}
    keep = with_before(first)
    for step in rec.walk(gpu_only=True):
        gpu.add(step)
        if step.full and step.index in keep:
            samples[step.index] = step.sample()
    samples.update(rec.samples_at(i for i in keep if i not in samples))
    progress("GPU fields replayed")
    gpu.add_series(series)

    # 3. CUDA allocations (eBPF)
    cuda_kinds, cuda_calls, cuda_total = cuda_from_probes(feed.reports, gpu.pids, mono0)
    progress("events read")

    # 4. moments, with the GPU now; samples the GPU adds are rebuilt from their keyframes
    gpu_key = None
    if "nvml_target" in series and any(v for v in series["nvml_target"].values if v):
        gpu_key = "nvml_target"
    elif any(k in cuda_kinds for k in CUDA_DEVICE_KINDS):
        # no NVML per-process figure: the eBPF device allocations, as of the last report at or
        # before each sample, stand in for finding the GPU moments
        ev_t = next(s.times for k, s in cuda_kinds.items() if k in CUDA_DEVICE_KINDS)
        dev = [sum(v) for v in zip(*(s.values for k, s in cuda_kinds.items() if k in CUDA_DEVICE_KINDS))]
        vals = []
        for t in times:
            j = bisect_right(ev_t, t) - 1
            vals.append(dev[j] if j >= 0 else None)
        if any(vals):
            series["cuda_device"] = Series("cuda_device", "CUDA device (eBPF)", vals, None,
                                           "live device + vmm + pool bytes of the target's processes, from the "
                                           "last eBPF report at or before each sample", "eBPF CUDA uprobes")
            gpu_key = "cuda_device"
    moments_at = trigger_moments(rec, series, times, find_moments(series, gpu_key, times))
    need = sorted(first | wanted(series, moments_at, n, GPU_STEPS))
    samples.update(rec.samples_at(i for i in with_before(need) if i not in samples))
    progress(f"{len(need)} samples rebuilt")

    # 5. ledgers, each from what the feed gives at its sample
    ledgers: dict[int, tuple[Ledger, LedgerInputs]] = {}
    for i in need:
        try:
            inp = ledger_inputs(feed.at(samples[i], nearest=True, held=samples), feed.header)
        except (TypeError, AttributeError, KeyError, ValueError) as e:
            raise RecordingError(f"{rec.path}: corrupt event before sample {i} ({type(e).__name__}: {e})") from None
        try:
            ledgers[i] = (build_ledger(host, samples[i], inp, kv_fraction=fraction), inp)
        except (TypeError, AttributeError, KeyError) as e:
            raise RecordingError(f"{rec.path}: sample {i} cannot be explained ({type(e).__name__}: {e})") from None
    progress(f"{len(ledgers)} ledgers built")

    moments = []
    for i, keys, label, why, before in moments_at:
        lg, inp = ledgers[i]
        rss = None
        value = feed.mapped.value_at(samples[i].mono_ns)
        if value is not None:
            rss = {}
            for f in value.get("files") or []:
                v = f.get("rss_bytes")
                prev = rss.get(f["path"], 0)
                rss[f["path"]] = None if v is None or prev is None else prev + v
        moments.append(Moment(keys, label, i, times[i], why, lg, samples[i], inp, rss,
                              (before, times[before], ledgers[before][0]) if before is not None else None))
    label_at = {m.index: m.label for m in moments}

    # 6. findings over the scan
    seen: dict[str, FindingSeen] = {}
    for i in need:
        for f in ledgers[i][0].findings:
            fs = seen.get(f.rule)
            if fs is None:
                seen[f.rule] = FindingSeen(f, i, times[i], 1, len(need), times[i], times[i], label_at.get(i),
                                           ledgers[i][1])
                continue
            fs.raised += 1
            fs.last_s = times[i]
            if f.bytes > fs.finding.bytes:
                fs.finding, fs.index, fs.t_s, fs.moment, fs.inputs = f, i, times[i], label_at.get(i), ledgers[i][1]
    findings = sorted(seen.values(), key=lambda x: (-x.finding.bytes, x.finding.rule))

    # 7. files
    peak = next((m for m in moments if "peak" in m.keys), moments[-1])
    files, files_source = files_at_peak(feed, peak, (moments[0].sample.mono_ns, moments[0].t_s))

    # 8. markers
    markers = [Marker(m.t_s, m.label, "moment") for m in moments if m.keys != ["start"] and m.keys != ["end"]]
    target_events = []
    for mono, _kind, v in feed.targets:
        t = (mono - mono0) / 1e9
        what = (v.get("message") or v.get("kind") or "event") if isinstance(v, dict) else str(v)
        markers.append(Marker(t, f"target: {what}", "target"))
        target_events.append((t, v))
    stopped = None
    for mono, _kind, v in rec.events("recording_stopped"):
        stopped = v.get("reason") if isinstance(v, dict) else str(v)
        markers.append(Marker((mono - mono0) / 1e9, "recording stopped", "stopped"))

    burst = burst_track(rec, series, mono0)     # burst mode: transient peaks between samples (docs/record.md)
    if burst is not None:
        series.update(burst.series)
        markers += [Marker(p.t_s, f"burst {p.label}", "moment") for p in burst.peaks if p.missed]
    engine = engine_timeline(rec, host, feed, times, fraction)
    markers += engine.markers() if engine is not None else []
    interval = header.get("interval_ns")
    data = ReportData(
        path=rec.path, header=header, meta=dict(rec.meta), host=host, n=n, times=times, wall0_ns=wall0,
        duration_s=times[-1], interval_s=interval / 1e9 if isinstance(interval, (int, float)) else None,
        target=_target_text(header, moments[-1].ledger), platform=platform, kv_fraction=fraction,
        series=series, markers=sorted(markers, key=lambda m: m.t_s), moments=moments, findings=findings,
        scanned=len(need), files=files, files_source=files_source, cuda_kinds=cuda_kinds, cuda_calls=cuda_calls,
        cuda_calls_total=cuda_total, probes=header.get("probes"), capabilities=header.get("capabilities"),
        not_measured=[], notes=[], stopped=stopped, target_events=target_events, gpu_series_key=gpu_key,
        engine=engine)
    data.not_measured = _not_measured(data, gpu.read, bool(feed.reports), bool(feed.mapped), bool(feed.others))
    data.notes = (burst_notes(burst) if burst is not None else []) + _notes([samples[i] for i in need], moments)
    return data


def _target_text(header: dict, lg: Ledger) -> str:
    t = header.get("target")
    if isinstance(t, dict) and t.get("description"):
        return str(t["description"])
    if isinstance(t, dict):
        kind = t.get("kind")
        who = {"container": "container", "pod": "pod", "unit": "systemd unit", "cgroup": "cgroup",
               "pid": "process"}.get(kind, kind or "target")
        name = t.get("name") or (t.get("id") or "")[:12] or t.get("cgroup_path") or t.get("query")
        eng = f" ({t['engine']})" if t.get("engine") and kind in ("container", "pod") else ""
        cg = t.get("cgroup_path")
        where = f" in memory cgroup v{t.get('cgroup_version')} {cg}" if cg and cg != name else \
            (f" (memory cgroup v{t.get('cgroup_version')})" if cg else "")
        return f"{who} {name}{eng}{where}"
    if isinstance(t, str) and t:
        return t
    return lg.target


def _not_measured(d: ReportData, gpu_read: bool, probes: bool, mapped: bool, others: bool) -> list[str]:
    out = []
    if d.probes is None:
        out.append("eBPF probes were off for this recording (header 'probes' is null): no page cache per file "
                   "and owner, no CUDA allocations by kind, no page faults")
    else:
        chosen = {p.get("name") for p in d.probes if p.get("chosen")}
        unasked = []
        for p in d.probes:
            # a refused mechanism of a probe that another mechanism runs (memcg poll vs tracepoints) costs nothing
            if p.get("chosen") or p.get("name") in chosen:
                continue
            if (p.get("reason") or "").strip() == "not requested":
                if p.get("name") not in unasked:
                    unasked.append(p.get("name"))
            else:
                out.append(f"probe {p.get('name')} ({p.get('mechanism')}) refused: {p.get('reason') or 'no reason given'}")
        if unasked:
            out.insert(0, f"eBPF probes not requested for this recording: {', '.join(unasked)}")
        if not probes:
            out.append("probes were chosen but no 'probes' event was recorded")
    if d.capabilities is None:
        out.append("host capabilities were not recorded (header 'capabilities' missing)")
    else:
        for c in d.capabilities:
            # what decides what a report can say; engines and the native sampler do not
            if not c.get("ok") and c.get("name") not in IRRELEVANT_CHECKS:
                detail = str(c.get("detail"))
                detail = detail if len(detail) <= 160 else detail[:157] + "..."
                out.append(f"{c.get('name')}: {detail}" + (f" ({c.get('cost')})" if c.get("cost") else ""))
    if not gpu_read:
        out.append("NVML was not read: no GPU views (NVML used, per-process GPU memory, CUDA free)")
    elif "nvml_target" in d.series and all(v is None for v in d.series["nvml_target"].values):
        out.append("NVML per-process memory was not read")
    if all(v is None for v in d.series["current"].values):
        out.append("no target memory cgroup was read: the cgroup views are empty")
    if not mapped and d.probes is None:
        out.append("the target's file mappings were not recorded (no 'mapped_files' event): files are not named")
    if not others and not any(m.inputs.page_cache is not None for m in d.moments):
        out.append("other cgroups were not recorded (no 'other_cgroups' event): owners of page cache charged "
                   "elsewhere are not named")
    return out


def _notes(samples: list[Sample], moments: list[Moment]) -> list[str]:
    counts: dict[str, int] = {}
    for s in samples:
        for n in set(s.notes):
            counts[n] = counts.get(n, 0) + 1
    out = [f"{n} ({c} of {len(samples)} samples examined)" for n, c in sorted(counts.items(), key=lambda x: -x[1])]
    seen = set()
    for m in moments:
        for n in m.ledger.notes:
            if n not in seen and n not in counts:
                seen.add(n)
                out.append(f"ledger: {n}")
    return out[:20]
