"""What a report says, worked out from one recording: timelines, the moments that matter, the
ledger at each of them, the findings seen over the run, files, CUDA allocations, inventory.

Pure functions of a Recording (views layer: uses recording and ledger, never sources).
Long recordings stay fast because
  - scalar timelines come from the samples table's scalar columns (no blob decoding);
  - one pass replays the delta-encoded sample blobs keeping only GPU and process-id fields per
    sample, and rebuilds full Sample objects only at the indices the report needs
    (`Replay`: the recording layout documented in spark_memprobe/recording.py);
  - ledgers are built only at the moments and at a bounded set of candidate samples.
Missing data stays None all the way to the renderers, which show it as missing.
"""
from __future__ import annotations

import bisect
import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from ..events import ProbeReport, report_from_dict
from ..feed import mapped_files_from_event, others_from_event
from ..ledger import LedgerInputs, build_ledger
from ..ledger.cuda import model_cuda_free
from ..ledger.facts import Facts, under
from ..ledger.inputs import CUDA_DEVICE_KINDS, from_probe_report
from ..ledger.model import Finding, Ledger
from ..recording import REMOVED, Recording, RecordingError, check_event, json_value
from ..samples import HostInfo, Sample

MiB = 1 << 20
GiB = 1 << 30

# event kinds this module reads (conventions in spark_memprobe/recording.py)
EV_PROBES, EV_TARGET, EV_STOPPED = "probes", "target", "recording_stopped"
EV_MAPPED, EV_OTHERS = "mapped_files", "other_cgroups"

IRRELEVANT_CHECKS = {"container engines", "native sampler"}
SCAN_ALL_BELOW = 200          # recordings this short get a ledger at every sample
SCAN_MAX = 240                # otherwise at most this many candidate samples
RAMP_MIN = 256 * MiB          # a GPU rise smaller than this is never a "moment"
RAMP_SHARE = 0.15             # ... nor one smaller than this share of the run's GPU peak
RAMP_STEP = 16 * MiB          # consecutive rises larger than this form one ramp


class EmptyRecording(RecordingError):
    """A readable recording that holds no sample."""


# -- results --------------------------------------------------------------------------
@dataclass
class Series:
    key: str
    label: str
    values: list                    # Optional[int] per sample (or per event for event series)
    times: Optional[list] = None    # seconds since start; None: the recording's sample times
    title: str = ""
    source: str = ""


@dataclass
class Marker:
    t_s: float
    label: str
    kind: str                       # "moment", "target", "stopped", "cuda"


@dataclass
class Moment:
    keys: list[str]                 # e.g. ["peak", "end"] when two moments fall on one sample
    label: str
    index: int
    t_s: float
    why: str
    ledger: Ledger
    sample: Sample
    inputs: LedgerInputs
    # resident bytes per file in the target's mappings (mapped_files event, smaps Rss summed over
    # processes); None: no mapped_files event; a value None: the event had sizes only
    mapped_rss: Optional[dict] = None
    before: Optional[tuple] = None   # (index, t_s, Ledger) of the sample before a rise ("rise" moments)


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
class FileRow:
    path: str
    bytes: Optional[int]
    owner: Optional[str] = None      # owning cgroup (eBPF), None when unknown
    owner_is_target: Optional[bool] = None
    mapped_by_target: Optional[bool] = None
    mapping_bytes: Optional[int] = None
    pids: list[int] = field(default_factory=list)


@dataclass
class CudaCallRow:
    t_s: float
    pid: int
    func: str
    kind: str
    size_bytes: Optional[int]
    result: int


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

    def moment(self, key: str) -> Optional[Moment]:
        return next((m for m in self.moments if key in m.keys), None)

    @property
    def peak(self) -> Moment:
        return self.moment("peak") or self.moments[-1]


