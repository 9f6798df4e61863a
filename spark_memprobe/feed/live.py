"""The live feed: a followed target, its samples (with NVML), eBPF reports and context, as
FeedItems. Shared by `attach` (screen or plain lines) and `record` (headless), so what is
shown and what is recorded come from the same readings."""
from __future__ import annotations

import functools
import sys
import threading
import time
from dataclasses import asdict
from typing import Optional

from ..probe_report import ProbeStatus
from ..sources.bpf import ProbeOptions, ProbeSession, ProbesUnavailable
from ..sources.capabilities import checks_to_dicts, run_checks
from ..sources.sampler import open_sampler
from ..sources.targets.resolver import Resolver, Target, target_to_dict
from .context import REPORT_EVERY_S, Context, HostKernel
from .follow import Follower
from .host import read_host
from .items import FeedHeader, FeedItem
from .ticker import EventWake


class ProbeWorker:
    """Owns the eBPF session in its own thread: polls its buffers and collects a report once a
    second. bcc can stall for seconds (attaching uprobes to a newly loaded libcuda parses that
    100 MB library), and sampling must not stall with it; the feed only reads `report`."""

    def __init__(self, session):
        self.session = session
        self.report = None
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memprobe-probes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = 0.0
        try:
            while not self._stop.is_set():
                self.session.poll(100)
                if time.monotonic() - last >= REPORT_EVERY_S:
                    self.report = self.session.collect()
                    last = time.monotonic()
        except Exception as e:  # noqa: BLE001 - a failing probe ends eBPF, not the run
            self.error = f"eBPF probes stopped: {e}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class LiveFeed:
    """A resolved target followed on this host (the resolver's proc and cgroup roots), with
    eBPF probes when bpf, and a vanished target waited for exit_grace_s."""

    def __init__(self, resolver: Resolver, target: Target, bpf: bool = False, exit_grace_s: float = 2.0):
        self.resolver = resolver
        self.follower = Follower(resolver, target, exit_grace_s=exit_grace_s,
                                 sampler_factory=functools.partial(open_sampler, nvml=True))
        host = read_host(self.follower.sampler)
        self.capabilities = checks_to_dicts(run_checks())
        self.session = None
        self.worker = None
        probes = None
        if bpf:
            probes = self._start_probes(target)
            if self.session is not None:
                self.worker = ProbeWorker(self.session)
        self.header = FeedHeader(host=host, target=target_to_dict(target), probes=probes)
        self.report = None
        self.context = Context(resolver.proc)
        self.host_kernel = HostKernel(resolver.proc)
        self.wake: Optional[EventWake] = None
        self._woken: list[dict] = []

    def _start_probes(self, target: Target) -> list[dict]:
        # No per-fault probes while following: they cost about 20 % of a fault-bound workload
        # (docs/performance.md), and the counts they give are in memory.stat (pgfault, and the
        # per-item totals the memcg stream sums) at no cost. `memprobe probes --run` has them.
        opts = ProbeOptions(cgroup=target.cgroup_path, pid=target.pids[0] if target.kind == "pid" else None,
                            faults=False, memcg=False)
        try:
            self.session = ProbeSession(opts, proc=self.resolver.proc, cgroup_root=self.resolver.cgroup_root)
            return [asdict(p) for p in self.session.start()]
        except ProbesUnavailable as e:
            self.session = None
            return [asdict(ProbeStatus(name="all", mechanism="bcc", chosen=False, reason=str(e)))]

    @property
    def sampler_kind(self) -> str:
        return self.follower.sampler.kind if self.follower.sampler else "none"

    def target_text(self) -> str:
        return self.follower.target.describe()

    def tick(self) -> tuple[FeedItem, Optional[dict]]:
        """(item, end): end is the final event (a dict) when the target is gone."""
        s, events = self.follower.tick()
        evs = self._woken + [{"kind": e.kind, "message": e.message, "wall_ns": e.wall_ns, "facts": e.facts}
                             for e in events]
        self._woken = []
        end = next((e for e in evs if e["kind"] == "ended"), None)
        if self.worker is not None:
            self.report = self.worker.report
            if self.worker.error and not any(self.worker.error in e["message"] for e in evs):
                evs.append({"kind": "probes-stopped", "message": self.worker.error, "wall_ns": time.time_ns(),
                            "facts": {}})
                self.worker.error = None
        if s is not None:
            late = self.context.poll(s, self.follower.target, self.follower.sampler.cgfs)
            if late:
                evs.append({"kind": "context-late", "message": late, "wall_ns": time.time_ns(), "facts": {}})
        self.host_kernel.poll(s)
        return FeedItem(sample=s, events=evs, report=self.report, mapped_files=self.context.mapped_files,
                        other_cgroups=self.context.other_cgroups, kernel=self.host_kernel.kernel,
                        before=self.host_kernel.before(s)), end

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next tick, or less when a PSI trigger or the target's limit events
        wake it (feed/ticker.py EventWake: at most one early tick per interval); True when woken,
        and the next item carries a "woken" event saying why. The watches follow the target
        (a re-created cgroup is watched anew)."""
        t = self.follower.target
        if self.wake is None or self.wake.cgroup_dir != t.cgroup_dir:
            if self.wake is not None:
                self.wake.close()
            v2 = t.cgroup_version == 2 and t.cgroup_dir
            # v1 has no memory.pressure: the host's PSI is the one there is (docs/flight-recorder.md)
            self.wake = EventWake(f"{t.cgroup_dir}/memory.pressure" if v2 else f"{self.resolver.proc}/pressure/memory",
                                  t.cgroup_dir, t.cgroup_version)
        why = self.wake.wait(timeout_s)
        if why:
            self._woken.append({"kind": "woken", "message": f"sampled early: {why}", "wall_ns": time.time_ns(),
                                "facts": {}})
        return bool(why)

    def close(self) -> None:
        if self.wake is not None:
            self.wake.close()
            self.wake = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.session is not None:
            try:
                self.session.close()
            except Exception as e:  # noqa: BLE001 - detaching must not hide the exit path
                print(f"memprobe: detaching probes: {e}", file=sys.stderr)
            self.session = None
        self.follower.close()
