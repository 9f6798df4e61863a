"""Series over a recording and the moments that matter in them.

Scalar series come from the samples table's scalar columns (no blob decoding); GPU series from
one pass over the samples that rebuilds only the GPU fields, and only when they changed, and
sums them with the ledger's own facts (ledger/facts.py) and CUDA model (ledger/cuda.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..ledger import Ledger, LedgerInputs
from ..ledger.cuda import model_cuda_free
from ..ledger.facts import Facts, facts_from_sample
from ..recording import GPU_FIELDS, Recording, Step
from ..samples import HostInfo, Sample

MiB = 1 << 20
SCAN_ALL_BELOW = 200          # recordings this short get a ledger at every sample
SCAN_MAX = 240                # otherwise at most this many candidate samples
RAMP_MIN = 256 * MiB          # a GPU rise smaller than this is never a "moment"
RAMP_SHARE = 0.15             # ... nor one smaller than this share of the run's GPU peak
RAMP_STEP = 16 * MiB          # consecutive rises larger than this form one ramp
SCALAR_STEPS = ("current", "anon", "file", "shmem", "kernel", "file_mapped", "mem_available")
GPU_STEPS = ("nvml_used", "nvml_target")
LABELS = {"start": "start", "rise": "largest rise", "model_load": "model load", "kv_sizing": "KV-cache sizing",
          "peak": "peak", "gpu_peak": "GPU peak", "end": "end", "trigger": "trigger"}


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
class Reason:
    """Why a sample is a moment. For the rises (model_load, kv_sizing, rise): the series they
    were found on, the bytes risen, and the sample before the rise and at its top."""
    key: str                        # a LABELS key
    series: str = ""                # the series' label, or what the peak is of
    rise: Optional[int] = None
    before: Optional[int] = None
    top: Optional[int] = None


@dataclass
class Moment:
    keys: list[str]                 # e.g. ["peak", "end"] when two moments fall on one sample
    label: str
    index: int
    t_s: float
    why: list[Reason]
    ledger: Ledger
    sample: Sample
    inputs: LedgerInputs
    # resident bytes per file in the target's mappings (mapped_files event, smaps Rss summed over
    # processes); None: no mapped_files event; a value None: the event had sizes only
    mapped_rss: Optional[dict] = None
    before: Optional[tuple] = None   # (index, t_s, Ledger) of the sample before a rise ("rise" moments)


def sub(a, b):
    return None if a is None or b is None else a - b


def argmax(values: list) -> Optional[int]:
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


def scalar_series(rec: Recording) -> tuple[dict[str, Series], Optional[int]]:
    """The cgroup and meminfo series from the scalar columns, and the first sample's wall clock."""
    cols = ["cg_current_bytes", "cg_anon_bytes", "cg_file_bytes", "cg_shmem_bytes", "cg_kernel_bytes",
            "cg_file_mapped_bytes", "cg_inactive_file_bytes", "mem_total_bytes", "mem_free_bytes",
            "mem_available_bytes"]
    tl = rec.timeline(cols)
    col = {c: [row[2 + j] for row in tl] for j, c in enumerate(cols)}
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
    add("host_used", "MemTotal - MemAvailable", [sub(a, b) for a, b in zip(mt, ma)],
        "host used (free, nvtop's GPU 'used' on UMA)", "proc.rst")
    return series, tl[0][1] if tl else None