# -- replaying sample blobs -----------------------------------------------------------------
class Replay:
    """One pass over the delta-encoded samples (layout: spark_memprobe/recording.py), keeping the
    flattened sample up to date without building Sample objects."""

    def __init__(self, rec: Recording):
        self.rec = rec

    def run(self, start: int, stop: int) -> Iterator[tuple[int, dict, list]]:
        """Yields (index, flat {path id: value}, [(path id, value) changed in this sample]) for
        start <= index < stop. The flat dict is reused: copy what you keep."""
        rec = self.rec
        stop = min(stop, len(rec))
        if start >= stop:
            return
        k = max((i for i in rec.keyframes if i <= start), default=None)
        if k is None:
            raise RecordingError(f"{rec.path}: corrupt recording (no keyframe before sample {start})")
        flat: dict = {}
        i = k
        try:
            cur = rec.db.execute("SELECT keyframe, data FROM samples WHERE seq >= ? AND seq < ? ORDER BY seq",
                                 (rec.seqs[k], rec.seqs[stop - 1] + 1))
            for key, blob in cur:
                body = rec._decode(blob)
                if key:
                    flat = {}
                for pid, v in body:
                    if v == REMOVED:
                        flat.pop(pid, None)
                    else:
                        flat[pid] = v
                if i >= start:
                    yield i, flat, body
                i += 1
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{rec.path}: corrupt recording ({e})") from None

    def sample(self, flat: dict) -> Sample:
        paths = self.rec.paths
        return self.rec.build_sample({paths[pid]: v for pid, v in flat.items()})


# which flattened paths the per-sample GPU timeline needs
_GPU = re.compile(r"^gpus/#(\d+)/(used_bytes|free_bytes|total_bytes|reserved_bytes)$")
_GPROC = re.compile(r"^gpus/#(\d+)/processes/#(\d+)/(pid|used_bytes|owner_cgroup)$")
_GPROCS_NONE = re.compile(r"^gpus/#(\d+)/processes$")     # an empty or None processes list is a leaf
_PROC = re.compile(r"^processes/#(\d+)/pid$")
_CGPROCS = re.compile(r"^cgroup/procs/#(\d+)$")


def _classify_paths(paths: dict[int, str]) -> dict[int, tuple]:
    out = {}
    for pid, p in paths.items():
        if p == "gpus":
            out[pid] = ("gpus",)
        elif p == "cgroup/path":
            out[pid] = ("cgpath",)
        elif (m := _GPU.match(p)):
            out[pid] = ("gpu", int(m.group(1)), m.group(2))
        elif (m := _GPROC.match(p)):
            out[pid] = ("gproc", int(m.group(1)), int(m.group(2)), m.group(3))
        elif (m := _GPROCS_NONE.match(p)):
            out[pid] = ("gprocs", int(m.group(1)))
        elif (m := _PROC.match(p)):
            out[pid] = ("pid", int(m.group(1)))
        elif (m := _CGPROCS.match(p)):
            out[pid] = ("cgproc", int(m.group(1)))
    return out


@dataclass
class GpuPoint:
    read: bool = False                          # NVML was read in this sample
    used: Optional[int] = None                  # NVML device used, all GPUs (None if any unknown)
    target: Optional[int] = None                # NVML per-process bytes of the target's processes
    free: dict = field(default_factory=dict)    # index -> bytes
    total: dict = field(default_factory=dict)
    reserved: dict = field(default_factory=dict)
    pids: tuple = ()                            # the target's pids in this sample
    n_gpus: int = 0


def _gpu_point(g: dict, cls: dict[int, tuple]) -> GpuPoint:
    """Mirror of ledger/facts.py _gpus for the timeline: same sums, from flattened fields."""
    gpus: dict[int, dict] = {}
    procs: dict[tuple, dict] = {}
    proc_lists: dict[int, Any] = {}
    pids, cg_path, gpus_leaf = set(), None, None
    for pid, v in g.items():
        c = cls[pid]
        kind = c[0]
        if kind == "gpu":
            gpus.setdefault(c[1], {})[c[2]] = v
        elif kind == "gproc":
            procs.setdefault((c[1], c[2]), {})[c[3]] = v
            proc_lists.setdefault(c[1], "list")
        elif kind == "gprocs":
            proc_lists[c[1]] = v           # None (not read) or [] (none)
        elif kind in ("pid", "cgproc"):
            if isinstance(v, int):
                pids.add(v)
        elif kind == "cgpath":
            cg_path = v
        elif kind == "gpus":
            gpus_leaf = v                  # None: NVML not read; []: no GPU
    pt = GpuPoint(pids=tuple(sorted(pids)))
    if not gpus:
        pt.read = gpus_leaf == []          # read, and there is no GPU
        return pt
    pt.read, pt.n_gpus = True, len(gpus)
    used = [gpus[i].get("used_bytes") for i in sorted(gpus)]
    pt.used = None if any(u is None for u in used) else sum(used)
    for i, d in gpus.items():
        pt.free[i], pt.total[i], pt.reserved[i] = d.get("free_bytes"), d.get("total_bytes"), d.get("reserved_bytes")
    known = [i for i in gpus if proc_lists.get(i) is not None]
    if not known:
        return pt
    mine = 0
    for (gi, _k), p in procs.items():
        if gi not in known or p.get("used_bytes") is None:
            continue
        if p.get("pid") in pids or (cg_path is not None and under(p.get("owner_cgroup"), cg_path)):
            mine += p["used_bytes"]
    pt.target = mine
    return pt


