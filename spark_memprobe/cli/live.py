"""The live feed: a followed target, its samples (with NVML), eBPF reports, as FeedItems.

Shared by `attach` (TUI or plain lines) and `record` (headless), so what is shown and what is
recorded come from the same readings."""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from dataclasses import asdict
from typing import Optional

from ..feed import FeedHeader, FeedItem

REPORT_EVERY_S = 1.0       # eBPF report, file mappings and other cgroups: at most this often
OTHERS_MAX = 32            # sibling cgroups read for first-touch owners
PROBES_STEADY_S = 10.0     # eBPF reports recorded at least this often when CUDA memory is still


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
    def __init__(self, args, query: str, bpf: bool, exit_grace_s: float = 2.0):
        from ..sources.capabilities import checks_to_dicts, run_checks
        from ..sources.nvml import NvmlReader
        from ..sources.platform import read_host_info
        from ..sources.sampler import open_sampler
        from ..sources.targets import Follower, target_to_dict
        from .attach import resolve_target

        self.resolver, target = resolve_target(args, query)
        self.follower = Follower(self.resolver, target, exit_grace_s=exit_grace_s,
                                 sampler_factory=functools.partial(open_sampler, nvml=True))
        nvml = NvmlReader()
        try:
            host = read_host_info(self.follower.sampler.cgfs.layout.mode, nvml)
        finally:
            nvml.close()
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
        self.mapped_files = None
        self.other_cgroups = None
        self._last_context = 0.0

    def _start_probes(self, target) -> list[dict]:
        from ..events import ProbeStatus
        from ..sources.bpf import ProbeOptions, ProbeSession, ProbesUnavailable
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
        evs = [{"kind": e.kind, "message": e.message, "wall_ns": e.wall_ns, "facts": e.facts} for e in events]
        end = next((e for e in evs if e["kind"] == "ended"), None)
        if self.worker is not None:
            self.report = self.worker.report
            if self.worker.error and not any(self.worker.error in e["message"] for e in evs):
                evs.append({"kind": "probes-stopped", "message": self.worker.error, "wall_ns": time.time_ns(),
                            "facts": {}})
                self.worker.error = None
        if s is not None and time.monotonic() - self._last_context >= REPORT_EVERY_S:
            self._read_context(s)
            self._last_context = time.monotonic()
        return FeedItem(sample=s, events=evs, report=self.report, mapped_files=self.mapped_files,
                        other_cgroups=self.other_cgroups), end

    def _read_context(self, s) -> None:
        """The target's file mappings (names the files whose pages it uses) and its sibling
        cgroups (names who owns the pages it maps but is not charged for)."""
        from ..sources.procfs import read_maps
        files = []
        for p in s.processes:
            try:
                # maps, not smaps: smaps walks every page table, seconds on a CUDA process
                files += read_maps(p.pid, self.resolver.proc)
            except OSError:
                continue           # exited since the sample
        self.mapped_files = {"files": files}
        t = self.follower.target
        if not t.cgroup_path or t.cgroup_path == "/":
            return
        cgfs = self.follower.sampler.cgfs
        parent = os.path.dirname(t.cgroup_path.rstrip("/")) or "/"
        try:
            with os.scandir(cgfs.directory(parent, t.cgroup_version)) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return
        others = []
        for n in names:
            path = os.path.join(parent, n)
            if path == t.cgroup_path or len(others) >= OTHERS_MAX:
                continue
            try:
                others.append(asdict(cgfs.read(path, t.cgroup_version, notes=[], numa=False, procs=True)))
            except OSError:
                continue
        self.other_cgroups = {"cgroups": others}

    def close(self) -> None:
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


def recording_header(feed: LiveFeed, interval_s: float, kv_fraction: float) -> dict:
    return {"host": asdict(feed.header.host), "capabilities": feed.capabilities,
            "target": dict(feed.header.target, description=feed.target_text()),
            "probes": feed.header.probes, "interval_ns": int(interval_s * 1e9), "argv": sys.argv,
            "started_wall_ns": time.time_ns(), "kv_fraction": kv_fraction, "pid": os.getpid()}


class Recorder:
    """Writes FeedItems into a recording: samples, each new eBPF report, target events."""

    def __init__(self, path: str, header: dict, overwrite: bool = False, max_bytes: Optional[int] = None):
        from ..recording import RecordingWriter
        self.path = path
        self.w = RecordingWriter(path, header, overwrite=overwrite, max_bytes=max_bytes)
        self._report = None
        self._sig: tuple = ()
        self._probes_ns = 0
        self._context: dict = {}

    def write(self, item: FeedItem) -> None:
        from ..events import report_to_dict
        mono = item.sample.mono_ns if item.sample is not None else time.monotonic_ns()
        for e in item.events:
            self.w.add_event(mono, "target", e)
        r = item.report
        if r is not None and r is not self._report:
            self._report = r
            # a report when CUDA memory moved (its calls are only in this one), else every
            # PROBES_STEADY_S: a long recording stays small (docs/record.md)
            sig = tuple((c.pid, c.kind, c.outstanding_bytes) for c in r.cuda or [])
            if sig != self._sig or r.cuda_calls or r.ended_mono_ns - self._probes_ns >= PROBES_STEADY_S * 1e9:
                self.w.add_event(r.ended_mono_ns, "probes", report_to_dict(r))
                self._sig, self._probes_ns = sig, r.ended_mono_ns
        for kind, value in (("mapped_files", item.mapped_files), ("other_cgroups", item.other_cgroups)):
            if value is not None and value is not self._context.get(kind):
                if value != self._context.get(kind):        # written when it changed
                    self.w.add_event(mono, kind, value)
                self._context[kind] = value
        if item.sample is not None:
            self.w.add_sample(item.sample)

    @property
    def samples(self) -> int:
        return self.w.n

    def describe(self) -> str:
        from ..views.fmt import fmt_bytes
        return f"{self.path} {fmt_bytes(self.w.size_bytes())}" + (" FULL" if self.w.full else "")

    def close(self) -> str:
        """Commit and close; returns a one-line summary (and why a -wal is left, if one is)."""
        from ..views.fmt import fmt_bytes
        note = self.w.close()
        size = self.w.size_bytes()
        n = self.w.saved
        per = f", {size / n:.0f} bytes/sample" if n else ""
        lost = f"; {self.w.n - n} samples not written" if self.w.n > n else ""
        return f"recorded {n} samples to {self.path} ({fmt_bytes(size)}{per}){lost}" + (f"; {note}" if note else "")


def parse_size(text: str) -> int:
    """'512M', '1G', '1GiB', '1.5G', '1000000' -> bytes (binary units)."""
    import re
    from fractions import Fraction
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 512M, 1G)")
    return int(Fraction(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
