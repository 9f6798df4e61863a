"""The native sampler: csrc/ through cffi. Raises ImportError when the extension was not built.

C opens each file once and re-reads it with pread into fixed buffers; this module turns
struct mp_sample into the same Sample the pure-Python sampler builds (parity tests).
"""
from __future__ import annotations

import errno
import os
from dataclasses import fields
from typing import Optional

from .._native import ffi, lib  # ImportError when not built: callers fall back
from ..samples import GpuProcess, GpuSample, Meminfo, ProcessSample, Sample, Vmstat
from .base_sampler import BaseSampler
from .cgroupfs import V1_STAT_TO_V2, V1_UNLIMITED_FLOOR, cgroup_sample_from_raw
from .parse import KvParse
from .procfs import MALFORMED_KV, STATUS_FIELDS, note_kv_problems

MISSING = lib.MP_MISSING
UNLIMITED = lib.MP_UNLIMITED
ROW_INT, ROW_HUNDREDTHS, ROW_LIMIT = lib.MP_ROW_INT, lib.MP_ROW_HUNDREDTHS, lib.MP_ROW_LIMIT
ROW_BLOB_CAP = 64 << 10


class RowValues:
    """Extra items of delta rows, the same for every target of a tick (the host's meminfo): their
    values (None: null) and which moved since the tick before (mp_delta_row's x_vals and x_on)."""

    def __init__(self, values: list, moved: list[bool]):
        self.n = len(values)
        self.vals = ffi.new("int64_t[]", [MISSING if v is None else v for v in values])
        self.moved = ffi.new("uint8_t[]", [1 if m else 0 for m in moved])


def row_ids(ids: list[int]):
    """The extra items' path ids in one file (-1: not there), for delta_row."""
    return ffi.new("int32_t[]", ids)

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


KV_SLOTS = [(role, SLOTS[role]) for role in KV_FIELDS]
STATUS_ORDER = [STATUS_KEYS.index(k) for k in STATUS_FIELDS]      # ProcessSample's field order
LAZY = ("meminfo", "vmstat", "cgroup", "processes", "gpus")       # in the order their notes come