# -- events ---------------------------------------------------------------------------------
class Events:
    """One event kind of a recording, in time order, parsed only where it is used: a one-hour
    recording with eBPF on holds thousands of large cumulative reports. Reads the events table
    as documented in spark_memprobe/recording.py (seq, mono_ns, kind, value JSON)."""

    def __init__(self, rec: Recording, kind: str):
        self.rec, self.kind = rec, kind
        try:
            rows = rec.db.execute("SELECT seq, mono_ns FROM events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{rec.path}: corrupt recording ({e})") from None
        if not all(type(m) is int for _s, m in rows):
            raise RecordingError(f"{rec.path}: corrupt recording ('{kind}' event time that is not an integer)")
        self.seqs = [r[0] for r in rows]
        self.mono = [r[1] for r in rows]
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.seqs)

    def __bool__(self) -> bool:
        return bool(self.seqs)

    def _text(self, i: int) -> str:
        try:
            row = self.rec.db.execute("SELECT value FROM events WHERE seq = ?", (self.seqs[i],)).fetchone()
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{self.rec.path}: corrupt recording ({e})") from None
        return row[0] if row else "null"

    def value(self, i: int) -> Any:
        if i not in self._cache:
            try:
                v = json_value(self._text(i))
            except ValueError as e:
                raise RecordingError(f"{self.rec.path}: corrupt event data ({self.kind}: {e})") from None
            self._cache[i] = check_event(self.rec.path, self.kind, v)
        return self._cache[i]

    def key(self, i: int, key: str) -> Any:
        """One top-level key of a large JSON object without parsing the rest: json.dumps writes
        '"key": ' unescaped only for keys, and no nested object of a ProbeReport has a key that
        a top-level one has."""
        if i in self._cache:
            v = self._cache[i]
            return v.get(key) if isinstance(v, dict) else None
        text = self._text(i)
        at = text.find(f'"{key}": ') if isinstance(text, str) else -1
        if at < 0:
            return None
        try:
            v, _end = json.JSONDecoder().raw_decode(text, at + len(key) + 4)
        except (ValueError, RecursionError) as e:
            raise RecordingError(f"{self.rec.path}: corrupt event data ({self.kind}: {e})") from None
        return check_event(self.rec.path, self.kind, v, key)

    def last_at(self, mono: int) -> Optional[int]:
        """Index of the last event at or before mono."""
        k = bisect.bisect_right(self.mono, mono) - 1
        return k if k >= 0 else None

    def items(self) -> Iterator[tuple[int, Any]]:
        for i in range(len(self)):
            yield self.mono[i], self.value(i)


# -- helpers --------------------------------------------------------------------------------
def _sub(a, b):
    return None if a is None or b is None else a - b


def _argmax(values: list) -> Optional[int]:
    best, idx = None, None
    for i, v in enumerate(values):
        if v is not None and (best is None or v > best):
            best, idx = v, i
    return idx


def ramps(values: list, big: int, step: int = RAMP_STEP) -> list[tuple[int, int, int]]:
    """Rises of a series: (index before the rise, index at its top, bytes risen). A single step of
    at least `big` bytes is a rise of its own (one allocation, e.g. a KV cache, shows up as one
    jump); other consecutive steps of more than `step` bytes form one stretch (weights copied over
    several samples). None breaks a stretch."""
    out = []
    i, n = 1, len(values)

    def rise(k):
        a, b = values[k - 1], values[k]
        return None if a is None or b is None else b - a

    while i < n:
        r = rise(i)
        if r is not None and r >= big:
            out.append((i - 1, i, r))
            i += 1
        elif r is not None and r > step:
            j = i
            while j + 1 < n and (rj := rise(j + 1)) is not None and step < rj < big:
                j += 1
            out.append((i - 1, j, values[j] - values[i - 1]))
            i = j + 1
        else:
            i += 1
    return out


def _fmt_s(t: float) -> str:
    return f"{t:.1f} s" if t < 100 else f"{t:.0f} s"


