"""Following one resolved target over time: a sample per tick, and the target's events (its
cgroup re-created by a restart, moved, gone for a while, ended)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..sources.sampler import open_sampler
from ..sources.targets.resolver import Resolver, Target, pid_starttime


@dataclass
class FollowEvent:
    kind: str                 # "cgroup-changed", "waiting", "ended"
    message: str
    wall_ns: int = 0
    facts: dict = field(default_factory=dict)


class Follower:
    """Samples one target per tick and keeps hold of it: a cgroup that is re-created
    (container restart) is reopened with a note, one that goes away ends the follow with a
    final event. The caller drives tick() at its own pace (feed/live.py, feed/multi.py)."""

    def __init__(self, resolver: Resolver, target: Target, exit_grace_s: float = 2.0,
                 sampler_factory: Optional[Callable] = None, stat_max_age_s: Optional[float] = None):
        """stat_max_age_s: the sampler's poll-less bound (sources/base_sampler.py); None reads
        memory.stat and the status files every tick."""
        self.r = resolver
        self.stat_max_age_s = stat_max_age_s
        self.target = target
        self.exit_grace_s = exit_grace_s
        self._factory = sampler_factory or open_sampler
        self.sampler = None
        self.samples = 0
        self.last_sample = None
        self._lost_since: Optional[float] = None
        self._waiting_said = ""
        self._open()

    def _open(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        t = self.target
        self.sampler = self._factory(proc=self.r.proc, cgroup_root=self.r.cgroup_root, cgroup=t.cgroup_path,
                                     version=t.cgroup_version, pids=t.pids, stat_max_age_s=self.stat_max_age_s)

    def _still_there(self) -> bool:
        t = self.target
        if t.kind == "pid":
            st = pid_starttime(t.pids[0], self.r.proc)
            return st is not None and st == t.labels.get("starttime", st)
        if not t.cgroup_dir:
            return False
        try:
            return os.stat(t.cgroup_dir, follow_symlinks=False).st_ino == t.cgroup_ino
        except OSError:
            return False

    def tick(self, full: bool = False) -> tuple[Optional[object], list[FollowEvent]]:
        """One step: (sample or None, events). An event of kind "ended" is the last one.
        full: read memory.stat and the status files even where stat_max_age_s would carry them."""
        events: list[FollowEvent] = []
        if self._still_there():
            self.sampler.refresh_pids()
            s = self.sampler.sample(full=full)
            if not (self.target.cgroup_path and s.cgroup is None and self.sampler.cgroup_gone):
                self._lost_since = None
                self.samples += 1
                self.last_sample = s
                return s, events
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = now
        status, nt, msg, facts = self.r.recheck(self.target)
        if status == "running" and nt is not None and self.target.kind != "pid":
            old = self.target
            if nt.cgroup_path != old.cgroup_path or nt.cgroup_ino != old.cgroup_ino:
                who = old.describe().split(" in memory cgroup")[0]
                if nt.cgroup_path == old.cgroup_path:
                    msg = (f"{who} restarted: its cgroup {nt.cgroup_path} was re-created (inode {old.cgroup_ino} "
                           f"-> {nt.cgroup_ino}); following the new one")
                else:
                    msg = f"{who} moved to cgroup {nt.cgroup_path} (was {old.cgroup_path}); following the new one"
                events.append(FollowEvent("cgroup-changed", msg, time.time_ns(),
                                          {"old_cgroup": old.cgroup_path, "new_cgroup": nt.cgroup_path,
                                           "old_ino": old.cgroup_ino, "new_ino": nt.cgroup_ino,
                                           "processes": [asdict(p) for p in nt.processes], **facts}))
                self.target = nt
                self._open()
            self._lost_since = None
            # sample the (possibly new) cgroup now; if it vanished again, the next tick asks again
            if self._still_there():
                self.sampler.refresh_pids()
                s = self.sampler.sample()
                if s.cgroup is not None or not self.target.cgroup_path:
                    self.samples += 1
                    self.last_sample = s
                    return s, events
            return None, events
        grace = 0.0 if self.target.kind == "pid" else self.exit_grace_s
        if status == "ended" and now - self._lost_since < grace:
            status, msg = "waiting", f"{msg}; waiting {self.exit_grace_s:g} s for a restart"
        if status == "ended":
            facts = dict(facts)
            if self.last_sample is not None and self.last_sample.cgroup is not None:
                ev = self.last_sample.cgroup.events or {}
                if ev.get("oom_kill") is not None:
                    facts["last_oom_kill_events"] = ev["oom_kill"]
            if facts.get("last_oom_kill_events"):
                msg += f"; memory.events oom_kill was {facts['last_oom_kill_events']} at the last sample"
            events.append(FollowEvent("ended", msg, time.time_ns(), facts))
            return None, events
        if msg and msg != self._waiting_said:
            self._waiting_said = msg
            events.append(FollowEvent("waiting", msg, time.time_ns(), facts))
        return None, events

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
