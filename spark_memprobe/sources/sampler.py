"""Samplers: read host + one memory cgroup + its processes into a Sample.

Two implementations with one interface and the same answers (parity tests):
  - NativeSampler (sources/native.py): the C extension, pread into fixed buffers,
    optionally in a native thread at up to kHz rates;
  - PureSampler (here): the same files, the same descriptors kept open, parsed in Python.
`open_sampler()` picks the native one unless it is missing or MEMPROBE_PUREPYTHON=1.
"""
from __future__ import annotations

import errno
import os
import time
from typing import Optional

from ..samples import ProcessSample, Sample
from .cgroupfs import CgroupFS, cgroup_sample_from_raw, list_procs, norm_path, parse_proc_cgroup, parse_role
from .parse import MalformedFile
from .procfs import (STATUS_FIELDS, checked_kv, meminfo_from_kv, parse_status_identity,
                     pread_all, read_file, read_smaps_rollup, status_fields)
from ..samples import Vmstat

PROCS_MAX = 64     # MP_PROCS_MAX: processes followed per tick


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


class BaseSampler:
    """What both samplers share: which files to open, process identity, detail reads."""

    kind = "base"

    def __init__(self, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 cgroup: Optional[str] = None, version: Optional[int] = None,
                 pids: Optional[list[int]] = None, nvml: bool = False):
        self.proc = proc
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

    def finish(self, s: Sample) -> Sample:
        if self.pids_truncated:
            s.notes.append(f"{self.pids_truncated} more processes in the cgroup than the "
                           f"{PROCS_MAX} followed per tick; their RSS is not in the sum")
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


class PureSampler(BaseSampler):
    """The pure-Python sampler: descriptors opened once, re-read with pread at offset 0."""

    kind = "pure-python"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fds: dict[str, int] = {}
        self.open_errors: dict[str, int] = {}
        for role, path in [("meminfo", f"{self.proc}/meminfo"), ("vmstat", f"{self.proc}/vmstat")] + \
                [(f"cg_{r}", p) for r, p in self.cgroup_files().items()]:
            try:
                self.fds[role] = _open(path)
            except OSError as e:
                self.open_errors[role] = e.errno
        self.pid_fds: dict[int, int] = {}
        self.nvml = None
        if self.want_nvml:
            from .nvml import NvmlReader
            self.nvml = NvmlReader()
        self.refresh_pids()

    def _apply_pids(self, pids: list[int]) -> None:
        for fd in self.pid_fds.values():
            os.close(fd)
        self.pid_fds = {}
        for pid in pids:
            try:
                self.pid_fds[pid] = _open(f"{self.proc}/{pid}/status")
            except OSError:
                self.pid_fds[pid] = -1

    def _read(self, role: str) -> bytes:
        if role not in self.fds:
            raise OSError(self.open_errors.get(role, errno.EBADF), "not open")
        return pread_all(self.fds[role])

    def sample(self, detail: bool = False) -> Sample:
        s = Sample(mono_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        for role in ("meminfo", "vmstat"):
            path = f"{self.proc}/{role}"
            try:
                kv = checked_kv(path, self._read(role), s.notes)
                if role == "meminfo":
                    s.meminfo = meminfo_from_kv(kv)
                else:
                    s.vmstat = Vmstat(counters=kv.values)
            except (OSError, MalformedFile) as e:
                s.notes.append(f"{path}: {getattr(e, 'reason', None) or os.strerror(e.errno or 0)}")
        if self.cgroup is not None:
            s.cgroup = self._sample_cgroup(s)
        for pid in self.pids:
            s.processes.append(self._sample_pid(pid, s))
        if self.nvml is not None:
            if self.nvml.error:
                s.notes.append(f"NVML not read: {self.nvml.error}")   # gpus stay None: not read
            else:
                s.gpus = self.nvml.read()
        s.read_ns = time.monotonic_ns() - s.mono_ns
        if detail:
            self.add_detail(s)
        return self.finish(s)

    def _sample_cgroup(self, s: Sample):
        if self.cgroup_gone:
            self.note_cgroup_error(s, errno.ENODEV)
            return None
        raw: dict = {}
        for role, path in self.cgroup_files().items():
            try:
                data = self._read(f"cg_{role}")
            except OSError as e:
                if e.errno == errno.ENODEV or not os.path.isdir(self.cgroup_dir):
                    self.note_cgroup_error(s, errno.ENODEV)
                    return None
                s.notes.append(f"{path}: {os.strerror(e.errno)}")
                continue
            raw[role] = parse_role(role, path, data, s.notes)
        return cgroup_sample_from_raw(self.cgroup, self.version, raw)

    def _sample_pid(self, pid: int, s: Sample) -> ProcessSample:
        fd = self.pid_fds.get(pid, -1)
        path = f"{self.proc}/{pid}/status"
        try:
            if fd < 0:
                raise ProcessLookupError(errno.ESRCH, "gone")
            kv = checked_kv(path, pread_all(fd), s.notes, wanted=STATUS_FIELDS)
            return ProcessSample(pid=pid, **status_fields(kv.values))
        except OSError as e:
            s.notes.append(f"process {pid}: {os.strerror(e.errno or errno.ESRCH)}")
            return ProcessSample(pid=pid)

    def close(self) -> None:
        for fd in list(self.fds.values()) + [fd for fd in self.pid_fds.values() if fd >= 0]:
            os.close(fd)
        self.fds, self.pid_fds = {}, {}
        if self.nvml is not None:
            self.nvml.close()
            self.nvml = None


def native_available() -> tuple[bool, str]:
    """(usable, why): whether the C extension can be used, and the reason if not."""
    if os.environ.get("MEMPROBE_PUREPYTHON") == "1":
        return False, "MEMPROBE_PUREPYTHON=1 forces the pure-Python readers"
    try:
        from . import native  # noqa: F401
    except ImportError as e:
        return False, f"native extension not importable ({e})"
    return True, "native extension loaded"


def open_sampler(**kw) -> BaseSampler:
    ok, _ = native_available()
    if ok:
        from .native import NativeSampler
        return NativeSampler(**kw)
    return PureSampler(**kw)
