"""Prometheus / OpenMetrics metric families from ledgers (docs/export.md lists every one).

A pure function of what it is given: HostInfo, per target its labels, Ledger, process list
and eBPF inputs, the host-only Ledger with the Sample and LedgerInputs it was built from, and an
optional eBPF ProbeReport. Nothing here reads
the machine; `memprobe export` (cli/export.py) samples, builds the ledgers, and serves what
`build_families` returns from a cache.

Conventions (https://prometheus.io/docs/practices/naming/): `memprobe_` prefix, base units
(bytes, seconds), `_bytes` for sizes, `_total` for counters, `_info` for info metrics.
Missing data is absent: a cell, view or finding that could not be read yields no sample (never
a 0). A rule that checked and found nothing is a real 0; a rule that could not apply is absent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ..probe_report import ProbeReport
from ..ledger.inputs import LedgerInputs
from ..ledger.model import Ledger
from ..ledger.rules_kernel import STALL_COUNTERS
from ..samples import Sample

# Labels every per-target series carries, in this order ("" = unknown; Prometheus drops
# empty labels on ingestion, so an unknown label is simply absent there).
TARGET_LABELS = ("host", "target", "kind", "container", "container_id", "pod", "namespace", "cgroup")
# Views whose total is the whole host's, not the target's: exported once per host
# (memprobe_host_view_bytes), while their per-row cells stay per target.
HOST_VIEWS = ("host_used", "host_nofree", "nvml_used", "cuda_used")
SEVERITY_LEVEL = {"info": 1, "warning": 2, "critical": 3}
OTHER_FILES = "(other)"        # file label of the page cache outside the top-N files
DEFAULT_TOP_FILES = 10
# MemAvailable's terms (ledger/available.py MemAvailableParts field) by `part` label
AVAIL_PARTS = (("free", "free_bytes"), ("reserve", "reserve_bytes"), ("page_cache", "page_cache_bytes"),
               ("page_cache_kept", "page_cache_kept_bytes"), ("reclaimable", "reclaimable_kernel_bytes"),
               ("reclaimable_kept", "reclaimable_kernel_kept_bytes"), ("computed", "computed_bytes"),
               ("kernel", "kernel_bytes"))
# /proc/vmstat event counters of reclaim and compaction by `event` label; allocstall sums the
# kernel's per-zone allocstall_* (mm/vmscan.c counts one per zone type)
VMSTAT_EVENTS = (("compact_stall", ("compact_stall",)), ("compact_fail", ("compact_fail",)),
                 ("compact_success", ("compact_success",)), ("pgscan_direct", ("pgscan_direct",)),
                 ("pgscan_kswapd", ("pgscan_kswapd",)), ("pgsteal_direct", ("pgsteal_direct",)),
                 ("pgsteal_kswapd", ("pgsteal_kswapd",)), ("allocstall", STALL_COUNTERS))


@dataclass
class TargetMetrics:
    """One target at one instant, as the exporter hands it over."""
    labels: dict[str, str]                 # TARGET_LABELS values (missing keys become "")
    ledger: Ledger
    pids: list[int] = field(default_factory=list)          # host PIDs sampled
    cgroup_path: Optional[str] = None      # memory cgroup path (for eBPF attribution)
    inputs: Optional[LedgerInputs] = None  # the eBPF inputs the ledger was built with
    info: dict[str, str] = field(default_factory=dict)    # descriptive labels for memprobe_target_info


@dataclass
class ExporterStats:
    """The exporter's own health, for memprobe_exporter_* metrics."""
    cycles: int = 0
    cycle_seconds: Optional[float] = None
    last_cycle_unix: Optional[float] = None
    errors: dict[str, int] = field(default_factory=dict)      # stage -> count
    target_changes: dict[str, int] = field(default_factory=dict)   # "added"/"removed" -> count
    interval_seconds: Optional[float] = None
    fixed_targets: dict[str, bool] = field(default_factory=dict)   # TARGET as given -> being sampled now