class _Lazy:
    """A Sample field that a NativeSample builds from its C struct when it is first read."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        d = obj.__dict__
        if self.name not in d:
            obj._build(self.name)
        return d[self.name]

    def __set__(self, obj, value):
        obj.__dict__[self.name] = value


class NativeSample(Sample):
    """A Sample of the native sampler. A tick costs the C read and this object; meminfo, vmstat,
    the cgroup, processes, GPUs and notes are built from the tick's own struct mp_sample when
    first read (the 1 kHz loop and callers that read a few fields build nothing else). Built, it
    equals the Sample PureSampler reads (tests/test_parity.py); the struct is freed once all are."""

    meminfo = _Lazy()
    vmstat = _Lazy()
    cgroup = _Lazy()
    processes = _Lazy()
    gpus = _Lazy()
    notes = _Lazy()

    def __init__(self, sampler: "NativeSampler", c):
        self.__dict__.update(mono_ns=c.mono_ns, wall_ns=c.wall_ns, read_ns=c.read_ns, _src=(sampler, c, {}))

    def _build(self, name: str) -> None:
        sampler, c, notes = self.__dict__["_src"]
        d = self.__dict__
        for field in LAZY if name == "notes" else (name,):
            if field not in d:
                notes[field] = []
                d[field] = sampler.build(field, c, notes[field])
        if name == "notes":
            d["notes"] = [n for field in LAZY for n in notes.get(field, [])]
            if sampler.pids_truncated:
                d["notes"].append(sampler.truncated_note())
            del d["_src"]                  # every field built: the struct can go

    def __eq__(self, other):
        if not isinstance(other, Sample):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(Sample))

    __hash__ = None


class NativeSampler(BaseSampler):
    kind = "native"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.t = ffi.gc(lib.mp_target_new(), lib.mp_target_free)
        if self.t == ffi.NULL:
            raise MemoryError("mp_target_new")
        self.open_errors: dict[str, int] = {}
        if self.host_files:
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
        self._buf = ffi.new("struct mp_sample *")       # the benchmark's mp_sample_once target
        if self.stat_max_age_s is not None:
            lib.mp_target_set_skip(self.t, max(1, int(self.stat_max_age_s * 1e9)))
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
        if MISSING in vals:
            out.values = {k: v for k, v in zip(names, vals) if v != MISSING}
        else:
            out.values = dict(zip(names, vals))
        out.kb = dict(zip(names, kb)) if role == "meminfo" else {}     # only meminfo splits on the unit
        note_kv_problems(path, h.bad_lines, bool(h.truncated), notes)
        return out

    def to_sample(self, c) -> Sample:
        """struct mp_sample -> Sample (the same one PureSampler builds), each field built when it
        is first read; c must stay as it is until then (sample() gives each Sample its own)."""
        for role, slot in KV_SLOTS:          # key names now: the C tables may be gone when a field is built
            n = c.hdr[slot].nkeys
            if n > len(self._names[role]):
                self._keys(role, n)
        return NativeSample(self, c)

    def build(self, name: str, c, notes: list[str]):
        """One field of a NativeSample from its struct; notes of that field go to `notes`."""
        if name in ("meminfo", "vmstat") and not self.host_files:
            return None
        if name == "meminfo":
            kv = self._kv(c, "meminfo", f"{self.proc}/meminfo", notes)
            return None if kv is None else Meminfo(bytes={k: v for k, v in kv.values.items() if kv.kb[k]},
                                                   counts={k: v for k, v in kv.values.items() if not kv.kb[k]})
        if name == "vmstat":
            kv = self._kv(c, "vmstat", f"{self.proc}/vmstat", notes)
            return None if kv is None else Vmstat(counters=kv.values)
        if name == "cgroup":
            return self._cgroup(c, notes) if self.cgroup is not None else None
        if name == "processes":
            return self._processes(c, notes)
        if self.nvml_error:
            notes.append(f"NVML not read: {self.nvml_error}")    # gpus stay None: not read
        elif c.nvml_err != -errno.ENODATA:
            gpus = self._gpus(c, notes)
            for g in gpus or []:
                for gp in g.processes or []:
                    gp.owner_cgroup, gp.ns_pids = self.owner(gp.pid)
            return gpus
        return None

    def _processes(self, c, notes: list[str]) -> list[ProcessSample]:
        out = []
        for i in range(c.nprocs):
            p = c.procs[i]
            comm, ns = self.identity(p.pid)
            if p.status_hdr.err:
                notes.append(f"process {p.pid}: {os.strerror(-p.status_hdr.err)}")
                out.append(ProcessSample(pid=p.pid, comm=comm, ns_pids=ns))
                continue
            vals = ffi.unpack(p.status, lib.MP_STATUS_KEYS)
            note_kv_problems(f"{self.proc}/{p.pid}/status", p.status_hdr.bad_lines,
                             bool(p.status_hdr.truncated), notes)
            out.append(ProcessSample(p.pid, ns, comm, *(None if v == MISSING else v
                                                        for v in (vals[j] for j in STATUS_ORDER))))
        return out

    def _cgroup(self, c, notes: list[str]):
        s = Sample(mono_ns=0, wall_ns=0, notes=notes)        # what note_cgroup_error writes into
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
                notes.append(f"{path}: {os.strerror(e)}")
            elif role in ("stat", "events"):
                kv = self._kv(c, role, path, notes)
                raw[role] = kv.values if kv is not None else None
            elif err:
                raw[role] = None
                notes.append(f"{path}: not in the expected format; left empty")
            elif role == "pressure":
                raw[role] = {n: (v / 100 if "avg" in n else v)
                             for n, v in zip(PRESSURE_NAMES, c.pressure) if v != MISSING}
            else:
                v = getattr(c, SINGLE_FIELDS[role])
                raw[role] = "max" if v == UNLIMITED else v
        if c.stat_mono_ns != c.mono_ns:
            notes.append(self.carried_note(c.stat_mono_ns))
        return cgroup_sample_from_raw(self.cgroup, self.version, raw)

    def _gpus(self, c, notes: list[str]) -> Optional[list[GpuSample]]:
        if c.nvml_err:
            notes.append(f"NVML not read: {os.strerror(-c.nvml_err)}")
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

    def sample(self, detail: bool = False, full: bool = False) -> Sample:
        """One tick. full (or detail): read memory.stat and the status files whatever the usage."""
        c = ffi.new("struct mp_sample *")         # the Sample's own: its fields are built from it later
        if (full or detail) and self.stat_max_age_s is not None:
            lib.mp_target_set_skip(self.t, max(1, int(self.stat_max_age_s * 1e9)))    # forgets the last full read
        lib.mp_sample_once(self.t, c)
        self.full_reads += c.stat_mono_ns == c.mono_ns
        self.last_c = c
        s = self.to_sample(c)
        if detail:
            self.add_detail(s)
        return s

    # -- flight base ticks (csrc/memprobe.h mp_delta_row) -------------------------
    def row_map(self, items: list[tuple[int, int, int]], limit_floor: Optional[int], scal_cols: list[int]):
        """The rows' map for delta_row (csrc/memprobe.h struct mp_rowmap): items (raw column, path
        id, kind: ROW_INT, ROW_HUNDREDTHS or ROW_LIMIT) sorted by column, one per path of the kept
        sample (~700 at most, MP_ROW_ITEMS_MAX fit); scal_cols the columns of the scalar values
        (-1: none), MP_ROW_SCALARS of them."""
        m = ffi.new("struct mp_rowmap *")
        at = 0
        for col in range(lib.MP_RAW_LEN):
            m.start[col] = at
            while at < len(items) and items[at][0] == col:
                m.ids[at], m.kinds[at] = items[at][1], items[at][2]
                at += 1
        m.start[lib.MP_RAW_LEN] = at
        m.limit_floor = limit_floor or 0
        m.scal_cols[0:lib.MP_ROW_SCALARS] = scal_cols
        return m

    def delta_row(self, m, host: Optional["RowValues"], x_ids, deflate: bool, pairs: bool = False):
        """A base tick (never full) compared in C with the raw vector kept by the last call or by
        delta_base(), its row encoded there (mp_delta_row): (struct, bytes of the
        row: zlib of its JSON, or the JSON when not deflate; the MP_ROW_SCALARS values, MISSING as
        None; (columns, values) where the vector differs from the one delta_base kept, as int32
        and int64 bytes); with pairs, the changed (raw column, new value) pairs, else None), or
        (struct, None, None, None, None): build the whole sample (to_sample(struct)) and keep it.
        The struct is this method's own, overwritten by its next call. host: the extra items'
        values and which of them moved, x_ids their ids in this file."""
        if not hasattr(self, "_rcols"):
            self._rcols = ffi.new("int32_t[]", lib.MP_RAW_LEN)
            self._rvals = ffi.new("int64_t[]", lib.MP_RAW_LEN)
            self._scols = ffi.new("int32_t[]", lib.MP_RAW_LEN)
            self._svals = ffi.new("int64_t[]", lib.MP_RAW_LEN)
            self._scal = ffi.new("int64_t[]", lib.MP_ROW_SCALARS)
            self._nsince = ffi.new("int *")
            self._nchanged = ffi.new("int *")
            self._blob = ffi.new("uint8_t[]", ROW_BLOB_CAP)
            # one struct for every row: a new one (20 KB) each time cost an allocation, a free that
            # trimmed the heap and the page faults of growing it again (perf: brk, page faults)
            self._rc = ffi.new("struct mp_sample *")
        c = self._rc
        x_vals, x_on, nx = (ffi.NULL, ffi.NULL, 0) if host is None else (host.vals, host.moved, host.n)
        n = lib.mp_delta_row(self.t, c, self._rcols, self._rvals, m, x_ids, x_vals, x_on, nx, deflate,
                             self._nchanged, self._scal, self._scols, self._svals, self._nsince, self._blob, ROW_BLOB_CAP)
        self.full_reads += c.stat_mono_ns == c.mono_ns
        self.last_c = c
        if n < 0:
            return c, None, None, None, None
        ns, nc = self._nsince[0], self._nchanged[0]
        scal = ffi.unpack(self._scal, lib.MP_ROW_SCALARS)      # unpack: a C loop (indexing is ~0.2 us a value)
        return (c, bytes(ffi.buffer(self._blob, n)), [None if v == MISSING else v for v in scal],
                (bytes(ffi.buffer(self._scols, 4 * ns)), bytes(ffi.buffer(self._svals, 8 * ns))),
                list(zip(ffi.unpack(self._rcols, nc), ffi.unpack(self._rvals, nc))) if pairs else None)

    def delta_base(self, c) -> None:
        """Keep the raw vector of struct c (a tick of this sampler) for delta_row to compare with."""
        lib.mp_delta_base(self.t, c)

    def watch_procs(self) -> bool:
        """Have delta_row check the cgroup's processes (csrc/memprobe.h mp_procs_watch); False
        when the directory cannot be opened."""
        return bool(self.cgroup_dir) and lib.mp_procs_watch(self.t, self.cgroup_dir.encode(), self.version == 2) == 0

    def mark_procs(self) -> None:
        """Read cgroup.procs as delta_row's reference: call it before listing the processes."""
        lib.mp_procs_mark(self.t)

    # -- background loop ---------------------------------------------------------
    def start(self, interval_s: float, capacity: int = 4096, nvml: bool = True) -> None:
        """Sample in a C thread every interval_s into a ring of `capacity` samples (the oldest
        is overwritten, and counted in `dropped`, when nobody drains it in time)."""
        rc = lib.mp_sampler_start(self.t, int(interval_s * 1e9), capacity, lib.MP_RING_NVML if nvml else 0)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        self._capacity = capacity
        self._dropped = ffi.new("uint64_t *")

    def drain_packed(self) -> tuple[int, bytes]:
        """(samples, packed columns) of up to MP_PACK_MAX samples off the ring, without a Python
        object per sample (format: csrc/memprobe.h); (0, b"") when it is empty."""
        if not hasattr(self, "_pack_buf"):
            self._pack_len = lib.mp_pack_bound(lib.MP_PACK_MAX)
            self._pack_buf = ffi.new("uint8_t[]", self._pack_len)
            self._pack_n = ffi.new("int *")
        rc = lib.mp_sampler_drain_packed(self.t, self._pack_buf, self._pack_len, lib.MP_PACK_MAX,
                                         self._pack_n, self._dropped)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        n = self._pack_n[0]
        return n, ffi.buffer(self._pack_buf, rc)[:] if n else b""

    def burst_layout(self) -> dict:
        """Where each Sample field sits in a packed raw vector, and how a raw value becomes the
        field's value: what recording.py Bursts needs to read burst records without sources/.
        Key tables only grow, so a later layout of the same sampler covers earlier records."""
        f = {"mono_ns": lib.MP_RAW_MONO, "wall_ns": lib.MP_RAW_MONO + 1, "read_ns": lib.MP_RAW_MONO + 2}
        for i, (name, kb) in enumerate(zip(*self._keys("meminfo", self._nkeys("meminfo")))):
            f[f"meminfo/{'bytes' if kb else 'counts'}/{name}"] = lib.MP_RAW_MEMINFO + i
        for i, name in enumerate(self._keys("vmstat", self._nkeys("vmstat"))[0]):
            f[f"vmstat/counters/{name}"] = lib.MP_RAW_VMSTAT + i
        stat = {k: lib.MP_RAW_CGSTAT + i for i, k in enumerate(self._keys("stat", self._nkeys("stat"))[0])}
        events = {k: lib.MP_RAW_CGEVENTS + i for i, k in enumerate(self._keys("events", self._nkeys("events"))[0])}
        single = {r: lib.MP_RAW_SINGLE + i for i, r in enumerate(SINGLE_FIELDS)}
        limits = ["cgroup/max_bytes"]
        if self.cgroup is not None:
            f.update({"cgroup/current_bytes": single["current"], "cgroup/peak_bytes": single["peak"],
                      "cgroup/max_bytes": single["max"]})
            if self.version == 2:
                f.update({"cgroup/high_bytes": single["high"], "cgroup/swap_current_bytes": single["swap"]})
                f.update({f"cgroup/stat/{k}": i for k, i in stat.items()})
                f.update({f"cgroup/events/{k}": i for k, i in events.items()})
                f.update({f"cgroup/pressure/{n}": lib.MP_RAW_PRESSURE + j for j, n in enumerate(PRESSURE_NAMES)})
                limits.append("cgroup/high_bytes")
            else:          # the mapping of cgroupfs.cgroup_sample_from_raw
                f.update({f"cgroup/v1_stat/{k}": i for k, i in stat.items()})
                f.update({f"cgroup/stat/{v2}": stat[v1] for v1, v2 in V1_STAT_TO_V2.items() if v1 in stat})
                f.update({"cgroup/stat/kernel": single["kmem"], "cgroup/events/max": single["failcnt"]})
                if "total_swap" in stat:
                    f["cgroup/swap_current_bytes"] = stat["total_swap"]
                if "oom_kill" in events:
                    f["cgroup/events/oom_kill"] = events["oom_kill"]
        for j in range(len(self.pids)):
            base = lib.MP_RAW_PROCS + j * lib.MP_RAW_PROC_STRIDE
            f[f"processes/#{j}/pid"] = base
            f.update({f"processes/#{j}/{attr}": base + 5 + STATUS_KEYS.index(key) for key, attr in STATUS_FIELDS.items()})
        return {"fields": f, "missing": MISSING, "unlimited": UNLIMITED, "limits": limits,
                "limit_floor": V1_UNLIMITED_FLOOR if self.version == 1 else None,
                "hundredths": [f"cgroup/pressure/{n}" for n in PRESSURE_NAMES if "avg" in n]}

    def _nkeys(self, role: str) -> int:
        """Keys the C table of a kv file knows now."""
        n = len(self._names[role])
        buf = ffi.new("char[]", lib.MP_KEYLEN)
        while lib.mp_key_name(self.t, SLOTS[role], n, buf, lib.MP_KEYLEN) >= 0:
            n += 1
        return n

    def drain(self) -> list[Sample]:
        if not hasattr(self, "_drain_buf"):
            self._drain_buf = ffi.new("struct mp_sample[]", self._capacity)
        n = lib.mp_sampler_drain(self.t, self._drain_buf, self._capacity, self._dropped)
        out = []
        for i in range(max(n, 0)):
            c = ffi.new("struct mp_sample *")
            ffi.memmove(c, ffi.addressof(self._drain_buf, i), ffi.sizeof("struct mp_sample"))
            out.append(self.to_sample(c))
        return out

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


