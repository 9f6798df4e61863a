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

from ..samples import ProcessSample, Sample
from .base_sampler import BaseSampler
from .cgroupfs import cgroup_sample_from_raw, parse_role
from .parse import MalformedFile
from .procfs import STATUS_FIELDS, checked_kv, meminfo_from_kv, pread_all, status_fields
from ..samples import Vmstat


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


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
        why = f"native extension not importable ({e})"
        # setup.py writes why the build failed at install time next to the package
        err = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_native_build_error.txt")
        try:
            with open(err) as f:
                why += f"; the build at install failed: {f.read(500).strip()}"
        except OSError:
            pass
        return False, why
    return True, "native extension loaded"


def open_sampler(**kw) -> BaseSampler:
    ok, _ = native_available()
    if ok:
        from .native import NativeSampler
        return NativeSampler(**kw)
    return PureSampler(**kw)