def _under(path: Optional[str], root: Optional[str]) -> bool:
    if path is None or root is None:
        return False
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


def target_label_values(t: TargetMetrics) -> list[str]:
    return [str(t.labels.get(k) or "") for k in TARGET_LABELS]


def target_faults(report: Optional[ProbeReport], pids: Iterable[int], cgroup_path: Optional[str]) -> Optional[int]:
    """Page faults since the probes started of the target's processes, or of any process whose
    memory cgroup is the target's (or below it). None when the fault probe did not run."""
    if report is None or report.faults is None:
        return None
    ps = set(pids)
    return sum(f.faults for f in report.faults if f.pid in ps or _under(f.memory_cgroup, cgroup_path))


def top_files(inputs: Optional[LedgerInputs], cgroup_path: Optional[str], n: int) -> Optional[list[tuple[str, int]]]:
    """The n files with the most page cache charged to the target, plus the rest summed under
    OTHER_FILES (bounded label cardinality). None when the page-cache probe did not run."""
    if inputs is None or inputs.page_cache is None:
        return None
    per: dict[str, int] = {}
    for p in inputs.page_cache:
        if not _under(p.cgroup, cgroup_path) or p.bytes <= 0:
            continue
        name = p.path or f"inode {p.inode} on {p.dev}"
        per[name] = per.get(name, 0) + p.bytes
    ranked = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))
    out = ranked[:max(0, n)]
    rest = sum(b for _, b in ranked[max(0, n):])
    if rest:
        out.append((OTHER_FILES, rest))
    return out


def _gpu_uuid(host, index: Optional[int]) -> str:
    if index is None:
        return ""
    g = next((g for g in host.gpus if g.index == index), None)
    return (g.uuid or "") if g is not None else ""


def _s(v) -> str:
    return "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def vmstat_events(sample: Optional[Sample]) -> dict[str, int]:
    """The VMSTAT_EVENTS this sample's /proc/vmstat has (an event this kernel lacks is left out)."""
    if sample is None or sample.vmstat is None:
        return {}
    c = sample.vmstat.counters
    out = {}
    for name, keys in VMSTAT_EVENTS:
        vals = [c[k] for k in keys if k in c]
        if vals:
            out[name] = sum(vals)
    return out


def _kernel_families(hn: str, host_ledger: Optional[Ledger], host_sample: Optional[Sample],
                     host_inputs: Optional[LedgerInputs]) -> list[Metric]:
    """MemAvailable term by term, free memory in 2 MiB blocks, reclaim and compaction events,
    host PSI (docs/ledger.md "Kernel causes"): each only when read."""
    out: list[Metric] = []
    a = host_ledger.mem_available if host_ledger is not None else None
    if a is not None:
        ma = GaugeMetricFamily("memprobe_host_mem_available_bytes", "MemAvailable term by term as the kernel "
                               "computes it (mm/show_mem.c si_mem_available): computed = free - reserve + page_cache - "
                               "page_cache_kept + reclaimable - reclaimable_kept; kernel = /proc/meminfo MemAvailable",
                               labels=["host", "part"], unit="bytes")
        for part, key in AVAIL_PARTS:
            if getattr(a, key) is not None:
                ma.add_metric([hn, part], getattr(a, key))
        out.append(ma)
    huge = host_ledger.free_in_2mib_blocks_bytes if host_ledger is not None else None
    if huge is not None:
        fb = GaugeMetricFamily("memprobe_host_free_in_2mib_blocks_bytes", "free memory in free blocks of 2 MiB or "
                               "more (/proc/buddyinfo): what large GPU-driver and THP allocations can take without "
                               "compaction", labels=["host"], unit="bytes")
        fb.add_metric([hn], huge)
        out.append(fb)
    events = vmstat_events(host_sample)
    if events:
        ve = CounterMetricFamily("memprobe_host_vmstat_events", "reclaim and compaction events since boot "
                                 "(/proc/vmstat; pgscan/pgsteal count pages, the others events)",
                                 labels=["host", "event"])
        for name, v in events.items():
            ve.add_metric([hn, name], v)
        out.append(ve)
    k = host_inputs.kernel if host_inputs is not None else None
    p = k.pressure if k is not None else None
    if p is not None and (p.some_total_us is not None or p.full_total_us is not None):
        ps = CounterMetricFamily("memprobe_host_memory_pressure_seconds", "time tasks stalled waiting for memory "
                                 "since boot (/proc/pressure/memory total; some: at least one task, full: all "
                                 "non-idle tasks at once)", labels=["host", "kind"], unit="seconds")
        for kind, us in (("some", p.some_total_us), ("full", p.full_total_us)):
            if us is not None:
                ps.add_metric([hn, kind], us / 1e6)
        out.append(ps)
    return out


