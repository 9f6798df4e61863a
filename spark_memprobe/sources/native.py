"""The native sampler: csrc/ through cffi. Raises ImportError when the extension was not built.

C opens each file once and re-reads it with pread into fixed buffers; this module turns
struct mp_sample into the same Sample the pure-Python sampler builds (parity tests).
"""
from __future__ import annotations

import errno
import os
from typing import Optional

from .._native import ffi, lib  # ImportError when not built: callers fall back
from ..samples import GpuProcess, GpuSample, ProcessSample, Sample, Vmstat
from .base_sampler import BaseSampler
from .cgroupfs import cgroup_sample_from_raw
from .parse import KvParse
from .procfs import MALFORMED_KV, STATUS_FIELDS, meminfo_from_kv, note_kv_problems, status_fields

MISSING = lib.MP_MISSING
UNLIMITED = lib.MP_UNLIMITED

SLOTS = {
    "meminfo": lib.MP_SLOT_MEMINFO, "vmstat": lib.MP_SLOT_VMSTAT,
    "stat": lib.MP_SLOT_CG_STAT, "events": lib.MP_SLOT_CG_EVENTS,
    "current": lib.MP_SLOT_CG_CURRENT, "peak": lib.MP_SLOT_CG_PEAK,
    "max": lib.MP_SLOT_CG_MAX, "high": lib.MP_SLOT_CG_HIGH, "swap": lib.MP_SLOT_CG_SWAP,
    "failcnt": lib.MP_SLOT_CG_FAILCNT, "kmem": lib.MP_SLOT_CG_KMEM,
    "pressure": lib.MP_SLOT_CG_PRESSURE,
}
SINGLE_FIELDS = {"current": "cg_current", "peak": "cg_peak", "max": "cg_max", "high": "cg_high",
                 "swap": "cg_swap", "failcnt": "cg_failcnt", "kmem": "cg_kmem"}
KV_FIELDS = {"meminfo": "meminfo", "vmstat": "vmstat", "stat": "cg_stat", "events": "cg_events"}
STATUS_KEYS = [ffi.string(lib.mp_status_key(i)).decode() for i in range(lib.MP_STATUS_KEYS)]
assert set(STATUS_KEYS) == set(STATUS_FIELDS), "csrc status keys differ from procfs.STATUS_FIELDS"
PRESSURE_NAMES = ["some_avg10", "some_avg60", "some_avg300", "some_total_us",
                  "full_avg10", "full_avg60", "full_avg300", "full_total_us"]
NVML_ERRORS = {1: "UNINITIALIZED", 2: "INVALID_ARGUMENT", 3: "NOT_SUPPORTED", 4: "NO_PERMISSION",
               6: "NOT_FOUND", 9: "DRIVER_NOT_LOADED", 13: "FUNCTION_NOT_FOUND", 15: "GPU_IS_LOST",
               18: "LIB_RM_VERSION_MISMATCH", 999: "UNKNOWN"}
GPU_PROC_KINDS = ("compute", "graphics", "mps")


