"""Readers for cgroup memory files, v2 and v1, and cgroup discovery.

`CgroupFS(root="/sys/fs/cgroup")` finds which layout the host uses (pure v2, pure v1,
or hybrid: v1 controllers plus a cgroup2 mount at <root>/unified), where the memory
controller lives, and reads one memory cgroup into a CgroupSample.

cgroup v1 is mapped onto the v2 names only where the meaning is the same
(documented in docs/snapshot.md); v2-only fields stay None on v1.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Optional

from ..samples import CgroupSample, Pressure
from .parse import MalformedFile, parse_numa_stat, parse_pressure, parse_single
from .procfs import checked_kv, read_file

# Which kernel file sits in which role, per version. The native sampler opens the same
# files in the same roles (sources/sampler.py), so both paths see the same bytes.
V2_FILES = {
    "current": "memory.current",
    "peak": "memory.peak",            # Linux 5.19+
    "max": "memory.max",
    "high": "memory.high",
    "swap": "memory.swap.current",    # absent without swap accounting
    "stat": "memory.stat",
    "events": "memory.events",
    "pressure": "memory.pressure",    # needs CONFIG_PSI
}
V1_FILES = {
    "current": "memory.usage_in_bytes",
    "peak": "memory.max_usage_in_bytes",
    "max": "memory.limit_in_bytes",
    "stat": "memory.stat",
    "events": "memory.oom_control",
    "failcnt": "memory.failcnt",
    "kmem": "memory.kmem.usage_in_bytes",
}

# v1 memory.stat total_* (hierarchical, like every v2 memory.stat key) -> v2 name, where
# both count the same node/memcg stat item (mm/memcontrol-v1.c memcg1_stats[] and
# mm/memcontrol.c memory_stats[]). v1 `rss` is NR_ANON_MAPPED, which v2 calls `anon`.
V1_STAT_TO_V2 = {
    "total_cache": "file",
    "total_rss": "anon",
    "total_rss_huge": "anon_thp",
    "total_shmem": "shmem",
    "total_mapped_file": "file_mapped",
    "total_dirty": "file_dirty",
    "total_writeback": "file_writeback",
    "total_swapcached": "swapcached",
    "total_workingset_refault_anon": "workingset_refault_anon",
    "total_workingset_refault_file": "workingset_refault_file",
    "total_pgfault": "pgfault",
    "total_pgmajfault": "pgmajfault",
    "total_inactive_anon": "inactive_anon",
    "total_active_anon": "active_anon",
    "total_inactive_file": "inactive_file",
    "total_active_file": "active_file",
    "total_unevictable": "unevictable",
}

# v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes, rounded down to a page:
# 9223372036854771712 on 4 KiB pages, 9223372036854710272 on 64 KiB pages (PAGE_COUNTER_MAX is
# LONG_MAX / PAGE_SIZE: mm/page_counter.c, include/linux/page_counter.h). The floor lies far below
# the value for every page size up to 64 KiB, and far above any real limit.
V1_UNLIMITED_FLOOR = (2**63 - 1) // 65536 * 4096


@dataclass
class CgroupLayout:
    mode: str                          # "v2", "v1", "hybrid" or "none"
    v2_root: Optional[str]             # where the cgroup2 hierarchy is mounted
    v1_memory_root: Optional[str]      # where the v1 memory controller is mounted
    memory_version: Optional[int]      # which one holds the memory controller


def norm_path(path: str) -> str:
    """A cgroup path inside its hierarchy: absolute, normalised, "/" for the root.
    (os.path.normpath keeps a leading "//", POSIX allows it; cgroup paths never mean it.)"""
    p = os.path.normpath("/" + path.strip("/"))
    return "/" + p.lstrip("/")


def detect_layout(root: str = "/sys/fs/cgroup") -> CgroupLayout:
    """Decide from the files under root (no mount table needed, so fixture trees work)."""
    if os.path.exists(f"{root}/cgroup.controllers"):
        try:
            ctrls = read_file(f"{root}/cgroup.controllers").split()
        except OSError:
            ctrls = []
        return CgroupLayout("v2", root, None, 2 if b"memory" in ctrls else None)
    v1mem = f"{root}/memory" if os.path.exists(f"{root}/memory/memory.usage_in_bytes") else None
    v2 = f"{root}/unified" if os.path.exists(f"{root}/unified/cgroup.controllers") else None
    if v1mem and v2:
        return CgroupLayout("hybrid", v2, v1mem, 1)
    if v1mem:
        return CgroupLayout("v1", None, v1mem, 1)
    if v2:
        return CgroupLayout("v2", v2, None, None)
    return CgroupLayout("none", None, None, None)


def parse_proc_cgroup(data: bytes) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {"": v2 path, "memory": v1 path, "name=systemd": ...}.
    A v1 line lists its controllers comma-separated; each gets the path."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            out[""] = path
        else:
            for c in ctrls.split(","):
                out[c] = path
    return out


def cgroup_id(directory: str) -> int:
    """cgroup v2 id of a cgroup directory: its inode number, which is the kernfs node id
    that bpf_get_current_cgroup_id() returns (include/linux/kernfs.h kernfs_ino)."""
    return os.stat(directory, follow_symlinks=False).st_ino


def _read_procs(directory: str) -> list[int]:
    data = read_file(f"{directory}/cgroup.procs")
    return [int(x) for x in data.split()]


def list_procs(directory: str, recursive: bool = True) -> list[int]:
    """PIDs in a cgroup and (recursively) its descendants. The top cgroup must be
    readable; descendants that vanish during the walk are skipped (a cgroup can be
    removed at any moment)."""
    pids = _read_procs(directory)
    stack = [directory] if recursive else []
    while stack:
        d = stack.pop()
        try:
            if os.stat(d, follow_symlinks=False).st_nlink == 2:
                continue           # no subdirectory: kernfs counts 2 + subdirectories (fs/kernfs/inode.c; btrfs says 1)
            with os.scandir(d) as it:
                children = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for c in children:
            try:
                pids.extend(_read_procs(c))
            except (OSError, ValueError):
                continue
            stack.append(c)
    return sorted(set(pids))


def parse_role(role: str, path: str, data: bytes, notes: list[str]):
    """Parse one cgroup file by its role; None (with a note) where the text is unusable."""
    if role in ("stat", "events"):
        try:
            return checked_kv(path, data, notes).values
        except MalformedFile as e:
            notes.append(f"{path}: {e.reason}")
            return None
    v = parse_pressure(data) if role == "pressure" else parse_single(data)
    if v is None:
        notes.append(f"{path}: not in the expected format; left empty")
    return v


def _limit(v, version: int):
    if v is None:
        return None
    if version == 1 and isinstance(v, int) and v >= V1_UNLIMITED_FLOOR:
        return "max"
    return v


def cgroup_sample_from_raw(path: str, version: int, raw: dict) -> CgroupSample:
    """Build a CgroupSample from per-role readings (None where a role could not be read).
    Used by both the pure-Python reader and the native sampler, so both map identically.
    raw keys: current, peak, max, high, swap, failcnt, kmem (ints or "max"), stat and events
    (dict), pressure (dict from parse_pressure), numa (dict "key:node" -> bytes), procs."""
    s = CgroupSample(path=path, version=version)
    s.current_bytes = raw.get("current")
    s.peak_bytes = raw.get("peak")
    s.max_bytes = _limit(raw.get("max"), version)
    s.procs = raw.get("procs")
    stat = raw.get("stat")
    events = raw.get("events")
    if version == 2:
        s.high_bytes = raw.get("high")
        s.swap_current_bytes = raw.get("swap")
        s.stat = stat
        s.events = events
        p = raw.get("pressure")
        s.pressure = Pressure(**p) if p else None
        numa = raw.get("numa")
        if numa is not None:
            s.numa_stat = {}
            for k, v in numa.items():
                key, node = k.rsplit(":", 1)
                s.numa_stat.setdefault(key, {})[int(node)] = v
    else:
        s.v1_stat = stat
        if stat is not None:
            s.stat = {v2: stat[v1] for v1, v2 in V1_STAT_TO_V2.items() if v1 in stat}
            if raw.get("kmem") is not None:
                # v1 kmem page counter is charged exactly where v2 counts MEMCG_KMEM
                # (mm/memcontrol.c memcg_account_kmem), so it is v2's `kernel`.
                s.stat["kernel"] = raw["kmem"]
            s.swap_current_bytes = stat.get("total_swap")   # only with swap accounting
        ev = {}
        if raw.get("failcnt") is not None:
            # failcnt and v2 events "max" both count failed page_counter charges
            # (mm/page_counter.c page_counter_try_charge, mm/memcontrol.c try_charge_memcg)
            ev["max"] = raw["failcnt"]
        if events is not None and "oom_kill" in events:
            ev["oom_kill"] = events["oom_kill"]   # memory.oom_control, Linux 4.13+
        s.events = ev or None
    return s


class CgroupFS:
    """One host's cgroup filesystem, rooted at `root` (a parameter so tests can use
    captured trees)."""

    def __init__(self, root: str = "/sys/fs/cgroup"):
        self.root = root
        self.layout = detect_layout(root)

    def memory_root(self, version: Optional[int] = None) -> Optional[str]:
        v = version or self.layout.memory_version
        return self.layout.v2_root if v == 2 else self.layout.v1_memory_root if v == 1 else None

    def directory(self, path: str, version: Optional[int] = None) -> str:
        base = self.memory_root(version)
        if base is None:
            raise FileNotFoundError(errno.ENOENT, "no memory cgroup hierarchy under", self.root)
        rel = norm_path(path).lstrip("/")
        return os.path.join(base, rel) if rel else base

    def files(self, version: int) -> dict[str, str]:
        return V2_FILES if version == 2 else V1_FILES

    def memory_cgroup_of(self, proc_cgroup: dict[str, str]) -> tuple[Optional[int], Optional[str]]:
        """(version, path) of the memory cgroup named in a parsed /proc/<pid>/cgroup."""
        v = self.layout.memory_version
        if v == 2:
            return 2, proc_cgroup.get("")
        if v == 1:
            return 1, proc_cgroup.get("memory")
        return None, None

    def read(self, path: str, version: Optional[int] = None, notes: Optional[list[str]] = None,
             numa: bool = True, procs: bool = True) -> CgroupSample:
        """Read every memory file of one cgroup. A file that is missing or malformed leaves
        its field None and adds a note; if the cgroup directory itself is gone this raises
        FileNotFoundError."""
        version = version or self.layout.memory_version
        d = self.directory(path, version)
        if not os.path.isdir(d):
            raise FileNotFoundError(errno.ENOENT, "cgroup not found", d)
        notes = notes if notes is not None else []
        raw: dict = {}
        for role, name in self.files(version).items():
            fpath = f"{d}/{name}"
            try:
                raw[role] = parse_role(role, fpath, read_file(fpath), notes)
            except FileNotFoundError:
                notes.append(f"{fpath}: missing")
            except OSError as e:
                notes.append(f"{fpath}: {os.strerror(e.errno or 0)}")
        if version == 2 and numa:
            fpath = f"{d}/memory.numa_stat"
            try:
                kv = parse_numa_stat(read_file(fpath))
                raw["numa"] = kv.values if kv.values else None
                if kv.bad_lines:
                    notes.append(f"{fpath}: skipped {kv.bad_lines} malformed line(s)")
            except OSError as e:
                notes.append(f"{fpath}: {os.strerror(e.errno or 0)}")
        if procs:
            try:
                raw["procs"] = _read_procs(d)
            except (OSError, ValueError) as e:
                notes.append(f"{d}/cgroup.procs: {e}")
        return cgroup_sample_from_raw(norm_path(path), version, raw)