def target_series(host, t: TargetMetrics, report: Optional[ProbeReport], top_n_files: int) -> tuple:
    """Every series of one target, in the order build_families adds them: (family, the label
    values after the target's, value); an info family's value is its labels as sorted pairs."""
    out: list[tuple] = []
    lg = t.ledger
    for r in lg.rows:
        if r.parent is not None and r.key.startswith(f"{r.parent}.file"):
            continue          # per-file rows: memprobe_page_cache_file_bytes (bounded there)
        for view, v in sorted(r.cells.items()):
            if v is None:
                continue
            if r.parent is None:
                out.append(("ledger", (r.key, view), v))
            else:
                out.append(("detail", (r.parent, r.key[len(r.parent) + 1:], view), v))
    for c in lg.columns:
        if c.key not in HOST_VIEWS and c.total is not None:
            out.append(("view", (c.key,), c.total))
    found = {f.rule: f for f in lg.findings}
    for rr in lg.rules:
        if rr.status == "silent":
            continue
        f = found.get(rr.rule)
        out.append(("finding", (rr.rule,), f.bytes if f is not None else 0))
        out.append(("severity", (rr.rule,), SEVERITY_LEVEL.get(f.severity, 0) if f is not None else 0))
        if f is not None and f.bytes_low is not None:
            out.append(("lower", (rr.rule,), f.bytes_low))
    kv = lg.kv
    kl = (_gpu_uuid(host, kv.gpu_index), "uma_prediction" if kv.prediction else "measured")
    if kv.lost_bytes is not None:
        out.append(("kv_gap", kl, kv.lost_bytes))
    for p in kv.parts:
        out.append(("kv_part", kl + (p.key,), p.kv_bytes))
    if kv.kv_from_cuda_free_bytes is not None:
        out.append(("kv_budget", kl + ("cuda_free",), kv.kv_from_cuda_free_bytes))
    if kv.kv_from_available_bytes is not None:
        out.append(("kv_budget", kl + ("mem_available",), kv.kv_from_available_bytes))
    out.append(("processes", (), len(t.pids)))
    out.append(("info", (), tuple((k, _s(v)) for k, v in sorted(t.info.items()))))
    n = target_faults(report, t.pids, t.cgroup_path)
    if n is not None:
        out.append(("faults", (), n))
    for name, b in top_files(t.inputs, t.cgroup_path, top_n_files) or []:
        out.append(("file", (name,), b))
    if t.inputs is not None and t.inputs.cuda_bytes is not None:
        for kind, b in sorted(t.inputs.cuda_bytes.items()):
            out.append(("cuda", (kind,), b))
    return tuple(out)


class TargetBlocks:
    """Each target's samples of the last cycle by its label values, with the series (labels and
    values, from that cycle's ledger, host-wide inputs included) they were built from. A series
    equal to last cycle's at the same place gets the same Sample object back, which export_http
    renders from its last line; any other is built. old: the last cycle's; new: this one's;
    built: per target, how many of its series this cycle built."""

    def __init__(self):
        self.old: dict = {}
        self.new: dict = {}
        self.built: dict = {}

    def next_cycle(self) -> None:
        self.old, self.new, self.built = self.new, {}, {}


