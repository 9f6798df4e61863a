"""Many targets at once, the set `memprobe export` follows: fixed TARGETs, or every running
container and pod listed again every `relist_s`. Each is a Follower plus its context; a cycle
samples them all and builds one ledger each, through the same ledger_inputs as the screen.
No HTTP and no metrics here (cli/export.py)."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from ..ledger import Ledger, LedgerInputs, build_ledger
from ..samples import HostInfo, Sample
from ..sources.sampler import open_sampler
from ..sources.targets.listing import list_targets
from ..sources.targets.paths import TargetError
from ..sources.targets.resolver import Resolver, Target, target_to_dict
from ..sources.cgroupfs import CgroupFS
from .context import STAT_MAX_AGE_S, Context, HostKernel, Siblings
from .follow import Follower
from .items import FeedHeader, FeedItem, ledger_inputs


@dataclass
class Watched:
    """One target being followed: its Follower, and how it was asked for."""
    key: str                              # the TARGET as given, or "container:<id>" / "pod:<uid>"
    follower: Follower
    label: str                            # what the exporter calls it (its `target` label)
    fixed: bool
    context: Context
    described: tuple = (None, None)       # (the Target, its target_to_dict): rebuilt when the Follower's changes


@dataclass
class Reading:
    """One target at one cycle."""
    watched: Watched
    item: FeedItem
    inputs: LedgerInputs
    ledger: Ledger


class TargetSet:
    """say(key, message) is told what happens to each target (the caller logs it when it
    changed); error(stage, exception) is told what failed ("sample" or "ledger") for one
    target, which is then left out of that cycle."""

    def __init__(self, proc: str, cgroup_root: str, queries: list[str], all_containers: bool, relist_s: float,
                 kv_fraction: float, say: Callable[[str, str], None], error: Callable[[str, BaseException], None]):
        self.proc = proc
        self.cgroup_root = cgroup_root
        self.queries = queries
        self.all_containers = all_containers
        self.relist_s = relist_s
        self.kv_fraction = kv_fraction
        self.say = say
        self.error = error
        self.watched: dict[str, Watched] = {}
        self.changes = {"added": 0, "removed": 0}
        self.engines = None
        self._last_relist = float("-inf")
        self._last_connect = float("-inf")
        self.host_kernel = HostKernel(proc)
        self.siblings = Siblings(CgroupFS(cgroup_root))     # read once for all the targets under one parent

    def resolver(self) -> Resolver:
        """A fresh Resolver (no cached listing or /proc scan) over the engines connected once.
        When none answered, they are asked again at most every relist_s (an engine started
        after the exporter is found then)."""
        now = time.monotonic()
        if self.engines is None or (not self.engines and now - self._last_connect >= self.relist_s):
            self._last_connect = now
            r = Resolver(proc=self.proc, cgroup_root=self.cgroup_root)
            self.engines = r.engines()
            return r
        return Resolver(proc=self.proc, cgroup_root=self.cgroup_root, engines=self.engines)

    def unresolved(self) -> Iterator[tuple[str, TargetError]]:
        """Each TARGET that does not resolve now, with why."""
        r = self.resolver()
        for q in self.queries:
            try:
                r.resolve(q)
            except TargetError as e:
                yield q, e

    # -- the set ---------------------------------------------------------------------------
    def add(self, key: str, target: Target, label: str, fixed: bool) -> Watched:
        # exit_grace_s=0: a target that went away is dropped at once and looked for again
        # (fixed TARGETs every cycle, containers at the next listing), so no stale series linger
        # poll less: an idle target's memory.stat is carried; the host's meminfo and vmstat are read
        # once for all targets by the caller (sample(host_sample=...), feed/flight.py)
        f = Follower(self.resolver(), target, exit_grace_s=0.0,
                     sampler_factory=functools.partial(open_sampler, host_files=False), stat_max_age_s=STAT_MAX_AGE_S)
        w = self.watched[key] = Watched(key, f, label, fixed, Context(self.proc, self.siblings))
        self.changes["added"] += 1
        self.say(key, f"following {target.describe()}")
        return w

    def remove(self, key: str, why: str) -> None:
        w = self.watched.pop(key, None)
        if w is None:
            return
        try:
            w.follower.close()
        finally:
            self.changes["removed"] += 1
            self.say(key, f"{w.label}: {why}; its series are gone until it comes back")

    def update(self) -> None:
        """Look again for the fixed TARGETs not followed now, and list containers when due."""
        if self.queries:
            self._update_fixed()
        if self.all_containers:
            self._relist()

    def _update_fixed(self) -> None:
        missing = [q for q in self.queries if q not in self.watched]
        if not missing:
            return
        r = self.resolver()
        for q in missing:
            try:
                t = r.resolve(q)
            except TargetError as e:
                self.say(q, f"{q}: {e}")
                continue
            if t.cgroup_path is None and not t.pids:
                self.say(q, f"{q}: {t.describe()}: nothing to sample")
                continue
            self.add(q, t, q, fixed=True)

    def _relist(self) -> None:
        now = time.monotonic()
        if now - self._last_relist < self.relist_s:
            return
        self._last_relist = now
        r = self.resolver()
        want = {}
        for lt in list_targets(r, all=False, units=False):
            if lt.kind not in ("container", "pod") or lt.state != "running" or not lt.cgroup_path or not lt.id:
                continue
            want[f"{lt.kind}:{lt.id}"] = lt
        for key in [k for k, w in self.watched.items() if not w.fixed and k not in want]:
            self.remove(key, "no longer listed")
        for key, lt in want.items():
            if key in self.watched:
                continue
            if lt.kind == "container" and lt.source == "engine" and lt.engine in ("docker", "podman", "containerd"):
                q = f"{lt.engine}:{lt.id}"
            elif lt.kind == "pod":
                q = f"pod:{lt.id}"
            else:
                q = f"cgroup:{lt.cgroup_path}"
            try:
                t = r.resolve(q)
            except TargetError as e:
                self.say(key, f"{key}: {e}")
                continue
            t.kind = lt.kind                 # a container found by its cgroup path resolves as a cgroup
            t.id = t.id or lt.id
            # found by path while its engine still lists it as not running (the moment of a
            # `docker start`): the engine's name for it, if any engine knows it
            t.name = t.name or lt.name or t.labels.get("container_name")
            t.engine = t.engine or lt.engine
            label = t.name or (lt.id[:12] if lt.kind == "container" else lt.id)
            self.add(key, t, label, fixed=False)

    # -- one cycle -------------------------------------------------------------------------
    def sample(self, host: HostInfo, gpus, report, host_sample: Optional[Sample] = None) -> list[Reading]:
        """Sample every target once: one Reading each that is there now. gpus (NVML, read once
        for the host) and host_sample's meminfo and vmstat (the targets' samplers do not read
        them) go into every sample; report is the eBPF report of this cycle, or None.
        A target that ended is removed; one that is away for now (restarting) is left out.
        The host's page-allocator state is what the caller last polled into host_kernel (the
        exporter does it with its host sample, once a cycle)."""
        out = []
        for key, w in list(self.watched.items()):
            try:
                s, events = w.follower.tick()
            except Exception as e:  # noqa: BLE001 - one target's failure leaves the others
                self.error("sample", e)
                continue
            ended = next((e for e in events if e.kind == "ended"), None)
            for e in events:
                if e.kind != "ended":
                    self.say(key, f"{w.label}: {e.message}")
            if ended is not None:
                self.remove(key, ended.message)
                continue
            if s is None:
                continue
            try:
                if gpus is not None:
                    s.gpus = gpus
                if host_sample is not None:
                    s.meminfo, s.vmstat = host_sample.meminfo, host_sample.vmstat
                late = w.context.poll(s, w.follower.target, w.follower.sampler.cgfs)
                if late:
                    self.say(f"{key}:context", f"{w.label}: {late}")
                out.append(self.reading(w, s, host, report))
            except Exception as e:  # noqa: BLE001
                self.error("ledger", e)
        return out

    def reading(self, w: Watched, s: Sample, host: HostInfo, report) -> Reading:
        """The ledger of one target's sample, with the target's last context and the report."""
        item = FeedItem(sample=s, report=report, mapped_files=w.context.mapped_files,
                        other_cgroups=w.context.other_cgroups, kernel=self.host_kernel.kernel,
                        before=self.host_kernel.before(s))
        t = w.follower.target
        if w.described[0] is not t:
            w.described = (t, target_to_dict(t))
        header = FeedHeader(host=host, target=w.described[1], probes=None)
        inputs = ledger_inputs(item, header)
        return Reading(w, item, inputs, build_ledger(host, s, inputs, kv_fraction=self.kv_fraction))

    def close(self) -> None:
        for key in list(self.watched):
            try:
                self.watched.pop(key).follower.close()
            except Exception:  # noqa: BLE001
                pass
        for e in self.engines or []:
            try:
                e.close()
            except Exception:  # noqa: BLE001
                pass
