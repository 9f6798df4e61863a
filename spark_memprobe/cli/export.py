"""memprobe export: serve the ledger of every target as Prometheus / OpenMetrics metrics
(docs/export.md).

Shape: one background thread samples every --interval (host once: meminfo, NVML; each target:
its cgroup and processes, and its context, through feed/multi.py), builds one ledger per target
(feed/items.py ledger_inputs, as the screen does), turns them into metric families
(views/metrics.py), renders them once and swaps them into a cache. A scrape only reads that cache (export_http.py serves it): it never waits for /proc,
cgroupfs, NVML, a container engine or eBPF maps, so a slow or hung source makes the data older
(memprobe_exporter_data_age_seconds), never a scrape slower. Data older than --stale-after is
withheld rather than served as current.
"""
from __future__ import annotations

import argparse
import gc
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import EXIT_OK, EXIT_ERROR, EXIT_PERMISSION, EXIT_USAGE, CliError
from .args import duration, fraction, interval
from .target import TARGET_EXIT

DEFAULT_LISTEN = "127.0.0.1:9464"
GC_THRESHOLDS = (100_000, 20, 20)      # gc.set_threshold in the exporter process (run)
ERROR_STAGES = ("targets", "host", "bpf", "sample", "ledger", "metrics", "cycle")   # memprobe_exporter_errors_total


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464', 'localhost:9464' -> (host, port). The host is required:
    listening beyond loopback must be asked for by address (0.0.0.0, ::)."""
    t = text.strip()
    if t.startswith("["):
        host, sep, port = t[1:].partition("]:")
    else:
        host, sep, port = t.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (examples: 127.0.0.1:9464, [::1]:9464, "
                                         "0.0.0.0:9464)")
    return host, int(port)


def add_parser(sub):
    p = sub.add_parser("export", help="serve every target's ledger as Prometheus/OpenMetrics metrics",
                       description="Serve the ledger of each TARGET (or of every running container and pod "
                                   "with --all-containers) as Prometheus text or OpenMetrics at "
                                   "http://LISTEN/metrics. A background thread samples every --interval; a "
                                   "scrape serves the last cycle's result. Without TARGET, host metrics only. "
                                   "docs/export.md lists every metric.")
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="container name or ID prefix, pod UID or namespace/name, systemd unit, cgroup path or PID "
                        "(every form `memprobe attach` takes); a TARGET that exits disappears from the metrics and "
                        "comes back when it restarts")
    p.add_argument("--all-containers", action="store_true",
                   help="export every running container and Kubernetes pod, re-listed every --relist")
    p.add_argument("--listen", type=parse_listen, default=parse_listen(DEFAULT_LISTEN), metavar="HOST:PORT",
                   help=f"where to serve (default {DEFAULT_LISTEN}, loopback only; port 0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header names NAME (DNS rebinding check: on loopback only "
                        "localhost and IP addresses are accepted; beyond loopback any Host unless this is given)")
    p.add_argument("--interval", type=interval, default=5.0, metavar="DURATION",
                   help="time between sampling cycles (default 5s)")
    p.add_argument("--relist", type=interval, default=None, metavar="DURATION",
                   help="with --all-containers: how often containers are listed again (default: the interval, "
                        "at least 5s)")
    p.add_argument("--top-files", type=int, default=10, metavar="N",
                   help="with --bpf: page-cache files exported per target (default 10; the rest are summed "
                        "under file=\"(other)\")")
    p.add_argument("--kv-fraction", type=fraction, default=0.9, metavar="F",
                   help="the fraction of free memory an engine gives its KV cache (default 0.9)")
    p.add_argument("--stale-after", type=duration, default=None, metavar="DURATION",
                   help="withhold target and host series when the last cycle is older than this (default: 3 "
                        "intervals, at least 30s)")
    p.add_argument("--bpf", action="store_true",
                   help="also attach eBPF probes (page faults, page cache by file, CUDA allocations) when this "
                        "host allows; without them those metrics are absent")
    p.add_argument("--bpf-scan-dir", action="append", default=[], metavar="DIR",
                   help="with --bpf: name page-cache files by scanning DIR (e.g. a model directory)")
    return p


def log(msg: str) -> None:
    print(f"memprobe export: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- targets
def target_labels(t, hostname: str, label: str) -> tuple[dict, dict]:
    """(identifying labels, descriptive labels) of a sources.targets.Target."""
    pod = ns = ""
    pod_uid = t.labels.get("pod_uid") or ""
    if t.kind == "pod":
        if t.name and "/" in t.name:
            ns, pod = t.name.split("/", 1)
        else:
            pod = t.name or t.id or pod_uid
    elif pod_uid:
        pod = pod_uid                    # the pod's name is not known from the cgroup path: its UID
    container = container_id = ""
    if t.kind == "container":
        container, container_id = t.name or "", t.id or ""
    elif t.id and t.engine not in (None, "kubernetes", "systemd"):
        container, container_id = t.labels.get("container_name") or "", t.id
    ident = {"host": hostname, "target": label, "kind": t.kind, "container": container,
             "container_id": container_id, "pod": pod, "namespace": ns, "cgroup": t.cgroup_path or ""}
    info = {"engine": t.engine or "", "image": t.labels.get("image") or "", "qos": t.labels.get("qos") or "",
            "pod_uid": pod_uid, "containerd_namespace": t.namespace or "",
            "cgroup_version": str(t.cgroup_version or "")}
    return ident, info


# --------------------------------------------------------------------------- exporter
def kept_when_stale(name: str) -> bool:
    """Families served also past --stale-after: the exporter's own health."""
    return name.startswith(("memprobe_exporter_", "process_")) or name in ("memprobe_build", "memprobe_target_up")