class NativeSampler(BaseSampler):
    kind = "native"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.t = ffi.gc(lib.mp_target_new(), lib.mp_target_free)
        if self.t == ffi.NULL:
            raise MemoryError("mp_target_new")
        self.open_errors: dict[str, int] = {}
        self._set("meminfo", f"{self.proc}/meminfo")
        self._set("vmstat", f"{self.proc}/vmstat")
        for role, path in self.cgroup_files().items():
            self._set(role, path)
        self._names: dict[str, list[str]] = {k: [] for k in KV_FIELDS}
        self._kb: dict[str, list[bool]] = {k: [] for k in KV_FIELDS}
        self.nvml_error: Optional[str] = None
        if self.want_nvml:
            rc = lib.mp_target_set_nvml(self.t, 1)
            if rc:
                self.nvml_error = ("no NVIDIA driver (libnvidia-ml.so.1 not found)" if rc == -errno.ENOENT
                                   else "nvmlInit failed")
        self._buf = ffi.new("struct mp_sample *")
        self.refresh_pids()

    def _set(self, role: str, path: str) -> None:
        rc = lib.mp_target_set_file(self.t, SLOTS[role], path.encode())
        if rc < 0:
            self.open_errors[role] = -rc

    def _apply_pids(self, pids: list[int]) -> None:
        arr = ffi.new("int32_t[]", pids or [0])
        rc = lib.mp_target_set_pids(self.t, self.proc.encode(), arr, len(pids))
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))

    def _keys(self, role: str, n: int) -> tuple[list[str], list[bool]]:
        names, kb = self._names[role], self._kb[role]
        if len(names) < n:
            buf = ffi.new("char[]", lib.MP_KEYLEN)
            for i in range(len(names), n):
                ln = lib.mp_key_name(self.t, SLOTS[role], i, buf, lib.MP_KEYLEN)
                names.append(ffi.unpack(buf, ln).decode("latin-1"))
            kb[:] = [bool(lib.mp_key_is_kb(self.t, SLOTS[role], i)) for i in range(n)]
        return names, kb

    def _os_error(self, role: str, err: int) -> Optional[int]:
        """errno of a failed read (the open's errno when the file never opened), or None."""
        if err == -errno.EBADF and role in self.open_errors:
            return self.open_errors[role]
        return -err if err and err != -errno.EBADMSG else None

    def _kv(self, c, role: str, path: str, notes: list[str]) -> Optional[KvParse]:
        h = c.hdr[SLOTS[role]]
        if h.err:
            e = self._os_error(role, h.err)
            notes.append(f"{path}: {os.strerror(e) if e else MALFORMED_KV}")
            return None
        names, kb = self._keys(role, h.nkeys)
        vals = ffi.unpack(getattr(c, KV_FIELDS[role]), h.nkeys)
        out = KvParse(bad_lines=h.bad_lines, truncated=bool(h.truncated))
        for k, v, unit in zip(names, vals, kb):
            if v != MISSING:
                out.values[k] = v
                out.kb[k] = unit
        note_kv_problems(path, h.bad_lines, bool(h.truncated), notes)
        return out

    def to_sample(self, c) -> Sample:
        """struct mp_sample -> Sample (the same one PureSampler builds)."""
        s = Sample(mono_ns=c.mono_ns, wall_ns=c.wall_ns, read_ns=c.read_ns)
        kv = self._kv(c, "meminfo", f"{self.proc}/meminfo", s.notes)
        if kv is not None:
            s.meminfo = meminfo_from_kv(kv)
        kv = self._kv(c, "vmstat", f"{self.proc}/vmstat", s.notes)
        if kv is not None:
            s.vmstat = Vmstat(counters=kv.values)
        if self.cgroup is not None:
            s.cgroup = self._cgroup(c, s)
        for i in range(c.nprocs):
            p = c.procs[i]
            if p.status_hdr.err:
                s.notes.append(f"process {p.pid}: {os.strerror(-p.status_hdr.err)}")
                s.processes.append(ProcessSample(pid=p.pid))
                continue
            vals = {k: v for k, v in zip(STATUS_KEYS, ffi.unpack(p.status, lib.MP_STATUS_KEYS))
                    if v != MISSING}
            note_kv_problems(f"{self.proc}/{p.pid}/status", p.status_hdr.bad_lines,
                             bool(p.status_hdr.truncated), s.notes)
            s.processes.append(ProcessSample(pid=p.pid, **status_fields(vals)))
        if self.nvml_error:
            s.notes.append(f"NVML not read: {self.nvml_error}")    # gpus stay None: not read
        elif c.nvml_err != -errno.ENODATA:
            s.gpus = self._gpus(c, s)
        return s

    def _cgroup(self, c, s: Sample):
        if self.cgroup_gone:
            self.note_cgroup_error(s, errno.ENODEV)
            return None
        raw: dict = {}
        for role, path in self.cgroup_files().items():
            err = c.hdr[SLOTS[role]].err
            e = self._os_error(role, err)
            if e is not None:
                if e == errno.ENODEV or not os.path.isdir(self.cgroup_dir):
                    self.note_cgroup_error(s, errno.ENODEV)
                    return None
                s.notes.append(f"{path}: {os.strerror(e)}")
            elif role in ("stat", "events"):
                kv = self._kv(c, role, path, s.notes)
                raw[role] = kv.values if kv is not None else None
            elif err:
                raw[role] = None
                s.notes.append(f"{path}: not in the expected format; left empty")
            elif role == "pressure":
                raw[role] = {n: (v / 100 if "avg" in n else v)
                             for n, v in zip(PRESSURE_NAMES, c.pressure) if v != MISSING}
            else:
                v = getattr(c, SINGLE_FIELDS[role])
                raw[role] = "max" if v == UNLIMITED else v
        return cgroup_sample_from_raw(self.cgroup, self.version, raw)

    def _gpus(self, c, s: Sample) -> Optional[list[GpuSample]]:
        if c.nvml_err:
            s.notes.append(f"NVML not read: {os.strerror(-c.nvml_err)}")
            return None
        out = []
        for i in range(c.ngpus):
            g = c.gpus[i]
            mem_err = NVML_ERRORS.get(g.mem_err, str(g.mem_err)) if g.mem_err else None
            v = (lambda x: None if x == MISSING else x)
            procs = [GpuProcess(pid=g.procs[j].pid, kind=GPU_PROC_KINDS[g.procs[j].kind],
                                used_bytes=v(g.procs[j].used_bytes)) for j in range(g.nprocs)]
            out.append(GpuSample(index=i, total_bytes=v(g.total_bytes), free_bytes=v(g.free_bytes),
                                 used_bytes=v(g.used_bytes), reserved_bytes=v(g.reserved_bytes),
                                 memory_error=mem_err, processes=procs,
                                 processes_error=NVML_ERRORS.get(g.procs_err) if g.procs_err else None))
        return out

    def sample(self, detail: bool = False) -> Sample:
        lib.mp_sample_once(self.t, self._buf)
        s = self.to_sample(self._buf)
        if detail:
            self.add_detail(s)
        return self.finish(s)

    # -- background loop ---------------------------------------------------------
    def start(self, interval_s: float, capacity: int = 4096) -> None:
        rc = lib.mp_sampler_start(self.t, int(interval_s * 1e9), capacity)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        self._drain_buf = ffi.new("struct mp_sample[]", capacity)
        self._capacity = capacity
        self._dropped = ffi.new("uint64_t *")

    def drain(self) -> list[Sample]:
        n = lib.mp_sampler_drain(self.t, self._drain_buf, self._capacity, self._dropped)
        return [self.finish(self.to_sample(self._drain_buf[i])) for i in range(max(n, 0))]

    @property
    def dropped(self) -> int:
        return int(self._dropped[0]) if hasattr(self, "_dropped") else 0

    def cpu_seconds(self) -> float:
        return lib.mp_sampler_cpu_ns(self.t) / 1e9

    def stop(self) -> None:
        lib.mp_sampler_stop(self.t)

    def close(self) -> None:
        if self.t is not None:
            ffi.release(self.t)       # runs mp_target_free, which stops the thread first
            self.t = None