class GpuTrack:
    """GPU series of a walk over every sample, from the ledger's facts of the GPU fields (rebuilt
    only where they changed) and MemFree / MemTotal from the scalar columns."""

    def __init__(self, host: HostInfo, series: dict[str, Series]):
        self.host = host
        self.mem_free, self.mem_total = series["mem_free"].values, series["mem_total"].values
        self.used: list[Optional[int]] = []
        self.target: list[Optional[int]] = []
        self.cuda_free: list[Optional[int]] = []
        self.pids: set[int] = set()         # the target's processes over the run
        self.read = False                   # NVML found a GPU in some sample
        self._facts: Optional[Facts] = None
        self._sample: Optional[Sample] = None     # the GPU fields of the last step, kept up to date

    def add(self, step: Step) -> None:
        f = self._facts
        if f is None or step.changed(GPU_FIELDS):
            # most steps change a few numbers (NVML used): set them in the last Sample built
            if self._sample is None or not step.patch(self._sample, GPU_FIELDS):
                self._sample = step.sample(GPU_FIELDS)
            f = self._facts = facts_from_sample(self.host, self._sample)
            self.read |= f.gpus_read
            self.pids.update(f.pids, f.procs or [])
        self.used.append(f.nvml_used)
        self.target.append(f.gpu_target)
        # facts of the GPU fields only: meminfo comes from the scalar columns
        f.meminfo = {k: v for k, v in (("MemFree", self.mem_free[step.index]),
                                       ("MemTotal", self.mem_total[step.index])) if v is not None}
        models = model_cuda_free(f)
        self.cuda_free.append(models[0].free_bytes if models else None)

    def add_series(self, series: dict[str, Series]) -> None:
        """NVML used and NVML per-process of the target where NVML was read; modelled CUDA free."""
        if self.read:
            series["nvml_used"] = Series("nvml_used", "NVML used", self.used, None,
                                         "NVML device used, all GPUs (nvidia-smi)", "NVML nvmlDeviceGetMemoryInfo_v2")
            series["nvml_target"] = Series("nvml_target", "NVML target procs", self.target, None,
                                           "NVML per-process memory of the target's processes",
                                           "NVML nvmlDeviceGetComputeRunningProcesses")
        if any(v is not None for v in self.cuda_free):
            series["cuda_free"] = Series("cuda_free", "CUDA free (model)", self.cuda_free, None,
                                         "cudaMemGetInfo free, modelled per platform (ledger/cuda.py)",
                                         "ledger/cuda.py")


def find_moments(series: dict[str, Series], gpu_key: Optional[str],
                 times: list[float]) -> list[tuple[int, list[str], str, list[Reason], Optional[int]]]:
    """(index, keys, label, reasons, index before the rise for "rise") of each moment, in time order."""
    n = len(times)
    cur, host_used = series["current"].values, series["host_used"].values
    found: list[tuple[int, Reason]] = [(0, Reason("start"))]
    befores: dict[int, int] = {}
    if gpu_key is not None:
        g = series[gpu_key].values
        label = series[gpu_key].label
        top = max(v for v in g if v is not None)
        thresh = max(RAMP_MIN, int(RAMP_SHARE * top))
        big = [r for r in ramps(g, thresh) if r[2] >= thresh]
        if big:
            a, b, rise = big[0]
            found.append((b, Reason("model_load", label, rise, a, b)))
        if len(big) >= 2:
            gp = argmax(g)
            before = [r for r in big[1:] if r[0] <= gp]
            if before:
                a, b, rise = before[-1]
                found.append((a, Reason("kv_sizing", label, rise, a, b)))
    peak_src, peak_vals = ("memory.current", cur) if any(v is not None for v in cur) else \
        ("MemTotal - MemAvailable", host_used)
    vals = [v for v in peak_vals if v is not None]
    if vals:
        top = max(vals)
        thresh = max(RAMP_MIN, int(RAMP_SHARE * top))
        rises = [r for r in ramps(peak_vals, thresh) if r[2] >= max(64 * MiB, int(0.10 * top))]
        if rises:
            a, b, rise = max(rises, key=lambda r: (r[2], -r[0]))
            found.append((b, Reason("rise", peak_src, rise, a, b)))
            befores[b] = a
    p = argmax(peak_vals)
    if p is not None:
        found.append((p, Reason("peak", peak_src)))
    if gpu_key is not None:
        gp = argmax(series[gpu_key].values)
        if gp is not None:
            found.append((gp, Reason("gpu_peak", series[gpu_key].label)))
    found.append((n - 1, Reason("end")))
    by_index: dict[int, list[Reason]] = {}
    for i, why in found:
        if why.key not in [r.key for r in by_index.get(i, [])]:
            by_index.setdefault(i, []).append(why)
    out = []
    for i in sorted(by_index):
        keys = [r.key for r in by_index[i]]
        out.append((i, keys, " = ".join(LABELS[k] for k in keys), by_index[i],
                    befores.get(i) if "rise" in keys else None))
    return out


