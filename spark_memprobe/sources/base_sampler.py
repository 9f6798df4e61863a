"""What both samplers (sampler.py PureSampler, native.py NativeSampler) share: which files to
open, the processes to follow, process identity and owners, the slow detail reads, and when
memory.stat and the status files may be carried from an earlier tick (poll less)."""
from __future__ import annotations

import errno
from typing import Optional

from ..samples import Sample
from .cgroupfs import CgroupFS, list_procs, norm_path, parse_proc_cgroup
from .parse import MalformedFile
from .procfs import parse_status_identity, read_file, read_smaps_rollup

PROCS_MAX = 64     # MP_PROCS_MAX: processes followed per tick


class BaseSampler:
    """What both samplers share: which files to open, process identity, detail reads."""

    kind = "base"

    def __init__(self, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 cgroup: Optional[str] = None, version: Optional[int] = None,
                 pids: Optional[list[int]] = None, nvml: bool = False,
                 stat_max_age_s: Optional[float] = None, host_files: bool = True):
        """stat_max_age_s (poll less, docs/performance.md): when set, a tick whose usage counter
        (memory.current, v1 memory.usage_in_bytes) has not moved since the last tick that read
        memory.stat and the processes' status files, with the same processes, carries their
        values from that tick (with carried_note) while it is younger than stat_max_age_s.
        The age bound exists because some of those values move while the usage stays: pgfault,
        pgmajfault, the active/inactive LRU split, dirty and writeback, a process's VmHWM.
        host_files=False: /proc/meminfo and /proc/vmstat are not read (meminfo and vmstat stay None,
        without a note): for callers that read the host once for many targets (feed/multi.py)."""
        self.proc = proc
        self.host_files = host_files
        self.stat_max_age_s = stat_max_age_s
        self.full_reads = 0           # ticks that read memory.stat and the status files
        self.want_nvml = nvml
        self.cgfs = CgroupFS(cgroup_root)
        self.cgroup = norm_path(cgroup) if cgroup is not None else None
        self.version = version or self.cgfs.layout.memory_version
        self.fixed_pids = pids
        self.cgroup_dir = self.cgfs.directory(self.cgroup, self.version) if self.cgroup else None
        self.cgroup_gone = False
        self._identity: dict[int, tuple] = {}
        self.pids: list[int] = []
        self.pids_truncated = 0

    # -- files ------------------------------------------------------------------
    def cgroup_files(self) -> dict[str, str]:
        """role -> path of the target cgroup's files (empty without a cgroup)."""
        if not self.cgroup_dir:
            return {}
        return {role: f"{self.cgroup_dir}/{name}" for role, name in self.cgfs.files(self.version).items()}

    def discover_pids(self) -> list[int]:
        """The processes to follow: the fixed list, else the cgroup's (recursively)."""
        if self.fixed_pids is not None:
            pids = list(self.fixed_pids)
        elif self.cgroup_dir and not self.cgroup_gone:
            try:
                pids = list_procs(self.cgroup_dir)
            except OSError:
                pids = []
        else:
            pids = []
        self.pids_truncated = max(0, len(pids) - PROCS_MAX)
        return pids[:PROCS_MAX]

    def refresh_pids(self) -> None:
        """Re-list the target's processes (call between ticks, not on every one)."""
        pids = self.discover_pids()
        if pids != self.pids:
            self.pids = pids
            self._apply_pids(pids)

    def _apply_pids(self, pids: list[int]) -> None:
        raise NotImplementedError

    def identity(self, pid: int) -> tuple:
        """(comm, NSpid) of a PID, read once and cached: they do not change per tick."""
        if pid not in self._identity:
            try:
                self._identity[pid] = parse_status_identity(read_file(f"{self.proc}/{pid}/status"))
            except OSError:
                self._identity[pid] = (None, None)
        return self._identity[pid]

    def add_detail(self, s: Sample) -> None:
        """Slow fields for one-off readings (snapshot): numa_stat, cgroup.procs,
        smaps_rollup (it walks every page table of the process: milliseconds)."""
        if s.cgroup is not None and self.cgroup and not self.cgroup_gone:
            try:
                full = self.cgfs.read(self.cgroup, self.version, notes=[], numa=True, procs=True)
                s.cgroup.numa_stat = full.numa_stat
                s.cgroup.procs = full.procs
            except OSError:
                pass
        for p in s.processes:
            try:
                p.smaps_rollup = read_smaps_rollup(p.pid, self.proc, s.notes)
            except (OSError, MalformedFile) as e:
                s.notes.append(f"{self.proc}/{p.pid}/smaps_rollup: {getattr(e, 'reason', None) or e.strerror}")

    def owner(self, pid: int) -> tuple:
        """(memory cgroup path, NSpid) of any host PID, e.g. one NVML lists; cached."""
        key = ("owner", pid)
        if key not in self._identity:
            try:
                cg = self.cgfs.memory_cgroup_of(parse_proc_cgroup(read_file(f"{self.proc}/{pid}/cgroup")))[1]
            except OSError:
                cg = None
            self._identity[key] = (cg, self.identity(pid)[1])
        return self._identity[key]

    def truncated_note(self) -> Optional[str]:
        if self.pids_truncated:
            return (f"{self.pids_truncated} more processes in the cgroup than the "
                    f"{PROCS_MAX} followed per tick; their RSS is not in the sum")
        return None

    def carried_note(self, stat_mono_ns: int) -> str:
        """The note of a tick that carries memory.stat and the status values of the tick at
        stat_mono_ns (its age is the sample's mono_ns minus that)."""
        usage = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return (f"memory.stat and /proc/<pid>/status not read again: values of the read at mono_ns "
                f"{stat_mono_ns}, {usage} unchanged since (read at least every {self.stat_max_age_s:g} s)")

    def finish(self, s: Sample) -> Sample:
        if self.pids_truncated:
            s.notes.append(self.truncated_note())
        for p in s.processes:
            p.comm, p.ns_pids = self.identity(p.pid)
        for g in s.gpus or []:
            for gp in g.processes or []:
                gp.owner_cgroup, gp.ns_pids = self.owner(gp.pid)
        return s

    def note_cgroup_error(self, s: Sample, err: int) -> None:
        # kernfs answers ENODEV on descriptors of a removed cgroup (fs/kernfs/file.c)
        self.cgroup_gone = True
        s.notes.append(f"cgroup {self.cgroup} vanished ({errno.errorcode.get(err, err)}); no cgroup data")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
