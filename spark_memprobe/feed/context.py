"""A target's context, read beside its samples: its file mappings (names the files whose pages
it uses) and its sibling cgroups (names who owns the pages it maps but is not charged for).

/proc/<pid>/maps waits on the process's mmap_lock, so a target can make the read last as long
as it likes: the read runs in a Background call, at most every REPORT_EVERY_S, and its result
is picked up at a later tick. While one read is still running no other starts, and a read
late by more than DEADLINE_S is said once. What stays the same is not read again: siblings are
read once for every target under one parent, a cgroup's memory.stat only when its usage moved,
a target's maps only when its usage or processes changed (docs/performance.md, "Issue 21")."""
from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import asdict
from typing import Optional

from ..samples import Sample
from ..sources.background import Background
from ..sources.cgroupfs import CgroupFS
from ..sources.procfs import read_maps
from ..sources.targets.listing import read_current_bytes
from ..sources.zones import read_kernel_memory

REPORT_EVERY_S = 1.0       # eBPF report, file mappings and other cgroups: at most this often
DEADLINE_S = 5.0           # a context read running longer is said late (once)
OTHERS_MAX = 32            # sibling cgroups read for first-touch owners
STAT_MAX_AGE_S = 30.0      # a cgroup whose usage did not move is read in full at least this often


class Siblings:
    """The first OTHERS_MAX + 1 child cgroups of each parent, read once per REPORT_EVERY_S for
    every target under that parent (the exporter's 200 containers of one /docker share one read
    of 33, not 200 reads of 32), shared between threads. A cgroup is read in full (memory.stat and the
    rest) only when its memory.current (v2) / memory.usage_in_bytes (v1) moved since the last
    full read, or that read is STAT_MAX_AGE_S old (memory.stat items such as dirty or the LRU
    lists change while the usage stays); else its last reading stands. `full_reads` counts them."""

    def __init__(self, cgfs: CgroupFS):
        self.cgfs = cgfs
        self.full_reads = 0
        self._lock = threading.Lock()
        self._parents: dict[tuple, tuple[float, list]] = {}    # (parent, version) -> (read at, [(path, dict)])
        self._last: dict[tuple, tuple] = {}                    # (path, version) -> (usage, read at, dict)

    def read_one(self, path: str, version: Optional[int]) -> Optional[dict]:
        """One cgroup's reading as a CgroupSample dict (None when it is gone)."""
        now = time.monotonic()
        usage = read_current_bytes(self.cgfs.directory(path, version), version)
        last = self._last.get((path, version))
        if last is not None and usage is not None and usage == last[0] and now - last[1] < STAT_MAX_AGE_S:
            return last[2]
        try:
            d = asdict(self.cgfs.read(path, version, notes=[], numa=False, procs=True))
        except OSError:
            self._last.pop((path, version), None)
            return None
        self.full_reads += 1
        self._last[path, version] = (usage, now, d)
        return d

    def of(self, cgroup_path: str, version: Optional[int]) -> Optional[dict]:
        """{"cgroups": [up to OTHERS_MAX siblings of cgroup_path]}, or None when they cannot be listed."""
        parent = os.path.dirname(cgroup_path.rstrip("/")) or "/"
        with self._lock:
            at, children = self._parents.get((parent, version), (float("-inf"), None))
            if children is None or time.monotonic() - at >= REPORT_EVERY_S:
                children = self._read_children(parent, version)
                self._parents[parent, version] = (time.monotonic(), children)
        if children is None:
            return None
        return {"cgroups": [d for path, d in children if path != cgroup_path][:OTHERS_MAX]}

    def _read_children(self, parent: str, version: Optional[int]) -> Optional[list]:
        try:
            with os.scandir(self.cgfs.directory(parent, version)) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return None
        out = []
        for n in names[:OTHERS_MAX + 1]:        # each target lists the first OTHERS_MAX but itself
            path = os.path.join(parent, n)
            d = self.read_one(path, version)
            if d is not None:
                out.append((path, d))
        gone = {k for k in self._last if k[1] == version and os.path.dirname(k[0]) == parent} - \
            {(p, version) for p, _ in out}
        for k in gone:
            del self._last[k]
        return out