# -- building the report data -------------------------------------------------------------------
def open_recording(path: str) -> Recording:
    """Open for reporting: RecordingError (one line) for unreadable files, EmptyRecording for
    recordings without a sample."""
    rec = Recording(path)
    if len(rec) == 0:
        why = ""
        try:
            stopped = rec.events(EV_STOPPED)
            if stopped:
                why = f" (it stopped: {stopped[-1][2].get('reason', stopped[-1][2])})"
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
        host = rec.host
    except (TypeError, ValueError, AttributeError) as e:
        raise RecordingError(f"{rec.path}: corrupt header 'host' ({e})") from None
    fraction = kv_fraction if kv_fraction is not None else rec.kv_fraction or 0.9
    n = len(rec)
    mono0 = rec.mono[0]
    times = [(m - mono0) / 1e9 for m in rec.mono]
    platform = host.platform.kind if host.platform is not None else "unknown"

    # 1. scalar timelines (SQL, no blobs)
    cols = ["cg_current_bytes", "cg_anon_bytes", "cg_file_bytes", "cg_shmem_bytes", "cg_kernel_bytes",
            "cg_file_mapped_bytes", "cg_inactive_file_bytes", "mem_total_bytes", "mem_free_bytes",
            "mem_available_bytes"]
    try:
        tl = rec.timeline(cols)
    except sqlite3.DatabaseError as e:
        raise RecordingError(f"{rec.path}: corrupt recording ({e})") from None
    col = {c: [row[2 + j] for row in tl] for j, c in enumerate(cols)}
    wall0 = tl[0][1] if tl else None
    progress("scalar timelines read")

    series: dict[str, Series] = {}

    def add(key, label, values, title="", source=""):
        series[key] = Series(key, label, values, None, title, source)

    cur, ina = col["cg_current_bytes"], col["cg_inactive_file_bytes"]
    add("current", "memory.current", cur, "the target cgroup's charged memory",
        "Documentation/admin-guide/cgroup-v2.rst memory.current (v1: memory.usage_in_bytes)")
    add("working_set", "working set", [None if c is None or a is None else (c - a if a < c else c)
                                       for c, a in zip(cur, ina)],
        "docker stats / kubelet: memory.current - inactive_file", "ledger/table.py WS_SRC")
    for k, lbl in (("anon", "anon"), ("file", "file"), ("shmem", "shmem"), ("kernel", "kernel"),
                   ("file_mapped", "file_mapped")):
        add(k, f"stat {lbl}", col[f"cg_{k}_bytes"], f"memory.stat {lbl}", "cgroup-v2.rst memory.stat")
    mt, mf, ma = col["mem_total_bytes"], col["mem_free_bytes"], col["mem_available_bytes"]
    add("mem_total", "MemTotal", mt, "/proc/meminfo MemTotal", "proc.rst")
    add("mem_available", "MemAvailable", ma, "/proc/meminfo MemAvailable", "proc.rst")
    add("mem_free", "MemFree", mf, "/proc/meminfo MemFree", "proc.rst")
    add("host_used", "MemTotal - MemAvailable", [_sub(a, b) for a, b in zip(mt, ma)],
        "host used (free, nvtop's GPU 'used' on UMA)", "proc.rst")

    # 2. samples worth a ledger, as far as the scalar columns tell (the GPU adds some below)
    def wanted(moments_at, keys) -> set[int]:
        out = set(range(n)) if n <= SCAN_ALL_BELOW else _candidates(series, moments_at, n, keys)
        out |= {m[0] for m in moments_at} | {m[4] for m in moments_at if m[4] is not None}
        return out

    first = wanted(_find_moments(series, cur, series["host_used"].values, None, times), SCALAR_STEPS)

    # 3. one pass over the blobs: GPU fields and the target's pids for every sample, and the full
    #    Sample at the indices wanted so far
    replay = Replay(rec)
    cls = _classify_paths(rec.paths)
    gpu_pts: list[GpuPoint] = []
    g: dict = {}
    pt = GpuPoint()
    all_pids: set[int] = set()
    keyframes = set(rec.keyframes)
    samples: dict[int, Sample] = {}
    for i, flat, body in replay.run(0, n):
        if i in keyframes or i == 0:
            # keyframe: rebuild the kept subset from the whole sample
            g = {pid: v for pid, v in flat.items() if pid in cls}
            pt = _gpu_point(g, cls)
        else:
            changed = False
            for pid, v in body:
                if pid in cls:
                    changed = True
                    if v == REMOVED:
                        g.pop(pid, None)
                    else:
                        g[pid] = v
            if changed:
                pt = _gpu_point(g, cls)
        gpu_pts.append(pt)
        all_pids.update(pt.pids)
        if i in first:
            samples[i] = replay.sample(flat)
    progress("sample blobs replayed")

    gpu_read = any(p.read and p.n_gpus for p in gpu_pts)
    if gpu_read:
        add("nvml_used", "NVML used", [p.used for p in gpu_pts], "NVML device used, all GPUs (nvidia-smi)",
            "NVML nvmlDeviceGetMemoryInfo_v2")
        add("nvml_target", "NVML target procs", [p.target for p in gpu_pts],
            "NVML per-process memory of the target's processes", "NVML nvmlDeviceGetComputeRunningProcesses")
    cuda_free = _cuda_free_series(host, platform, gpu_pts, mf, mt)
    if any(v is not None for v in cuda_free):
        add("cuda_free", "CUDA free (model)", cuda_free, "cudaMemGetInfo free, modelled per platform "
            "(ledger/cuda.py)", "ledger/cuda.py")

    # 4. events (parsed where used)
    probes_ev = Events(rec, EV_PROBES)
    mapped_ev = Events(rec, EV_MAPPED)
    others_ev = Events(rec, EV_OTHERS)
    target_ev = list(Events(rec, EV_TARGET).items())
    stopped_ev = list(Events(rec, EV_STOPPED).items())
    progress("events read")
    cuda_kinds, cuda_calls, cuda_total = _cuda_from_probes(probes_ev, all_pids, mono0)

    # 5. moments, with the GPU now; samples the GPU adds are rebuilt from their keyframes
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
            j = bisect.bisect_right(ev_t, t) - 1
            vals.append(dev[j] if j >= 0 else None)
        if any(vals):
            add("cuda_device", "CUDA device (eBPF)", vals, "live device + vmm + pool bytes of the target's "
                "processes, from the last eBPF report at or before each sample", "eBPF CUDA uprobes")
            gpu_key = "cuda_device"
    moments_at = _find_moments(series, cur, series["host_used"].values, gpu_key, times)
    need = sorted(first | wanted(moments_at, GPU_STEPS))
    missing = [i for i in need if i not in samples]
    for start, stop in _segments(rec.keyframes, missing):
        want = {i for i in missing if start <= i < stop}
        for i, flat, _body in replay.run(start, stop):
            if i in want:
                samples[i] = replay.sample(flat)
    progress(f"{len(samples)} samples rebuilt")

    # 6. ledgers
    parsed_probes: dict[int, ProbeReport] = {}

    def inputs_at(s: Sample) -> LedgerInputs:
        inp = LedgerInputs()
        pids = sorted({p.pid for p in s.processes} | set((s.cgroup.procs or []) if s.cgroup else []))
        j = probes_ev.last_at(s.mono_ns)
        if j is not None:
            if j not in parsed_probes:
                try:
                    parsed_probes[j] = report_from_dict(probes_ev.value(j))
                except (TypeError, KeyError, ValueError, AttributeError) as e:
                    raise RecordingError(f"{rec.path}: corrupt 'probes' event ({e})") from None
            # probes key page cache by cgroup v2 id; v1 charges the adder's memcg (ledger/inputs.py;
            # the same choice as feed.py ledger_inputs, so a report agrees with the live view)
            adder = s.cgroup.path if s.cgroup is not None and s.cgroup.version == 1 else None
            inp = from_probe_report(parsed_probes[j], pids, adder_cgroup=adder)
        j = mapped_ev.last_at(s.mono_ns)
        if j is not None:
            inp.mapped_files = mapped_files_from_event(mapped_ev.value(j))
        j = others_ev.last_at(s.mono_ns)
        if j is not None:
            try:
                inp.others = others_from_event(others_ev.value(j))
            except (TypeError, AttributeError, ValueError) as e:
                raise RecordingError(f"{rec.path}: corrupt 'other_cgroups' event ({e})") from None
        return inp

    ledgers: dict[int, tuple[Ledger, LedgerInputs]] = {}
    for i in need:
        inp = inputs_at(samples[i])
        try:
            ledgers[i] = (build_ledger(host, samples[i], inp, kv_fraction=fraction), inp)
        except (TypeError, AttributeError, KeyError) as e:
            raise RecordingError(f"{rec.path}: sample {i} cannot be explained ({type(e).__name__}: {e})") from None
    progress(f"{len(ledgers)} ledgers built")

    moments = []
    for i, keys, label, why, before in moments_at:
        lg, inp = ledgers[i]
        rss = None
        j = mapped_ev.last_at(samples[i].mono_ns)
        if j is not None:
            rss = {}
            for f in (mapped_ev.value(j) or {}).get("files") or []:
                v = f.get("rss_bytes")
                prev = rss.get(f["path"], 0)
                rss[f["path"]] = None if v is None or prev is None else prev + v
        moments.append(Moment(keys, label, i, times[i], why, lg, samples[i], inp, rss,
                              (before, times[before], ledgers[before][0]) if before is not None else None))
    label_at = {m.index: m.label for m in moments}

    # 7. findings over the scan
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

    # 8. files
    files, files_source = _files(probes_ev, parsed_probes, mapped_ev, moments, rec.path)

    # 9. markers
    markers = [Marker(m.t_s, m.label, "moment") for m in moments if m.keys != ["start"] and m.keys != ["end"]]
    target_events = []
    for mono, v in target_ev:
        t = (mono - mono0) / 1e9
        what = (v.get("message") or v.get("kind") or "event") if isinstance(v, dict) else str(v)
        markers.append(Marker(t, f"target: {what}", "target"))
        target_events.append((t, v))
    stopped = None
    for mono, v in stopped_ev:
        stopped = v.get("reason") if isinstance(v, dict) else str(v)
        markers.append(Marker((mono - mono0) / 1e9, "recording stopped", "stopped"))

    interval = header.get("interval_ns")
    data = ReportData(
        path=rec.path, header=header, meta=dict(rec.meta), host=host, n=n, times=times, wall0_ns=wall0,
        duration_s=times[-1], interval_s=interval / 1e9 if isinstance(interval, (int, float)) else None,
        target=_target_text(header, moments[-1].ledger), platform=platform, kv_fraction=fraction,
        series=series, markers=sorted(markers, key=lambda m: m.t_s), moments=moments, findings=findings,
        scanned=len(need), files=files, files_source=files_source, cuda_kinds=cuda_kinds, cuda_calls=cuda_calls,
        cuda_calls_total=cuda_total, probes=header.get("probes"), capabilities=header.get("capabilities"),
        not_measured=[], notes=[], stopped=stopped, target_events=target_events, gpu_series_key=gpu_key)
    data.not_measured = _not_measured(data, gpu_read, bool(probes_ev), bool(mapped_ev), bool(others_ev))
    data.notes = _notes(samples, moments)
    return data