class NativePreads:
    """Descriptors read again each with one pread at offset 0, all in one C call (csrc/memprobe.h
    mp_pread_many): read() -> (the texts one after another, [bytes read or -errno per descriptor])."""

    def __init__(self, fds: list[int], caps: list[int]):
        self.n = len(fds)
        self._fds = ffi.new("int[]", fds or [0])
        self._caps = ffi.new("int32_t[]", caps or [0])
        self._len = sum(caps)
        self._buf = ffi.new("char[]", max(1, self._len))
        self._lens = ffi.new("int32_t[]", max(1, self.n))

    def read(self) -> tuple[bytes, list[int]]:
        used = lib.mp_pread_many(self._fds, self._caps, self.n, self._buf, self._len, self._lens)
        return ffi.buffer(self._buf, used)[:], ffi.unpack(self._lens, self.n)


class NativeRing:
    """NativePreads' reads every interval_s in a C thread (csrc/memprobe.h mp_ring_start), the
    last `slots` kept there; take() returns those not taken yet. avail_below_bytes: fds[0] is
    /proc/meminfo and notify_fd (an eventfd) counts each fall of its MemAvailable below that."""

    TAKE_MAX = 16

    def __init__(self, fds: list[int], caps: list[int], interval_s: float, slots: int,
                 avail_below_bytes: Optional[int] = None, low: bool = False, notify_fd: int = -1):
        self.n = len(fds)
        err = ffi.new("int *")
        r = lib.mp_ring_start(ffi.new("int[]", fds), ffi.new("int32_t[]", caps), self.n, int(interval_s * 1e9),
                              slots, avail_below_bytes or 0, int(low), notify_fd, err)
        if r == ffi.NULL:
            raise OSError(-err[0], f"flight ring: {os.strerror(-err[0])}")
        self.r = ffi.gc(r, lib.mp_ring_stop)        # stopped when dropped without stop(), too
        self.after = 0
        m = self.TAKE_MAX
        self._seq, self._mono = ffi.new("uint64_t[]", m), ffi.new("int64_t[]", m)
        self._wall, self._used = ffi.new("int64_t[]", m), ffi.new("int64_t[]", m)
        self._buflen = sum(caps) * m
        self._buf = ffi.new("char[]", max(1, self._buflen))
        self._lens = ffi.new("int32_t[]", max(1, self.n * m))

    def take(self) -> list[tuple[int, int, bytes, list[int]]]:
        """(mono_ns, wall_ns, texts, lens) of each entry read since the last take, oldest first
        (entries the thread overwrote before they were taken are gone)."""
        out: list[tuple[int, int, bytes, list[int]]] = []
        while True:
            got = self._copy(self.after, self.TAKE_MAX, out)
            if got <= 0:
                return out
            self.after = self._seq[got - 1]

    def newest(self) -> Optional[tuple[int, int, bytes, list[int]]]:
        """The newest entry as take() gives it, left for take() (None: none yet)."""
        out: list = []
        return out[0] if self._copy(lib.MP_RING_NEWEST, 1, out) > 0 else None

    def _copy(self, after: int, most: int, out: list) -> int:
        got = lib.mp_ring_copy(self.r, after, most, self._seq, self._mono, self._wall, self._used,
                               self._buf, self._buflen, self._lens)
        at = 0
        for i in range(max(got, 0)):
            used = self._used[i]
            out.append((self._mono[i], self._wall[i], ffi.buffer(self._buf + at, used)[:],
                        ffi.unpack(self._lens + i * self.n, self.n)))
            at += used
        return got

    def available(self) -> tuple[Optional[int], bool]:
        """(MemAvailable at the last read in bytes, None: none; whether it was below the limit)."""
        low = ffi.new("int *")
        v = lib.mp_ring_avail(self.r, low)
        return (None if v < 0 else v), bool(low[0])

    def stop(self) -> None:
        if self.r is not None:
            ffi.release(self.r)                     # runs mp_ring_stop: the thread joined, its descriptors closed
            self.r = None
