"""Names for the numbers the probes give: cgroup ids -> paths, inodes -> file paths, pids ->
comm and memory cgroup, fault addresses -> mappings. Read from the host side only."""
from __future__ import annotations

import os
import stat
import time
from typing import Optional

from ..cgroupfs import CgroupFS, parse_proc_cgroup
from .cuda import MapsEntry, read_maps


def kernel_dev(s_dev: int) -> tuple[int, int]:
    """Kernel-internal dev_t (major << 20 | minor, include/linux/kdev_t.h) -> (major, minor)."""
    return s_dev >> 20, s_dev & ((1 << 20) - 1)


class CgroupIds:
    """cgroup directory inode -> path inside its hierarchy, for one hierarchy root. The inode
    is the kernfs node id: what bpf_get_current_cgroup_id() returns on the v2 hierarchy and
    what the memcg tracepoints carry as `id` on the memory controller's hierarchy."""

    def __init__(self, root: Optional[str]):
        self.root = root
        self.paths: dict[int, str] = {}
        self._scanned = 0.0

    def scan(self) -> None:
        if self.root is None:
            return
        paths = {}
        stack = [self.root]
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d, follow_symlinks=False)
                with os.scandir(d) as it:
                    subs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            rel = os.path.relpath(d, self.root)
            paths[st.st_ino] = "/" if rel == "." else "/" + rel
            stack.extend(subs)
        self.paths.update(paths)          # keep ids of cgroups removed since (still named)
        self._scanned = time.monotonic()

    def path(self, cgid: int) -> Optional[str]:
        if cgid not in self.paths and time.monotonic() - self._scanned > 0.5:
            self.scan()
        return self.paths.get(cgid)

    def ids_under(self, path: str) -> set[int]:
        """Ids of a cgroup and its descendants (by path prefix)."""
        self.scan()
        p = path.rstrip("/") or "/"
        return {i for i, q in self.paths.items() if q == p or p == "/" or q.startswith(p + "/")}


class ProcInfo:
    """comm and cgroups of processes, remembered from when they were alive."""

    def __init__(self, proc: str = "/proc", cgfs: Optional[CgroupFS] = None):
        self.proc = proc
        self.cgfs = cgfs
        self.comm: dict[int, str] = {}
        self.memory_cgroup: dict[int, Optional[str]] = {}
        self.v2_cgroup: dict[int, Optional[str]] = {}
        self.maps: dict[int, list[MapsEntry]] = {}

    def see(self, pid: int, maps: bool = False) -> None:
        if pid not in self.comm:
            try:
                with open(f"{self.proc}/{pid}/comm") as f:
                    self.comm[pid] = f.read().strip()
                with open(f"{self.proc}/{pid}/cgroup", "rb") as f:
                    pc = parse_proc_cgroup(f.read())
                self.v2_cgroup[pid] = pc.get("")
                if self.cgfs is not None:
                    self.memory_cgroup[pid] = self.cgfs.memory_cgroup_of(pc)[1]
            except OSError:
                pass
        if maps:
            try:
                self.maps[pid] = read_maps(pid, self.proc)
            except OSError:
                pass

    def mapping_of(self, pid: int, start: int, end: int) -> Optional[str]:
        """The mapping overlapping [start, end) most (last maps read of the process)."""
        best, best_len = None, 0
        for e in self.maps.get(pid, ()):
            n = min(end, e.end) - max(start, e.start)
            if n > best_len:
                best, best_len = e, n
        if best is None:
            return None
        return best.path or "[anon]"


class InodePaths:
    """(major, minor, inode) -> path, from processes' open files and mappings and from scans
    of directories given by the user. Never follows symlinks while scanning; the fd and maps
    stats go through /proc magic links, which the kernel resolves to the open file itself."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self.paths: dict[tuple[int, int, int], tuple[str, str]] = {}
        self._pid_done: dict[int, float] = {}

    def scan_dir(self, directory: str, limit: int = 500_000) -> int:
        n = 0
        stack = [directory]
        while stack and n < limit:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    self.paths.setdefault((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino),
                                          (e.path, f"scan:{directory}"))
                    n += 1
        return n

    def from_pid(self, pid: int, max_age_s: float = 1.0) -> None:
        if time.monotonic() - self._pid_done.get(pid, 0.0) < max_age_s:
            return
        self._pid_done[pid] = time.monotonic()
        fd_dir = f"{self.proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            fds = []
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                st = os.stat(link)           # the open file itself (magic link)
                if not stat.S_ISREG(st.st_mode):
                    continue
                target = os.readlink(link)
            except OSError:
                continue
            self.paths[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = (target, f"fd of pid {pid}")
        try:
            for e in read_maps(pid, self.proc):
                if e.inode and e.path.startswith("/"):
                    self.paths.setdefault((e.dev_major, e.dev_minor, e.inode), (e.path, f"maps of pid {pid}"))
        except OSError:
            pass

    def lookup(self, major: int, minor: int, inode: int) -> Optional[tuple[str, str]]:
        return self.paths.get((major, minor, inode))