def _cuda_free_series(host: HostInfo, platform: str, pts: list[GpuPoint], mf: list, mt: list) -> list:
    """cudaMemGetInfo free per sample, through the ledger's own model (ledger/cuda.py)."""
    out = []
    page = host.page_size or None         # the recorded host's page size, never assumed
    for p, free, total in zip(pts, mf, mt):
        meminfo = {k: v for k, v in (("MemFree", free), ("MemTotal", total)) if v is not None}
        if not p.read:
            out.append(None)
            continue
        idx = sorted(p.free) or ([0] if platform == "integrated" else [])
        f = Facts(page_size=page, platform=platform, target="", meminfo=meminfo, gpus_read=True, gpu_indexes=idx,
                  nvml_free=p.free, nvml_total=p.total, nvml_reserved=p.reserved)
        models = model_cuda_free(f)
        out.append(models[0].free_bytes if models else None)
    return out


def _find_moments(series: dict[str, Series], cur: list, host_used: list, gpu_key: Optional[str],
                  times: list[float]) -> list[tuple[int, list[str], str, str, Optional[int]]]:
    n = len(times)
    found: list[tuple[str, int, str]] = [("start", 0, "first sample")]
    befores: dict[int, int] = {}
    if gpu_key is not None:
        g = series[gpu_key].values
        top = max(v for v in g if v is not None)
        thresh = max(RAMP_MIN, int(RAMP_SHARE * top))
        big = [r for r in ramps(g, thresh) if r[2] >= thresh]
        if big:
            a, b, rise = big[0]
            found.append(("model_load", b, f"end of the first large rise of {series[gpu_key].label} "
                          f"(+{_gib(rise)} from t={_fmt_s(times[a])} to {_fmt_s(times[b])})"))
        if len(big) >= 2:
            gp = _argmax(g)
            before = [r for r in big[1:] if r[0] <= gp]
            if before:
                a, b, rise = before[-1]
                found.append(("kv_sizing", a, f"last sample before the last large rise of {series[gpu_key].label} "
                              f"(+{_gib(rise)} at t={_fmt_s(times[a + 1])}): where an engine that sizes its KV "
                              f"cache from cudaMemGetInfo read CUDA free"))
    peak_src, peak_vals = ("memory.current", cur) if any(v is not None for v in cur) else \
        ("MemTotal - MemAvailable", host_used)
    vals = [v for v in peak_vals if v is not None]
    if vals:
        top = max(vals)
        thresh = max(RAMP_MIN, int(RAMP_SHARE * top))
        rises = [r for r in ramps(peak_vals, thresh) if r[2] >= max(64 * MiB, int(0.10 * top))]
        if rises:
            a, b, rise = max(rises, key=lambda r: (r[2], -r[0]))
            found.append(("rise", b, f"top of the largest rise of {peak_src} (+{_gib(rise)} from "
                          f"t={_fmt_s(times[a])} to {_fmt_s(times[b])}): a file read, a model load, an allocation"))
            befores[b] = a
    p = _argmax(peak_vals)
    if p is not None:
        found.append(("peak", p, f"highest {peak_src} of the run"))
    if gpu_key is not None:
        gp = _argmax(series[gpu_key].values)
        if gp is not None:
            found.append(("gpu_peak", gp, f"highest {series[gpu_key].label} of the run"))
    found.append(("end", n - 1, "last sample"))
    labels = {"start": "start", "rise": "largest rise", "model_load": "model load", "kv_sizing": "KV-cache sizing", "peak": "peak",
              "gpu_peak": "GPU peak", "end": "end"}
    by_index: dict[int, list[tuple[str, str]]] = {}
    for key, i, why in found:
        if key in [k for k, _ in by_index.get(i, [])]:
            continue
        by_index.setdefault(i, []).append((key, why))
    out = []
    for i in sorted(by_index):
        keys = [k for k, _ in by_index[i]]
        out.append((i, keys, " = ".join(labels[k] for k in keys), "; ".join(f"{labels[k]}: {w}" for k, w in by_index[i]),
                    befores.get(i) if "rise" in keys else None))
    return out


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"