def read_mapped_files(pids: list[int], proc: str) -> dict:
    """{"files": [...]}: the files the processes map."""
    files = []
    for pid in pids:
        try:
            # maps, not smaps: smaps walks every page table, seconds on a CUDA process
            files += read_maps(pid, proc)
        except OSError:
            continue           # exited since the sample
    return {"files": files}


class Context:
    """The last context read of one target (None until a read has returned). Siblings are read
    in the caller's thread (cgroup files, which no target can stall; shared through Siblings);
    the file mappings in a Background call, and only when the target's usage or processes
    changed since the last one (or it is STAT_MAX_AGE_S old): an idle target starts no read."""

    def __init__(self, proc: str, siblings: Optional[Siblings] = None):
        """siblings: shared by every target of one feed (feed/multi.py); else this target's own."""
        self.proc = proc
        self.siblings = siblings
        self.deadline_s = DEADLINE_S
        self.mapped_files: Optional[dict] = None
        self.other_cgroups: Optional[dict] = None
        self.maps_reads = 0
        self._call: Optional[Background] = None
        self._started = float("-inf")
        self._maps_state: Optional[tuple] = None       # (usage, pids) at the last maps read, and when
        self._maps_at = float("-inf")

    def poll(self, s: Optional[Sample], target, cgfs: CgroupFS) -> Optional[str]:
        """Take a maps read that has returned; read the siblings and start the next maps read
        when due (never while one runs). Returns a message the first time a read is late."""
        late = None
        c = self._call
        if c is not None and c.done():
            self._call = None
            self.mapped_files = c.result()
            if c.overdue_said:
                self._maps_state = None     # a read that stalled may have missed files: the next one reads again
        elif c is not None and not c.overdue_said and c.age_s() >= self.deadline_s:
            c.overdue_said = True
            late = (f"reading the file mappings of {target.describe()} has not returned in {self.deadline_s:g} s "
                    "(/proc/<pid>/maps waits on a process's mmap_lock): sampling goes on with the last ones read")
        now = time.monotonic()
        if s is None or now - self._started < REPORT_EVERY_S:
            return late
        self._started = now
        if target.cgroup_path and target.cgroup_path != "/":
            if self.siblings is None:
                self.siblings = Siblings(cgfs)
            others = self.siblings.of(target.cgroup_path, target.cgroup_version)
            if others is not None:
                self.other_cgroups = others
        pids = [p.pid for p in s.processes]
        state = (s.cgroup.current_bytes if s.cgroup is not None else None, tuple(pids))
        if self._call is None and (state != self._maps_state or state[0] is None
                                   or now - self._maps_at >= STAT_MAX_AGE_S):
            self._maps_state, self._maps_at = state, now
            self.maps_reads += 1
            proc = self.proc
            self._call = Background(lambda: read_mapped_files(pids, proc), "memprobe-context")
        return late


class HostKernel:
    """The host's page-allocator state (sources/zones.py: zoneinfo, buddyinfo, the watermark
    sysctls, PSI), read at most every REPORT_EVERY_S in the caller's thread (host kernel files,
    0.25 ms with parsing on the CI VM, that no target can stall), and the newest sample at least
    BEFORE_S old, whose /proc/vmstat the ledger compares with (reclaim and compaction stalls)."""

    BEFORE_S = 1.0

    def __init__(self, proc: str):
        self.proc = proc
        self.kernel: Optional[dict] = None
        self._read_at = float("-inf")
        self._recent: collections.deque = collections.deque()

    def poll(self, s: Optional[Sample]) -> None:
        if time.monotonic() - self._read_at >= REPORT_EVERY_S:
            self._read_at = time.monotonic()
            k = read_kernel_memory(self.proc)
            self.kernel = asdict(k) if k is not None else None
        if s is not None:
            q = self._recent
            q.append(s)
            while len(q) >= 2 and s.mono_ns - q[1].mono_ns >= self.BEFORE_S * 1e9:
                q.popleft()

    def before(self, s: Optional[Sample]) -> Optional[Sample]:
        q = self._recent
        if s is None or not q or s.mono_ns - q[0].mono_ns < self.BEFORE_S * 1e9:
            return None
        return q[0]