@dataclass
class Exporter:
    proc: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    queries: list[str] = field(default_factory=list)
    all_containers: bool = False
    interval: float = 5.0
    relist: Optional[float] = None
    top_files: int = 10
    kv_fraction: float = 0.9
    stale_after: Optional[float] = None
    bpf: bool = False
    bpf_scan_dirs: list[str] = field(default_factory=list)
    log: Callable[[str], None] = log

    def __post_init__(self):
        from prometheus_client import ProcessCollector
        from ..feed.multi import TargetSet
        from ..views.metrics import ExporterStats, TargetBlocks
        from .export_http import LineCache
        self.relist = self.relist if self.relist is not None else max(self.interval, 5.0)
        self.stale_after = self.stale_after if self.stale_after is not None else max(3 * self.interval, 30.0)
        self.stats = ExporterStats(interval_seconds=self.interval)
        # counters start at 0 for every stage, so increase() sees the first error
        self.stats.errors = {stage: 0 for stage in ERROR_STAGES}
        self.stats.fixed_targets = {q: False for q in self.queries}
        self.targets = TargetSet(self.proc, self.cgroup_root, self.queries, self.all_containers, self.relist,
                                 self.kv_fraction, self._say, self._error)
        self.stats.target_changes = self.targets.changes
        self.exposition = None          # export_http.Exposition: replaced whole, never mutated; read lock-free
        self.lines = LineCache()       # sample lines kept from one cycle's rendering to the next
        self.blocks = TargetBlocks()   # each target's samples: a series that kept its value keeps its Sample
        self.process = ProcessCollector(registry=None)  # process_cpu_seconds_total etc.: the exporter's own overhead
        self.host = None
        self.host_sampler = None
        self.probes = None
        self._overdue = 0               # late libcuda searches already counted
        self._said: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- setup -------------------------------------------------------------------------
    def check_targets(self) -> None:
        """Resolve every TARGET once: errors that waiting cannot fix (usage, ambiguous,
        permission, no memory hierarchy) end the command; not found / not running is waited for."""
        for q, e in self.targets.unresolved():
            if e.kind in ("not_found", "not_running"):
                self.log(f"{q}: {e}; exporting it once it appears")
            else:
                raise CliError(f"{q}: {e}", TARGET_EXIT.get(e.kind, EXIT_ERROR))

    def start(self) -> None:
        from ..feed.host import open_host
        # the host once per cycle: meminfo, vmstat and NVML (with each GPU process's owner cgroup)
        self.host_sampler, _, self.host = open_host(self.proc, self.cgroup_root)
        for n in self.host.notes:
            self.log(n)
        if self.bpf:
            self._start_probes()
        self.check_targets()
        self.cycle()
        self._thread = threading.Thread(target=self._loop, name="memprobe-export-sampler", daemon=True)
        self._thread.start()

    def _start_probes(self) -> None:
        from ..sources.bpf import ProbeOptions, ProbeSession, ProbesUnavailable
        # memcg (fires on every counter update), fault addresses and UVM fentry stay off: a
        # resident exporter keeps only the probes cheap enough to run all the time
        opts = ProbeOptions(faults=True, fault_addresses=False, pagecache=True, memcg=False, cuda=True, uvm=False,
                            scan_dirs=list(self.bpf_scan_dirs))
        s = ProbeSession(opts, proc=self.proc, cgroup_root=self.cgroup_root, log=self.log)
        try:
            s.start()
        except ProbesUnavailable as e:
            self.log(f"eBPF probes unavailable ({e}); exporting without eBPF metrics")
            s.close()
            return
        except Exception as e:  # noqa: BLE001 - a compile or attach failure must not stop the exporter
            self.log(f"eBPF probes failed to start ({type(e).__name__}: {e}); exporting without eBPF metrics")
            s.close()
            return
        chosen = [st.name for st in s.statuses if st.chosen]
        refused = [f"{st.name} ({st.reason})" for st in s.statuses if not st.chosen and st.reason != "not requested"]
        self.log(f"eBPF probes attached: {', '.join(chosen) or 'none'}"
                 + (f"; not attached: {'; '.join(refused)}" if refused else ""))
        self.probes = s

    def _say(self, key: str, msg: str) -> None:
        """Log a message about one target only when it changed."""
        if self._said.get(key) != msg:
            self._said[key] = msg
            self.log(msg)

    def _error(self, stage: str, e: BaseException) -> None:
        self.stats.errors[stage] = self.stats.errors.get(stage, 0) + 1
        self._say(f"error:{stage}", f"{stage}: {type(e).__name__}: {e}")

    # -- one cycle -------------------------------------------------------------------------
    def _report(self):
        """This cycle's eBPF report (its CUDA call list: since the previous one), or None."""
        if self.probes is None:
            return None
        report = None
        try:
            self.probes.poll()
            report = self.probes.collect()
            for n in report.notes:
                # full kernel tables and lost events: said once (the counts stop growing)
                key = "bpf:" + re.sub(r"\d+", "N", n)
                if ("full" in n or "lost" in n or "not counted" in n) and key not in self._said:
                    self._said[key] = n
                    self.log(f"eBPF: {n}")
        except Exception as e:  # noqa: BLE001
            self._error("bpf", e)
        late = self.probes.discovery_overdue - self._overdue
        if late > 0:
            # a search for libcuda that outlived its deadline (a process's /proc files or a file
            # in its root stall it) is an error of the bpf stage
            self._overdue += late
            self.stats.errors["bpf"] = self.stats.errors.get("bpf", 0) + late
            self.log(f"bpf: the search for libcuda.so.1 has not returned in {self.probes.opts.discovery_deadline_s:g} s; "
                     "CUDA allocations of processes that load it meanwhile are not hooked until it does")
        return report

    def cycle(self) -> None:
        from .. import __version__
        from ..feed.items import FeedHeader, FeedItem, ledger_inputs
        from ..ledger import build_ledger
        from ..views.metrics import TargetMetrics, build_families
        from .export_http import render
        t0 = time.monotonic()
        try:
            self.targets.update()
        except Exception as e:  # noqa: BLE001 - the next cycle tries again
            self._error("targets", e)
        host_sample = host_ledger = host_inputs = None
        hk = self.targets.host_kernel
        try:
            host_sample = self.host_sampler.sample()
            hk.poll(host_sample)
            host_inputs = ledger_inputs(FeedItem(sample=host_sample, kernel=hk.kernel, before=hk.before(host_sample)),
                                        FeedHeader(host=self.host, target={}, probes=None))
            host_ledger = build_ledger(self.host, host_sample, host_inputs, kv_fraction=self.kv_fraction)
        except Exception as e:  # noqa: BLE001
            self._error("host", e)
        report = self._report()
        out: list[TargetMetrics] = []
        gpus = host_sample.gpus if host_sample is not None else None     # NVML read once per cycle
        # the host's page-allocator state was polled with the host sample: the targets reuse it
        for r in self.targets.sample(self.host, gpus, report, host_sample):
            try:
                t = r.watched.follower.target
                pids = sorted(p.pid for p in r.item.sample.processes)
                ident, info = target_labels(t, self.host.hostname or "", r.watched.label)
                out.append(TargetMetrics(ident, r.ledger, pids, t.cgroup_path, r.inputs, info))
            except Exception as e:  # noqa: BLE001
                self._error("ledger", e)
        for q in self.queries:
            self.stats.fixed_targets[q] = any(tm.labels["target"] == q for tm in out) and q in self.targets.watched
        self.stats.cycles += 1
        self.stats.cycle_seconds = time.monotonic() - t0
        self.stats.last_cycle_unix = time.time()
        try:
            fams = build_families(self.host, out, host_ledger, report, self.top_files, self.stats, __version__,
                                  host_sample=host_sample, host_inputs=host_inputs, blocks=self.blocks)
            self.exposition = render(fams + list(self.process.collect()), kept_when_stale, self.stats.last_cycle_unix,
                                     self.host.hostname or "", self.stale_after, self.lines)
        except Exception as e:  # noqa: BLE001
            self._error("metrics", e)

    def _loop(self) -> None:
        from ..feed.ticker import Ticker
        tick = Ticker(self.interval)         # a slow cycle shortens the next wait, never piles up
        while not self._stop.is_set():
            if self._stop.wait(tick.next()):
                break
            try:
                self.cycle()
            except Exception as e:  # noqa: BLE001 - the thread must outlive any one cycle
                self._error("cycle", e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(10.0, 2 * self.interval))
        self.targets.close()
        if self.host_sampler is not None:
            self.host_sampler.close()
        if self.probes is not None:
            self.probes.close()             # detaches every probe
            self.probes = None