SCALAR_STEPS = ("current", "anon", "file", "shmem", "kernel", "file_mapped", "mem_available")
GPU_STEPS = ("nvml_used", "nvml_target")


def _candidates(series: dict[str, Series], moments_at, n: int, keys) -> set[int]:
    """Samples worth a ledger in a long recording: where one of `keys` stepped (the sample before
    and after), plus an even spread of 100; at most SCAN_MAX in all."""
    keys = [k for k in keys if k in series]
    mt = next((v for v in series["mem_total"].values if v), None)
    thresh = max(64 * MiB, int(0.01 * mt)) if mt else 64 * MiB
    steps: dict[int, int] = {}
    for k in keys:
        v = series[k].values
        for i in range(1, n):
            a, b = v[i - 1], v[i]
            if a is not None and b is not None and abs(b - a) >= thresh:
                steps[i] = max(steps.get(i, 0), abs(b - a))
                steps[i - 1] = max(steps.get(i - 1, 0), abs(b - a))
    spread = {round(j * (n - 1) / 99) for j in range(100)}
    out = set(spread)
    room = (SCAN_MAX - len(out) - 2 * len(moments_at)) // 2
    for i, _ in sorted(steps.items(), key=lambda kv: (-kv[1], kv[0]))[:max(0, room)]:
        out.add(i)
    return out


