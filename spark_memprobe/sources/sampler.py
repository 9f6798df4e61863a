"""Samplers: read host + one memory cgroup + its processes into a Sample.

Two implementations with one interface and the same answers (parity tests):
  - NativeSampler (sources/native.py): the C extension, pread into fixed buffers,
    optionally in a native thread at up to kHz rates;
  - PureSampler (here): the same files, the same descriptors kept open, parsed in Python.
`open_sampler()` picks the native one unless it is missing or MEMPROBE_PUREPYTHON=1.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import time
from typing import Optional, Union

from ..samples import ProcessSample, Sample
from .base_sampler import BaseSampler
from .cgroupfs import cgroup_sample_from_raw, parse_role
from .parse import MalformedFile, parse_single
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
        host = [("meminfo", f"{self.proc}/meminfo"), ("vmstat", f"{self.proc}/vmstat")] if self.host_files else []
        for role, path in host + [(f"cg_{r}", p) for r, p in self.cgroup_files().items()]:
            try:
                self.fds[role] = _open(path)
            except OSError as e:
                self.open_errors[role] = e.errno
        self.pid_fds: dict[int, int] = {}
        self._full: Optional[tuple] = None     # (usage, mono_ns, memory.stat, processes) of the last full tick
        self.nvml = None
        if self.want_nvml:
            from .nvml import NvmlReader
            self.nvml = NvmlReader()
        self.refresh_pids()

    def _apply_pids(self, pids: list[int]) -> None:
        self._full = None              # other processes: the next tick reads in full
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

    def sample(self, detail: bool = False, full: bool = False) -> Sample:
        """One tick. full (or detail): read memory.stat and the status files whatever the usage."""
        if full or detail:
            self._full = None
        s = Sample(mono_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        for role in ("meminfo", "vmstat") if self.host_files else ():
            path = f"{self.proc}/{role}"
            try:
                kv = checked_kv(path, self._read(role), s.notes)
                if role == "meminfo":
                    s.meminfo = meminfo_from_kv(kv)
                else:
                    s.vmstat = Vmstat(counters=kv.values)
            except (OSError, MalformedFile) as e:
                s.notes.append(f"{path}: {getattr(e, 'reason', None) or os.strerror(e.errno or 0)}")
        carried = None
        if self.cgroup is not None:
            s.cgroup, carried = self._sample_cgroup(s)
        if carried is not None:
            s.processes = [dataclasses.replace(p) for p in carried]   # finish() writes into them
        else:
            self.full_reads += 1
            n = len(s.notes)
            s.processes = [self._sample_pid(pid, s) for pid in self.pids]
            if self._full is not None:
                # kept only when every status file read cleanly (csrc/sampler.c keep_full)
                self._full = self._full + (s.processes,) if len(s.notes) == n else None
        if self.nvml is not None:
            if self.nvml.error:
                s.notes.append(f"NVML not read: {self.nvml.error}")   # gpus stay None: not read
            else:
                s.gpus = self.nvml.read()
        s.read_ns = time.monotonic_ns() - s.mono_ns
        if detail:
            self.add_detail(s)
        return self.finish(s)

    def _try_read(self, role: str) -> Union[bytes, OSError]:
        try:
            return self._read(f"cg_{role}")
        except OSError as e:
            return e

    def _carry(self, usage, mono_ns: int) -> bool:
        """Carry memory.stat and the status values of the last full tick (csrc/sampler.c carry_full)?"""
        f = self._full
        return (self.stat_max_age_s is not None and f is not None and len(f) == 4 and isinstance(usage, int)
                and usage == f[0] and mono_ns - f[1] < self.stat_max_age_s * 1e9)

    def _sample_cgroup(self, s: Sample) -> tuple:
        """(CgroupSample or None, the processes to carry or None). The usage counter is read
        first: memory.stat is read only when it is not carried; notes come in file order."""
        if self.cgroup_gone:
            self.note_cgroup_error(s, errno.ENODEV)
            return None, None
        files = self.cgroup_files()
        data = {role: self._try_read(role) for role in files if role != "stat"}
        cur = data.get("current")
        usage = parse_single(cur) if isinstance(cur, bytes) else None
        carry = self._carry(usage, s.mono_ns)
        if "stat" in files and not carry:
            data["stat"] = self._try_read("stat")
        raw: dict = {}
        clean = True
        for role, path in files.items():
            if role == "stat" and carry:
                raw["stat"] = dict(self._full[2])
                continue
            d = data[role]
            if isinstance(d, OSError):
                if d.errno == errno.ENODEV or not os.path.isdir(self.cgroup_dir):
                    self.note_cgroup_error(s, errno.ENODEV)
                    return None, None
                s.notes.append(f"{path}: {os.strerror(d.errno)}")
                clean = clean and role != "stat"
                continue
            n = len(s.notes)
            raw[role] = parse_role(role, path, d, s.notes)
            clean = clean and (role != "stat" or len(s.notes) == n)
        if carry:
            s.notes.append(self.carried_note(self._full[1]))
        elif self.stat_max_age_s is not None:
            ok = clean and isinstance(usage, int) and "stat" in raw
            self._full = (usage, s.mono_ns, raw["stat"]) if ok else None     # processes added by sample()
        return cgroup_sample_from_raw(self.cgroup, self.version, raw), self._full[3] if carry else None

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


class PurePreads:
    """NativePreads without the extension: the same reads, one os.pread each."""

    def __init__(self, fds: list[int], caps: list[int]):
        self.fds, self.caps = fds, caps

    def read(self) -> tuple[bytes, list[int]]:
        texts, lens = [], []
        for fd, cap in zip(self.fds, self.caps):
            try:
                texts.append(os.pread(fd, cap, 0))
                lens.append(len(texts[-1]))
            except OSError as e:
                lens.append(-e.errno)
        return b"".join(texts), lens


def open_preads(fds: list[int], caps: list[int]):
    """One pread at offset 0 of each descriptor, up to caps[i] bytes, per read(): (texts one after
    another, bytes read or -errno each)."""
    if native_available()[0]:
        from .native import NativePreads
        return NativePreads(fds, caps)
    return PurePreads(fds, caps)


def open_ring(fds: list[int], caps: list[int], interval_s: float, slots: int, **kw):
    """open_preads' reads every interval_s in a C thread (sources/native.py NativeRing); None
    without the extension (the caller reads on its own then)."""
    if not native_available()[0]:
        return None
    from .native import NativeRing
    return NativeRing(fds, caps, interval_s, slots, **kw)