# --------------------------------------------------------------------------- serving
def run(args) -> int:
    from .export_http import MetricsServer, is_loopback

    if args.all_containers and args.targets:
        raise CliError("give TARGET... or --all-containers, not both", EXIT_USAGE)
    if args.top_files < 0:
        raise CliError("--top-files must be 0 or more", EXIT_USAGE)
    host, port = args.listen
    x = Exporter(proc=args.proc, cgroup_root=args.cgroup_root, queries=list(args.targets),
                 all_containers=args.all_containers, interval=args.interval, relist=args.relist,
                 top_files=args.top_files, kv_fraction=args.kv_fraction, stale_after=args.stale_after,
                 bpf=args.bpf, bpf_scan_dirs=args.bpf_scan_dir)
    srv, serving, thresholds = None, False, gc.get_threshold()
    try:
        try:
            srv = MetricsServer(host, port, lambda: x.exposition, allow_hosts=args.allow_host, log=log)
        except PermissionError:
            raise CliError(f"cannot listen on {host}:{port}: permission denied", EXIT_PERMISSION)
        except OSError as e:
            raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}", EXIT_ERROR)
        # a cycle makes about a thousand objects per target that live until the next one: at the
        # default threshold (700) the collector ran hundreds of times a cycle, a third of the
        # exporter's CPU at 100 targets (docs/performance.md); few of them form reference cycles
        gc.set_threshold(*GC_THRESHOLDS)     # put back when run() returns
        x.start()                            # host facts, probes, first cycle: served from the first scrape on
        threading.Thread(target=srv.serve_forever, name="memprobe-export-http", daemon=True).start()
        serving = True
        bound = srv.server_address
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        if not is_loopback(host):
            log(f"listening beyond loopback ({host}): anyone who can reach this port reads this host's memory "
                "layout, container names and cgroup paths (no TLS, no authentication; docs/export.md)")
        what = (f"{len(x.queries)} target(s)" if x.queries else "every container and pod" if x.all_containers
                else "host only")
        log(f"serving http://{shown}:{bound[1]}/metrics ({what}, every {x.interval:g} s)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:            # Ctrl-C / SIGTERM: a clean stop, exit 0
            log("stopping")
            return EXIT_OK
    finally:
        if srv is not None:
            if serving:
                srv.shutdown()
            srv.server_close()
        x.stop()
        gc.set_threshold(*thresholds)