def _segments(keyframes: list[int], need: list[int]) -> list[tuple[int, int]]:
    """Contiguous replay ranges covering `need`: one per keyframe interval that holds a needed index."""
    out: list[tuple[int, int]] = []
    for i in need:
        k = max((x for x in keyframes if x <= i), default=0)
        if out and out[-1][0] == k:
            out[-1] = (k, i + 1)
        else:
            out.append((k, i + 1))
    return out


def _cuda_from_probes(probes_ev: Events, pids: set[int], mono0: int, limit: int = 600):
    """Per-kind live CUDA bytes of the target's processes at each probe report (at most `limit`
    reports, evenly spread, plus the last: a chart has no more pixels than that), and the largest
    allocation calls of the last report (eBPF uprobes on libcuda)."""
    kinds: dict[str, list] = {}
    times = []
    n = len(probes_ev)
    pick = sorted({round(j * (n - 1) / (limit - 1)) for j in range(limit)} if n > limit else set(range(n)))
    for i in pick:
        cu = probes_ev.key(i, "cuda")
        if not isinstance(cu, list):
            continue
        times.append((probes_ev.mono[i] - mono0) / 1e9)
        per: dict[str, int] = {}
        for c in cu:
            if isinstance(c, dict) and c.get("pid") in pids:
                per[c.get("kind", "?")] = per.get(c.get("kind", "?"), 0) + max(0, c.get("outstanding_bytes") or 0)
        for k in set(kinds) | set(per):
            kinds.setdefault(k, [0] * (len(times) - 1)).append(per.get(k, 0))
    out = {k: Series(f"cuda_{k}", f"CUDA {k}", vals, list(times), f"live {k} bytes of the target's processes "
                     "(eBPF uprobes on libcuda)", "eBPF CUDA uprobes") for k, vals in sorted(kinds.items())}
    calls: list[CudaCallRow] = []
    total = {"calls": 0, "allocations": 0, "frees": 0, "failed": 0}
    for i in range(n):            # each report lists the calls since the previous one
        for c in probes_ev.key(i, "cuda_calls") or []:
            if not isinstance(c, dict) or c.get("pid") not in pids:
                continue
            func = str(c.get("func", "?"))
            free = "Free" in func or "Release" in func
            total["calls"] += 1
            total["frees" if free else "allocations"] += 1
            total["failed"] += 1 if c.get("result", 0) else 0
            if not free:
                calls.append(CudaCallRow((c.get("ts_ns", mono0) - mono0) / 1e9, c.get("pid"), func,
                                         c.get("kind", "?"), c.get("size_bytes"), c.get("result", 0)))
    calls.sort(key=lambda c: (-(c.size_bytes or 0), c.t_s))
    return out, calls[:12], total