def candidates(series: dict[str, Series], moments_at: list, n: int, keys) -> set[int]:
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


def wanted(series: dict[str, Series], moments_at: list, n: int, keys) -> set[int]:
    """Samples that get a ledger: every one in a short recording, else the candidates; and the
    moments with the samples before their rises."""
    out = set(range(n)) if n <= SCAN_ALL_BELOW else candidates(series, moments_at, n, keys)
    return out | {m[0] for m in moments_at} | {m[4] for m in moments_at if m[4] is not None}


# burst mode (docs/record.md): (series key, flattened Sample path, label) of the peaks looked for
BURST_FIELDS = (("current", "cgroup/current_bytes", "memory.current"), ("anon", "cgroup/stat/anon", "stat anon"),
                ("mem_available", "meminfo/bytes/MemAvailable", "MemAvailable"))


@dataclass
class BurstPeak:
    key: str                        # the screen-rate series it is compared with
    label: str
    bytes: int                      # at the burst peak (MemAvailable: its lowest)
    t_s: float
    screen: Optional[int]           # the screen-rate series' peak (lowest for MemAvailable)

    @property
    def missed(self) -> Optional[int]:
        """How far the burst peak lies beyond what the screen-rate samples saw, when that is more
        than RAMP_STEP (smaller differences are the host's noise between two samples)."""
        if self.screen is None:
            return None
        d = self.screen - self.bytes if self.key == "mem_available" else self.bytes - self.screen
        return d if d > RAMP_STEP else None


@dataclass
class BurstTrack:
    samples: int
    dropped: int
    interval_s: Optional[float]
    peaks: list[BurstPeak]
    series: dict[str, Series]


def burst_track(rec: Recording, series: dict[str, Series], mono0: int) -> Optional[BurstTrack]:
    """The burst samples' peaks against the screen-rate series; None without burst samples."""
    b = rec.bursts()
    if not len(b):
        return None
    mono, vals = b.series([p for _, p, _ in BURST_FIELDS])
    times = [(m - mono0) / 1e9 for m in mono]
    peaks, out = [], {}
    for key, path, label in BURST_FIELDS:
        v = vals[path]
        low = key == "mem_available"
        i = argmax([-x if x is not None else None for x in v] if low else v)
        if i is None:
            continue
        scr = [x for x in series[key].values if x is not None] if key in series else []
        peaks.append(BurstPeak(key, label, v[i], times[i], (min(scr) if low else max(scr)) if scr else None))
    cur = vals["cgroup/current_bytes"]
    if any(x is not None for x in cur):
        out["current_burst"] = Series("current_burst", "memory.current (burst)", cur, times,
                                      "memory.current at every burst sample", "record --interval under 10ms")
    burst = rec.header.get("burst")
    iv = burst.get("interval_ns") if isinstance(burst, dict) else None
    return BurstTrack(len(b), b.dropped, iv / 1e9 if isinstance(iv, int) else None, peaks, out)


def burst_notes(t: BurstTrack) -> list[str]:
    every = f" every {t.interval_s * 1000:g} ms" if t.interval_s else ""
    out = [f"burst mode: {t.samples} samples{every} in the recording, {t.dropped} dropped by the sampler's ring"
           + (" (the recording fell behind: those instants are missing)" if t.dropped else "")]
    for p in t.peaks:
        what = "lowest" if p.key == "mem_available" else "peak"
        line = f"burst {what} of {p.label}: {p.bytes / MiB:.1f} MiB at {p.t_s:.3f} s"
        if p.missed:
            line += (f", {p.missed / MiB:.1f} MiB beyond the screen-rate samples' {what} ({p.screen / MiB:.1f} MiB): "
                     f"a transient between two samples")
        out.append(line)
    return out
