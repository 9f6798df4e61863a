"""A target's context, read beside its samples: its file mappings (names the files whose pages
it uses) and its sibling cgroups (names who owns the pages it maps but is not charged for).

/proc/<pid>/maps waits on the process's mmap_lock, so a target can make the read last as long
as it likes: the read runs in a Background call, at most every REPORT_EVERY_S, and its result
is picked up at a later tick. While one read is still running no other starts, and a read
late by more than DEADLINE_S is said once."""
from __future__ import annotations

import collections
import os
import time
from dataclasses import asdict
from typing import Optional

from ..samples import Sample
from ..sources.background import Background
from ..sources.cgroupfs import CgroupFS
from ..sources.procfs import read_maps
from ..sources.zones import read_kernel_memory

REPORT_EVERY_S = 1.0       # eBPF report, file mappings and other cgroups: at most this often
DEADLINE_S = 5.0           # a context read running longer is said late (once)
OTHERS_MAX = 32            # sibling cgroups read for first-touch owners


def read_context(pids: list[int], proc: str, cgfs: CgroupFS, cgroup_path: Optional[str],
                 version: Optional[int]) -> tuple[dict, Optional[dict]]:
    """({"files": [...]}, {"cgroups": [...]} or None when the siblings could not be listed or
    the target has no cgroup of its own)."""
    files = []
    for pid in pids:
        try:
            # maps, not smaps: smaps walks every page table, seconds on a CUDA process
            files += read_maps(pid, proc)
        except OSError:
            continue           # exited since the sample
    if not cgroup_path or cgroup_path == "/":
        return {"files": files}, None
    parent = os.path.dirname(cgroup_path.rstrip("/")) or "/"
    try:
        with os.scandir(cgfs.directory(parent, version)) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return {"files": files}, None
    others = []
    for n in names:
        path = os.path.join(parent, n)
        if path == cgroup_path or len(others) >= OTHERS_MAX:
            continue
        try:
            others.append(asdict(cgfs.read(path, version, notes=[], numa=False, procs=True)))
        except OSError:
            continue
    return {"files": files}, {"cgroups": others}


class Context:
    """The last context read of one target (None until a read has returned)."""

    def __init__(self, proc: str):
        self.proc = proc
        self.deadline_s = DEADLINE_S
        self.mapped_files: Optional[dict] = None
        self.other_cgroups: Optional[dict] = None
        self._call: Optional[Background] = None
        self._started = float("-inf")

    def poll(self, s: Optional[Sample], target, cgfs: CgroupFS) -> Optional[str]:
        """Take a read that has returned; start the next one when due (never while one runs).
        Returns a message the first time a read is late."""
        c = self._call
        if c is not None:
            if not c.done():
                if not c.overdue_said and c.age_s() >= self.deadline_s:
                    c.overdue_said = True
                    return (f"reading the file mappings and sibling cgroups of {target.describe()} has not "
                            f"returned in {self.deadline_s:g} s (/proc/<pid>/maps waits on a process's mmap_lock): "
                            "sampling goes on with the last ones read")
                return None
            self._call = None
            files, others = c.result()
            self.mapped_files = files
            if others is not None:
                self.other_cgroups = others
        if s is not None and time.monotonic() - self._started >= REPORT_EVERY_S:
            pids, proc = [p.pid for p in s.processes], self.proc
            path, version = target.cgroup_path, target.cgroup_version
            self._call = Background(lambda: read_context(pids, proc, cgfs, path, version), "memprobe-context")
            self._started = time.monotonic()
        return None


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