def _files(probes_ev: Events, parsed: dict[int, ProbeReport], mapped_ev: Events, moments: list[Moment], path: str):
    peak = next((m for m in moments if "peak" in m.keys), moments[-1])
    mapped = peak.inputs.mapped_files or []
    by_key: dict[tuple, dict] = {}
    for m in mapped:
        d = by_key.setdefault((m.dev, m.inode, m.path), {"bytes": 0, "pids": set()})
        d["bytes"] += m.size_bytes
        d["pids"].add(m.pid)
    if probes_ev and probes_ev.key(len(probes_ev) - 1, "page_cache") is not None:
        # the first probe report at or after the peak (else the last one): reports are cumulative and
        # come at most once a second, so the last one before the peak may miss pages the peak holds
        # (the ledgers themselves keep to the last report at or before their sample, as the live
        # view did)
        mono = peak.sample.mono_ns
        s = peak.sample
        pids = sorted({p.pid for p in s.processes} | set((s.cgroup.procs or []) if s.cgroup else []))
        adder = s.cgroup.path if s.cgroup is not None and s.cgroup.version == 1 else None
        cg = s.cgroup.path if s.cgroup is not None else None
        after = min(bisect.bisect_left(probes_ev.mono, mono), len(probes_ev) - 1)
        before = probes_ev.last_at(mono)
        options = []
        for j in sorted({k for k in (before, after) if k is not None}):
            if j not in parsed:
                try:
                    parsed[j] = report_from_dict(probes_ev.value(j))
                except (TypeError, KeyError, ValueError, AttributeError) as e:
                    raise RecordingError(f"{path}: corrupt 'probes' event ({e})") from None
            pc = from_probe_report(parsed[j], pids, adder_cgroup=adder).page_cache or []
            mine = sum(p.bytes for p in pc if cg is not None and under(p.cgroup, cg))
            row = peak.ledger.row("page_cache").cells.get("current") if peak.ledger.rows else None
            # reports come at most once a second: keep the one (just before or just after the peak)
            # whose page cache charged to the target is closest to what memory.stat showed there
            options.append((abs(mine - row) if row is not None else 0, 0 if j == after else 1, j, pc))
        _d, _o, j, pc = min(options, key=lambda x: (x[0], x[1]))
        rows = []
        paths = {m.path for m in mapped}
        ids = {(m.dev, m.inode) for m in mapped if m.inode}
        t_rep = (probes_ev.mono[j] - moments[0].sample.mono_ns) / 1e9 + moments[0].t_s
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
    if mapped_ev:
        j = mapped_ev.last_at(peak.sample.mono_ns)
        if j is None:
            return [], None
        rows: dict[tuple, FileRow] = {}
        for f in (mapped_ev.value(j) or {}).get("files") or []:
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


def _notes(samples: dict[int, Sample], moments: list[Moment]) -> list[str]:
    counts: dict[str, int] = {}
    for s in samples.values():
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