def build_families(host, targets: list[TargetMetrics], host_ledger: Optional[Ledger] = None,
                   report: Optional[ProbeReport] = None, top_n_files: int = DEFAULT_TOP_FILES,
                   stats: Optional[ExporterStats] = None, version: str = "",
                   host_sample: Optional[Sample] = None, host_inputs: Optional[LedgerInputs] = None,
                   blocks: Optional[TargetBlocks] = None) -> list[Metric]:
    """Every metric family for one sampling cycle. `host` is a samples.HostInfo; host_sample and
    host_inputs are what host_ledger was built from (vmstat events, host PSI); blocks: the
    exporter's TargetBlocks, kept from one cycle to the next."""
    hn = host.hostname or ""
    fams: list[Metric] = []
    T = list(TARGET_LABELS)

    def g(name, doc, labels=(), unit="") -> GaugeMetricFamily:
        m = GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)
        fams.append(m)
        return m

    # ---- host: build, platform, GPUs ----------------------------------------------------
    build = InfoMetricFamily("memprobe_build", "memprobe version", labels=["host"])
    build.add_metric([hn], {"version": version})
    fams.append(build)
    plat = InfoMetricFamily("memprobe_platform", "platform profile of this host (docs/ledger.md): how CPU and GPU "
                            "memory relate, decided from readings", labels=["host"])
    plat.add_metric([hn], {"platform": host.platform.kind if host.platform is not None else "unknown",
                           "kernel": _s(host.kernel), "machine": _s(host.machine),
                           "cgroup_layout": _s(host.cgroup_layout), "driver_version": _s(host.driver_version),
                           "nvml_version": _s(host.nvml_version),
                           "cuda_driver_version": _s(host.cuda_driver_version)})
    fams.append(plat)
    if host.gpus:
        gi = InfoMetricFamily("memprobe_gpu", "one GPU as NVML reports it", labels=["host", "gpu_uuid", "gpu_index"])
        for gpu in host.gpus:
            gi.add_metric([hn, _s(gpu.uuid), str(gpu.index)], {
                "name": _s(gpu.name), "pci_bus_id": _s(gpu.pci_bus_id), "addressing_mode": _s(gpu.addressing_mode),
                "c2c_enabled": _s(gpu.c2c_enabled), "integrated": _s(gpu.integrated), "numa_node": _s(gpu.numa_node)})
        fams.append(gi)

    # ---- host-wide views, CUDA free, KV budget (host-only ledger) ------------------------
    if host_ledger is not None:
        hv = g("memprobe_host_view_bytes", "what a host-wide view shows (ledger column total): host_used = "
               "MemTotal - MemAvailable, host_nofree = MemTotal - MemFree, nvml_used = NVML device used (all GPUs), "
               "cuda_used = cudaMemGetInfo total - free as modelled", ["host", "view"], unit="bytes")
        for c in host_ledger.columns:
            if c.key in HOST_VIEWS and c.total is not None:
                hv.add_metric([hn, c.key], c.total)
        cf = g("memprobe_cuda_free_bytes", "cudaMemGetInfo free per GPU, modelled from readings (no CUDA context)",
               ["host", "gpu_uuid", "gpu_index", "basis"], unit="bytes")
        ct = g("memprobe_cuda_total_bytes", "cudaMemGetInfo total per GPU, modelled from readings",
               ["host", "gpu_uuid", "gpu_index", "basis"], unit="bytes")
        for m in host_ledger.cuda:
            lv = [hn, _gpu_uuid(host, m.gpu_index), str(m.gpu_index), m.basis]
            if m.free_bytes is not None:
                cf.add_metric(lv, m.free_bytes)
            if m.total_bytes is not None:
                ct.add_metric(lv, m.total_bytes)
        kv = host_ledger.kv
        basis = "uma_prediction" if kv.prediction else "measured"
        kl = [hn, _gpu_uuid(host, kv.gpu_index), basis]
        hg = g("memprobe_host_kv_cache_gap_bytes", "KV cache an engine sizing it as fraction x cudaMemGetInfo free "
               "loses against fraction x MemAvailable, host-wide (basis=uma_prediction: what integrated UMA would "
               "lose; not a loss on this platform)", ["host", "gpu_uuid", "basis"], unit="bytes")
        if kv.lost_bytes is not None:
            hg.add_metric(kl, kv.lost_bytes)
        g("memprobe_kv_cache_fraction", "the fraction of free memory an engine gives its KV cache, as configured "
          "(--kv-fraction)", ["host"]).add_metric([hn], kv.fraction)
    fams += _kernel_families(hn, host_ledger, host_sample, host_inputs)

    # ---- per target ---------------------------------------------------------------------
    ledger_b = g("memprobe_ledger_bytes", "bytes of one kind of memory (row) that one view counts, for one target; "
                 "for each view, the rows sum to the view's total", T + ["row", "view"], unit="bytes")
    detail_b = g("memprobe_ledger_detail_bytes", "a breakdown of one ledger row (page cache active/inactive/dirty, "
                 "kernel parts, pinned, managed); not part of the row sums", T + ["row", "detail", "view"], unit="bytes")
    view_b = g("memprobe_view_bytes", "what one view of the target shows (memory.current, docker working set, "
               "memory.stat keys, RSS sum, NVML per-process)", T + ["view"], unit="bytes")
    fb = g("memprobe_finding_bytes", "bytes a ledger rule found counted twice, counted nowhere, or lost; 0: the rule "
           "checked and found nothing; absent: the rule could not apply", T + ["rule"], unit="bytes")
    fl = g("memprobe_finding_lower_bound_bytes", "proven lower bound of a finding whose bytes are an upper-bound "
           "estimate", T + ["rule"], unit="bytes")
    fs = g("memprobe_finding_severity", "severity of a rule's finding: 0 none, 1 info, 2 warning, 3 critical",
           T + ["rule"])
    kg = g("memprobe_kv_cache_gap_bytes", "fraction x (MemAvailable - cudaMemGetInfo free): KV cache lost to "
           "reclaimable memory counted as used (basis=uma_prediction on non-UMA hosts)",
           T + ["gpu_uuid", "basis"], unit="bytes")
    kp = g("memprobe_kv_cache_gap_part_bytes", "one part of MemAvailable - CUDA free, times the fraction: the "
           "target's page cache, the rest of the host's, reclaimable kernel memory, less what the kernel holds back",
           T + ["gpu_uuid", "basis", "part"], unit="bytes")
    kb = g("memprobe_kv_cache_budget_bytes", "KV cache an engine would size: sizing=cuda_free (what engines do) or "
           "sizing=mem_available (what reclaimable memory allows)", T + ["gpu_uuid", "basis", "sizing"], unit="bytes")
    procs = g("memprobe_target_processes", "processes of the target sampled this cycle (capped at 64 per target)", T)
    ti = InfoMetricFamily("memprobe_target", "descriptive labels of a target (join on the target labels)", labels=T)
    fams.append(ti)
    faults = CounterMetricFamily("memprobe_page_faults", "page faults of the target's processes since the exporter's "
                                 "eBPF probes started (perf software event page-faults)", labels=T)
    pcf = g("memprobe_page_cache_file_bytes", "page cache charged to the target per file, eBPF ownership since the "
            "probes started; top N files by bytes, the rest summed in file=\"(other)\"", T + ["file"], unit="bytes")
    cuo = g("memprobe_cuda_outstanding_bytes", "live CUDA driver allocations of the target's processes per kind "
            "(eBPF uprobes on libcuda since the probes started)", T + ["allocation"], unit="bytes")
    fam = {"ledger": ledger_b, "detail": detail_b, "view": view_b, "finding": fb, "lower": fl, "severity": fs,
           "kv_gap": kg, "kv_part": kp, "kv_budget": kb, "processes": procs, "info": ti, "faults": faults,
           "file": pcf, "cuda": cuo}
    if blocks is not None:
        blocks.next_cycle()
    for t in targets:
        lv = target_label_values(t)
        series = target_series(host, t, report, top_n_files)
        old_series, old_samples = blocks.old.get(tuple(lv), ((), ())) if blocks is not None else ((), ())
        if old_series == series:                  # nothing moved: the whole block again
            samples = old_samples
            for name, s in samples:
                fam[name].samples.append(s)
            built = 0
        else:
            # host-wide values (host_other rows, the KV budget from MemAvailable) move with every
            # cycle on a busy host: a series that kept its labels and value keeps its Sample
            same = len(old_series) == len(series)
            samples, built = [], 0
            for i, (name, extra, v) in enumerate(series):
                m = fam[name]
                if same and old_series[i] == series[i]:
                    m.samples.append(old_samples[i][1])
                else:
                    m.add_metric(lv + list(extra), dict(v) if name == "info" else v)
                    built += 1
                samples.append((name, m.samples[-1]))
        if blocks is not None:
            blocks.new[tuple(lv)] = (series, samples)
            blocks.built[tuple(lv)] = built
    fams.append(faults)

    # ---- eBPF probes --------------------------------------------------------------------
    if report is not None:
        pa = g("memprobe_probe_attached", "1 when the exporter's eBPF probe is attached, 0 when it was considered "
               "and refused (reason in the exporter's log)", ["host", "probe", "mechanism"])
        for st in report.probes:
            pa.add_metric([hn, st.name, st.mechanism], 1 if st.chosen else 0)

    # ---- the exporter itself ------------------------------------------------------------
    if stats is not None:
        g("memprobe_exporter_targets", "targets sampled in the last cycle", ["host"]).add_metric([hn], len(targets))
        cy = CounterMetricFamily("memprobe_exporter_cycles", "sampling cycles completed", labels=["host"])
        cy.add_metric([hn], stats.cycles)
        fams.append(cy)
        if stats.cycle_seconds is not None:
            g("memprobe_exporter_cycle_duration_seconds", "how long the last sampling cycle took (all targets, "
              "ledgers and metric families)", ["host"], unit="seconds").add_metric([hn], stats.cycle_seconds)
        if stats.last_cycle_unix is not None:
            g("memprobe_exporter_last_cycle_timestamp_seconds", "when the last sampling cycle ended (Unix time)",
              ["host"], unit="seconds").add_metric([hn], stats.last_cycle_unix)
        if stats.interval_seconds is not None:
            g("memprobe_exporter_interval_seconds", "configured time between sampling cycles (--interval)",
              ["host"], unit="seconds").add_metric([hn], stats.interval_seconds)
        er = CounterMetricFamily("memprobe_exporter_errors", "errors while sampling, by stage (details in the "
                                 "exporter's log)", labels=["host", "stage"])
        for stage, n in sorted(stats.errors.items()):
            er.add_metric([hn, stage], n)
        fams.append(er)
        tc = CounterMetricFamily("memprobe_exporter_target_changes", "targets added and removed since start",
                                 labels=["host", "change"])
        for ch in ("added", "removed"):
            tc.add_metric([hn, ch], stats.target_changes.get(ch, 0))
        fams.append(tc)
        if stats.fixed_targets:
            up = g("memprobe_target_up", "1 while a TARGET given on the command line is being sampled, 0 while it "
                   "is not there (exited, restarting, not yet started)", ["host", "target"])
            for q, ok in sorted(stats.fixed_targets.items()):
                up.add_metric([hn, q], 1 if ok else 0)
    return [m for m in fams if m.samples]
