"""Recordings: one SQLite file per run, raw samples and events, never ledger output.

Layout (schema 1; `sqlite3 run.db .schema` shows it):
  meta(key, value)            magic, schema version, tool version
  header(key, value)          JSON: host facts, capabilities, target, probes chosen/refused, interval
  paths(id, path)             dictionary of flattened sample field paths
  samples(seq, mono_ns, wall_ns, keyframe, data, <scalar columns>)
      data is zlib(JSON) of the sample flattened to {path id: value}: a full keyframe every
      KEYFRAME_EVERY samples, otherwise only the fields that changed since the previous
      sample. The scalar columns repeat a few raw readings so that sqlite3 users and report
      timelines need not decode blobs. gpu_data (files written since it was added; readers
      of older files decode the blobs instead) is JSON text of the items of data whose paths are
      under GPU_FIELDS, [[path id, value], ...], NULL when there are none: a report's pass over
      every sample reads it instead of the blob.
  events(seq, mono_ns, kind, value)       JSON, e.g. eBPF aggregates
  bursts(seq, mono_first, mono_last, n, layout, dropped, data)   burst mode only (docs/record.md):
      zlib of n raw samples packed in columns by the native sampler (csrc/memprobe.h), read
      through the "burst_layout" event whose id is `layout`; `dropped` counts the ring's overruns
Files written before this layout may also hold an empty `targets` table: readers ignore it.

The schema only grows: a reader skips header keys, sample fields and event kinds it does not
know, so a recording from a newer memprobe that only added some still reads.

Conventions between `memprobe record` and its readers (report, replay, export):
  header keys  "host" (HostInfo as a dict), "capabilities" (doctor checks), "target" (the
               resolved Target as a dict), "probes" (ProbeStatus dicts, chosen and refused; None
               when eBPF was off), "interval_ns", "argv", "started_wall_ns", "kv_fraction"
  event kinds  "probes": a probe_report.ProbeReport dict, cumulative since the start except its
               cuda_calls (the calls since the previous report), written when CUDA memory moved and
               at least every 10 s otherwise (the ledger of a sample uses the last one at or before it);
               "target": a follow event (restart, exit) as a dict;
               "recording_stopped": why the recording ended early;
               "mapped_files": the target's file mappings, {"files": [{"pid", "path",
               "size_bytes" (mapping length), "dev" ("major:minor" in hex, as maps prints it),
               "inode", "rss_bytes" (Rss of those mappings from /proc/<pid>/smaps; null when
               only /proc/<pid>/maps was read)}]}, merged per (pid, file), written when they
               change and at most once a second; a sample uses the last one at or before it
               (ledger.MappedFile; report names files from it when eBPF is off);
               "other_cgroups": {"cgroups": [CgroupSample dicts]}: other memory cgroups read
               at the same time (e.g. the target's siblings, or cgroups with file_mapped but no
               process), so first-touch owners can be named (ledger LedgerInputs.others); a
               sample uses the last one at or before it;
               "kernel": a samples.KernelMemory dict (zones with watermarks and free blocks per
               order, the watermark sysctls, host PSI), read about once a second; a sample uses
               the last one at or before it (ledger LedgerInputs.kernel);
               "engine_fact": an engine_facts.EngineFact dict, one per fact the inference engine's
               own log told (sources/engine_log.py), at the time it was read (docs/engine-log.md);
               "trigger": why the flight recorder raised its rate ({"kind": "oom_kill", "max",
               "psi", "exit", "restart" or "available", "message", "target", "label", "wall_ns",
               "facts"}); header "flight" then says which rotated file this is (docs/flight-recorder.md).

Journal: WAL while recording, committed at least once a second, so a kill -9 loses at most the
last second and leaves the rest in run.db plus run.db-wal (readers read the pair). A clean close
checkpoints and switches the file to a rollback journal: run.db alone is then complete, with no
-wal or -shm beside it. The file is created new with mode 0600, never through a symlink, and no
file its name or its sidecars' names point to is opened. This module imports sample and probe
report types only (never sources): a recording replays exactly as it ran.

This module is the only code that runs SQL on a recording; readers use Recording: header, host,
len() and mono (one timestamp per sample), samples by index range (samples, samples_at, walk)
or by time (index_at), scalar timelines, and events by kind (Events: values decoded on access).

Readers open read-only and leave no trace: `immutable=1` when there is no -wal (no writer can
exist; works on read-only media), `mode=ro` when there is one. Every value read is checked
against the types the recording conventions give (samples.py, probe_report.py and the shapes below)
before anything is built from it, and a sample blob may inflate to MAX_SAMPLE_JSON_BYTES at
most: a bad file is one RecordingError with a one-line reason, never an exception from deeper down.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import sqlite3
import stat
import struct
import sys
import time
import urllib.parse
import zlib
from typing import (Any, Callable, Iterable, Iterator, NamedTuple, Optional, TypedDict, Union, get_args, get_origin,
                    get_type_hints)

from . import __version__
from .engine_facts import EngineFact
from .probe_report import ProbeReport, ProbeStatus
from .samples import CgroupSample, HostInfo, KernelMemory, Sample, sample_from_dict

MAGIC = "spark_memprobe recording"
SCHEMA_VERSION = 1
ROW_OVERHEAD_BYTES = 64        # a sample row's columns and b-tree cell beside its blob
KEYFRAME_EVERY = 600
COMMIT_EVERY_S = 1.0
REMOVED = {"__removed__": 1}       # a path present in the previous sample and gone now
_UNKNOWN_FIELD = "unknown field"      # Recording._fits_field: a field a newer memprobe wrote, left out
# A sample's JSON is about 4 KB for host + cgroup and under 1 KB per process (the fixtures): 4 MiB
# is thousands of processes, and parsing 4 MiB of the densest JSON costs 80 MB of memory.
MAX_SAMPLE_JSON_BYTES = 4 << 20
# The smallest size bound: schema and header take about 100 KB of WAL before the first sample
# (103 KB measured with 8 GPUs in the header), and the bound is checked before each sample, so
# under it the first sample always fits.
MIN_MAX_BYTES = 256 << 10
SIDECARS = ("-wal", "-shm", "-journal")   # files SQLite keeps beside run.db

# scalar columns: name -> path in the flattened sample (raw readings, not derived values)
SCALARS = {
    "cg_current_bytes": "cgroup/current_bytes",
    "cg_anon_bytes": "cgroup/stat/anon",
    "cg_file_bytes": "cgroup/stat/file",
    "cg_shmem_bytes": "cgroup/stat/shmem",
    "cg_kernel_bytes": "cgroup/stat/kernel",
    "cg_file_mapped_bytes": "cgroup/stat/file_mapped",
    "cg_inactive_file_bytes": "cgroup/stat/inactive_file",
    "mem_total_bytes": "meminfo/bytes/MemTotal",
    "mem_free_bytes": "meminfo/bytes/MemFree",
    "mem_available_bytes": "meminfo/bytes/MemAvailable",
}
# the sample fields a report's GPU series need (analysis/timeline.py), repeated in gpu_data:
# patterns of path parts as Recording._select takes them
GPU_FIELDS = ("gpus", "processes/*/pid", "cgroup/path", "cgroup/version", "cgroup/procs")


class RecordingError(Exception):
    """A recording that cannot be read or written: corrupt, truncated, foreign, from a newer tool,
    or an output path that is not ours to write. The message is one printable line: text from the
    file (or from SQLite about it) may hold newlines or terminal escapes, shown escaped."""

    def __init__(self, message: str):
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


# -- flattening ---------------------------------------------------------------------
_ABSENT = object()
_JSON_OUT = json.JSONEncoder(separators=(",", ":"))         # what json.dumps(..., separators=) builds per call
_INSERT_SAMPLE = (f"INSERT INTO samples(seq, mono_ns, wall_ns, keyframe, data, {', '.join(SCALARS)}, gpu_data) "
                  f"VALUES (?, ?, ?, ?, ?{', ?' * len(SCALARS)}, ?)")


def json_text(value: Any) -> str:
    """JSON as a sample row holds it (compact)."""
    return _JSON_OUT.encode(value)


def scalar_values(flat: dict, paths: Iterable[str] = SCALARS.values()) -> list:
    """A sample row's SCALARS columns (or those of paths) from its flattened sample: integers, else None."""
    return [v if isinstance(v := flat.get(p), int) else None for p in paths]


def deflate(data: bytes) -> bytes:
    """A zlib stream of data. zlib.compress sets up a 32 KiB window and 256 KiB of hash tables
    for every call (about 50 us, most of a small sample's write); a blob of 4 KiB or less fits a
    4 KiB window whole, which compresses it as well at a tenth of the cost. Any inflater reads it."""
    small = len(data) <= 4096
    z = zlib.compressobj(6, zlib.DEFLATED, 12 if small else 15, 4 if small else 8)
    return z.compress(data) + z.flush()


def flatten(obj: Any, prefix: str = "", out: Optional[dict] = None) -> dict:
    """Nested dicts/lists/dataclasses -> {path: leaf}. List items are '#i', dict keys are str(key),
    dataclass fields their names; empty containers are leaves. A dataclass reads as the dict
    asdict() gives, without asdict's deep copies (four fifths of add_sample's time before)."""
    out = {} if out is None else out
    names = _field_names(type(obj))
    if names is not None:
        obj = {n: getattr(obj, n) for n in names}
    if isinstance(obj, dict) and obj:
        items = obj.items()
    elif isinstance(obj, list) and obj:
        items = ((f"#{i}", v) for i, v in enumerate(obj))
    else:
        out[prefix] = obj
        return out
    for k, v in items:
        path = f"{prefix}/{k}" if prefix else str(k)
        if v is None or type(v) in (int, float, str, bool):       # a leaf: no call
            out[path] = v
        else:
            flatten(v, path, out)
    return out


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> Optional[tuple[str, ...]]:
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


def unflatten(flat: dict) -> Any:
    root: dict = {}
    for path, v in flat.items():
        parts = path.split("/")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return _lists(root)


def _lists(node):
    if isinstance(node, dict) and node:
        if all(k.startswith("#") for k in node):
            return [_lists(node[k]) for k in sorted(node, key=lambda k: int(k[1:]))]
        return {k: _lists(v) for k, v in node.items()}
    return node


# -- the shapes a reader accepts ------------------------------------------------------
# Dataclasses (samples.py, probe_report.py) are strict: no unknown key, required fields present, as
# their constructors want. Dict shapes (TypedDict) are lenient: a missing key reads as None and
# unknown keys are ignored; they name only what readers use.
class _Check(TypedDict):                  # header "capabilities": doctor checks
    name: str
    ok: bool
    detail: str
    cost: str


class _Target(TypedDict):                 # header "target": a resolved Target as a dict
    kind: Optional[str]
    query: Optional[str]
    name: Optional[str]
    id: Optional[str]
    engine: Optional[str]
    cgroup_path: Optional[str]
    cgroup_version: Optional[int]
    description: Optional[str]
    pids: Optional[list[int]]
    evidence: Optional[list[str]]


class _TargetEvent(TypedDict):            # event "target"
    kind: str
    message: str
    wall_ns: Optional[int]
    facts: Optional[dict[str, Any]]


class _Stopped(TypedDict):                # event "recording_stopped"
    reason: str


class _MappedFile(TypedDict):
    pid: int
    path: str
    size_bytes: int
    dev: str
    inode: int
    rss_bytes: Optional[int]


class _MappedFiles(TypedDict):            # event "mapped_files"
    files: list[_MappedFile]


class _OtherCgroups(TypedDict):           # event "other_cgroups"
    cgroups: list[CgroupSample]


class _Trigger(TypedDict):                # event "trigger" (flight recorder, feed/flight.py)
    kind: str
    message: str
    target: Optional[str]
    label: Optional[str]
    wall_ns: Optional[int]
    facts: Optional[dict[str, Any]]


HEADER = {"host": Optional[HostInfo], "capabilities": Optional[list[_Check]], "target": Optional[_Target],
          "probes": Optional[list[ProbeStatus]], "interval_ns": Optional[int], "argv": Optional[list[str]],
          "started_wall_ns": Optional[int], "kv_fraction": Optional[float], "pid": Optional[int],
          "flight": Optional[dict[str, Any]]}
EVENTS = {"probes": ProbeReport, "target": _TargetEvent, "recording_stopped": _Stopped,
          "mapped_files": _MappedFiles, "other_cgroups": _OtherCgroups, "kernel": KernelMemory,
          "engine_fact": EngineFact, "trigger": _Trigger}
_INDEX = re.compile(r"#[0-9]+")
_INT_KEY = re.compile(r"-?[0-9]+")
_shapes: dict = {}


def _shape(cls) -> tuple[dict, set]:
    """(field -> type, required fields) of a dataclass or TypedDict, cached."""
    if cls not in _shapes:
        hints = get_type_hints(cls)
        if dataclasses.is_dataclass(cls):
            required = {f.name for f in dataclasses.fields(cls)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        else:
            required = set()
        _shapes[cls] = (hints, required)
    return _shapes[cls]


def _fits(v: Any, hint: Any) -> bool:
    """Does the JSON value v have the type `hint` (as the recording conventions give it)?"""
    if hint is Any:
        return True
    if hint is type(None):
        return v is None
    origin = get_origin(hint)
    if origin is Union:
        return any(_fits(v, h) for h in get_args(hint))
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:          # 64 bits, signed or not (pointers); JSON could hold any size
        return isinstance(v, int) and -(1 << 63) <= v < (1 << 64)
    if hint is float:
        return isinstance(v, (int, float)) and math.isfinite(v)
    if hint is str:
        return isinstance(v, str)
    if origin is list:
        return isinstance(v, list) and all(_fits(x, get_args(hint)[0]) for x in v)
    if origin is dict:
        kt, vt = get_args(hint)
        return isinstance(v, dict) and all((kt is not int or _INT_KEY.fullmatch(k)) and _fits(x, vt)
                                           for k, x in v.items())
    if dataclasses.is_dataclass(hint):
        hints, required = _shape(hint)
        # keys a newer version added are ignored (additive schema); known ones must fit
        return isinstance(v, dict) and required <= v.keys() and all(k not in hints or _fits(x, hints[k])
                                                                    for k, x in v.items())
    if isinstance(hint, type) and issubclass(hint, dict):      # a TypedDict shape
        return isinstance(v, dict) and all(_fits(v.get(k), t) for k, t in _shape(hint)[0].items())
    return False


def _child(hint: Any, part: str) -> Any:
    """The type of `part` inside a value of type `hint` (a flattened sample path step), or None."""
    for h in get_args(hint) if get_origin(hint) is Union else (hint,):
        if dataclasses.is_dataclass(h) and part in _shape(h)[0]:
            return _shape(h)[0][part]
        if get_origin(h) is list and _INDEX.fullmatch(part):
            return get_args(h)[0]
        if get_origin(h) is dict and not part.startswith("#"):      # '#' keys would unflatten as a list
            kt, vt = get_args(h)
            if kt is not int or _INT_KEY.fullmatch(part):
                return vt
    return None


def _under(path: str, patterns: list[list[str]]) -> bool:
    """Is a flattened path under one of the patterns (path parts, '*' for any one part)?"""
    parts = path.split("/")
    return any(len(parts) >= len(pat) and all(a in ("*", b) for a, b in zip(pat, parts)) for pat in patterns)


_GPU_PATTERNS = [f.split("/") for f in GPU_FIELDS]


def _leaf_type(path: str) -> Any:
    """The type of a flattened sample path's leaf, or None when the path names no field."""
    hint: Any = Sample
    for part in path.split("/"):
        hint = _child(hint, part)
        if hint is None:
            return None
    return hint


def _no_constants(name: str) -> None:
    return None               # NaN and Infinity in JSON read as missing, as nothing measures them


_JSON = json.JSONDecoder(parse_constant=_no_constants)     # one for every value: json.loads makes one per call


def json_value(text: Any) -> Any:
    """json.loads, raising ValueError for anything that is not JSON text (NULL, numbers, deep nesting)."""
    if not isinstance(text, (str, bytes)):
        raise ValueError(f"not JSON text ({type(text).__name__})")
    try:
        # bytes decoded as json.loads decodes them (json/__init__.py)
        text = text if isinstance(text, str) else text.decode(json.detect_encoding(text), "surrogatepass")
        return _JSON.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def check_event(path: str, kind: str, value: Any, key: Optional[str] = None) -> Any:
    """value, if it has the shape event `kind` has (or, with key, that top-level key of it);
    RecordingError otherwise. Kinds without a known shape take any JSON."""
    hint = EVENTS.get(kind, Any)
    if key is not None and hint is not Any:
        hint = _shape(hint)[0].get(key, Any)
    if not _fits(value, hint):
        what = f"{kind}.{key}" if key else kind
        raise RecordingError(f"{path}: corrupt '{what}' event (not what memprobe writes: {str(value)[:80]})")
    return value


# -- writing ------------------------------------------------------------------------
def _kind(mode: int) -> str:
    return {stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory",
            stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"
            }.get(stat.S_IFMT(mode), "not a regular file")


def _lstat(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _create_file(path: str, overwrite: bool) -> None:
    """A new empty regular file of ours, mode 0600. An existing regular file (with overwrite) is
    unlinked, never opened, so what it points to (a hard link's other names) is untouched; anything
    else is refused. Sidecars without their database are stale or planted: unlinked (an unlink
    removes a symlink, never what it points to), so SQLite creates its own."""
    st = _lstat(path)
    if st is not None:
        if not overwrite:
            raise RecordingError(f"{path} exists (use --force to overwrite)")
        if not stat.S_ISREG(st.st_mode):
            raise RecordingError(f"refusing to overwrite {path}: it is {_kind(st.st_mode)}")
        os.unlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise RecordingError(f"{path} appeared while it was being created") from None
    try:
        os.fchmod(fd, 0o600)                 # whatever the umask
    finally:
        os.close(fd)
    for suffix in SIDECARS:
        st = _lstat(path + suffix)
        if st is not None and stat.S_ISDIR(st.st_mode):
            _remove(path)
            raise RecordingError(f"refusing to write {path}: {path}{suffix} is a directory")
        if st is not None:
            os.unlink(path + suffix)


def _remove(path: str) -> None:
    for p in (path, *(path + s for s in SIDECARS)):
        try:
            if stat.S_ISREG(os.lstat(p).st_mode):
                os.unlink(p)
        except FileNotFoundError:
            pass


def _writes(method):
    """sqlite3 errors while writing (disk full, I/O) become one-line RecordingErrors."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise RecordingError(f"writing {self.path}: {e}") from None
    return wrapper


class RecordingWriter:
    def __init__(self, path: str, header: dict, overwrite: bool = False, max_bytes: Optional[int] = None,
                 commit_every_s: Optional[float] = COMMIT_EVERY_S, page_size: Optional[int] = None):
        """commit_every_s: commit on a write at least this long after the last commit; None:
        only when commit() is called (the flight recorder commits every file once a second).
        page_size: SQLite's page in bytes (None: its default, 4096). A commit writes every page
        it changed whole to the -wal: a file that takes one small row a commit writes a page a row."""
        self.path = path
        self.page_size = page_size
        self.commit_every_s = commit_every_s
        self.db = None
        try:
            _create_file(path, overwrite)
        except OSError as e:
            raise RecordingError(e.strerror or str(e)) from None
        try:
            self._start(header)
        except (sqlite3.Error, OSError) as e:
            if self.db is not None:
                self.db.close()
            _remove(path)                    # no partial file
            raise RecordingError(str(e)) from None
        self.max_bytes = max_bytes
        self.full = False
        self.path_ids: dict[str, int] = {}
        self.gpu_ids: set[int] = set()          # ids of the paths under GPU_FIELDS
        self.prev: Optional[dict] = None
        self.n = 0
        self.saved = 0                 # samples committed: what a reader will find
        # bytes not yet committed: SQLite writes them to the -wal only at COMMIT, so the size
        # bound counts them itself (a fast writer can add thousands of samples a second)
        self.pending_bytes = 0
        self.last_commit = time.monotonic()

    def _start(self, header: dict) -> None:
        old = os.umask(0o077)          # -wal and -shm files get 0600 too
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self.page_size:
                self.db.execute(f"PRAGMA page_size={int(self.page_size)}")     # before WAL: fixed after
            self.db.execute("PRAGMA journal_mode=WAL")
        finally:
            os.umask(old)
        self.db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{c} INTEGER" for c in SCALARS)
        self.db.executescript(f"""
            CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE header(key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE paths(id INTEGER PRIMARY KEY, path TEXT UNIQUE);
            CREATE TABLE samples(seq INTEGER PRIMARY KEY, mono_ns INTEGER, wall_ns INTEGER,
                                 keyframe INTEGER, data BLOB, {cols}, gpu_data TEXT);
            CREATE TABLE events(seq INTEGER PRIMARY KEY, mono_ns INTEGER, kind TEXT, value TEXT);
            CREATE INDEX events_kind ON events(kind, mono_ns);
        """)
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO meta VALUES (?, ?)",
                            [("magic", MAGIC), ("schema_version", str(SCHEMA_VERSION)),
                             ("tool_version", __version__), ("created_wall_ns", str(time.time_ns()))])
        self.db.executemany("INSERT INTO header VALUES (?, ?)",
                            [(k, json.dumps(v, default=str)) for k, v in header.items()])
        self.db.execute("COMMIT")

    def _tx(self) -> None:
        """Writes between commits go in one transaction, begun at the first of them."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN")

    def _ids(self, flat: dict) -> None:
        if flat.keys() <= self.path_ids.keys():
            return
        new = [p for p in flat if p not in self.path_ids]
        for p in new:
            cur = self.db.execute("INSERT INTO paths(path) VALUES (?)", (p,))
            self.path_ids[p] = cur.lastrowid
            if _under(p, _GPU_PATTERNS):
                self.gpu_ids.add(cur.lastrowid)

    def add_sample(self, s: Sample, flat: Optional[dict] = None) -> bool:
        """Append one sample. False when the size bound stopped the recording. flat: flatten(s)
        when the caller has it (the flight recorder flattens the host's part once for all targets)."""
        return self.add_flat(s.mono_ns, s.wall_ns, flatten(s) if flat is None else flat)

    @_writes
    def add_flat(self, mono_ns: int, wall_ns: int, flat: dict, changed: Optional[dict] = None) -> bool:
        """Append one flattened sample. changed: when flat is the dict this writer took last,
        updated in place since, what was updated (feed/flat_delta.py): nothing is compared then."""
        if self.full:
            return False
        self._tx()
        if self._over_bound():
            self.full = True
            self.add_event(mono_ns, "recording_stopped",
                           {"reason": f"size bound of {self.max_bytes} bytes reached"})
            self.commit()
            return False
        ids, prev = self.path_ids, self.prev
        if callable(prev):                       # add_row's: built only now that it is needed
            prev = self.prev = prev()
        key = prev is None or self.n % KEYFRAME_EVERY == 0
        if changed is not None and prev is flat and not key:
            body = [[ids[p], v] for p, v in changed.items()]        # the same paths: all have ids
        else:
            self._ids(flat)
            if key:
                body = [[ids[p], v] for p, v in flat.items()]
            else:
                body = [[ids[p], v] for p, v in flat.items() if prev.get(p, _ABSENT) != v]
                if not prev.keys() <= flat.keys():
                    body += [[ids[p], REMOVED] for p in prev if p not in flat]
        blob = deflate(json_text(body).encode())
        scal = scalar_values(flat)
        gpu = [item for item in body if item[0] in self.gpu_ids] if self.gpu_ids else None
        gpu_data = json_text(gpu) if gpu else None
        self.db.execute(_INSERT_SAMPLE, (self.n, mono_ns, wall_ns, int(key), blob, *scal, gpu_data))
        self.pending_bytes += len(blob) + len(gpu_data or "") + ROW_OVERHEAD_BYTES
        self.prev = flat
        self.n += 1
        self._maybe_commit()
        return True

    def row_due(self) -> bool:
        """Can the next sample be add_row's (not the first, not a keyframe, not at the bound)?"""
        return self.prev is not None and self.n % KEYFRAME_EVERY != 0 and not self.full and not self._over_bound()

    @_writes
    def add_row(self, mono_ns: int, wall_ns: int, blob: bytes, scalars: list, gpu_data: Optional[str],
                flat_after: Callable[[], dict]) -> None:
        """Append a sample encoded elsewhere (csrc/memprobe.h mp_delta_row, only when row_due()):
        blob is what add_flat would write for it, zlib of the JSON of [[path id, value], ...] of
        what changed since the previous sample, with ids from path_ids; scalars the SCALARS values
        and gpu_data the GPU_FIELDS items, as add_flat makes them. flat_after() gives the
        flattened sample the recording holds after it: called only when add_flat needs it.
        Outside a transaction the row is one of its own, committed here (a flight base file's
        one write of the second: no BEGIN and COMMIT around it)."""
        alone = not self.db.in_transaction
        self.db.execute(_INSERT_SAMPLE, (self.n, mono_ns, wall_ns, 0, blob, *scalars, gpu_data))
        self.prev = flat_after
        self.n += 1
        if alone:
            self.saved = self.n
            self.last_commit = time.monotonic()
            return
        self.pending_bytes += len(blob) + len(gpu_data or "") + ROW_OVERHEAD_BYTES
        self._maybe_commit()

    @_writes
    def add_burst(self, mono_first: int, mono_last: int, n: int, layout: int, dropped: int, packed: bytes) -> bool:
        """Append one batch of burst samples (csrc/memprobe.h packing). False at the size bound."""
        if self.full:
            return False
        self._tx()
        if self._over_bound():
            self.full = True
            self.add_event(mono_first, "recording_stopped", {"reason": f"size bound of {self.max_bytes} bytes reached"})
            self.commit()
            return False
        self.db.execute("CREATE TABLE IF NOT EXISTS bursts(seq INTEGER PRIMARY KEY, mono_first INTEGER, "
                        "mono_last INTEGER, n INTEGER, layout INTEGER, dropped INTEGER, data BLOB)")
        self.db.execute("INSERT INTO bursts(mono_first, mono_last, n, layout, dropped, data) VALUES (?, ?, ?, ?, ?, ?)",
                        (mono_first, mono_last, n, layout, dropped, blob := zlib.compress(packed, 1)))
        self.pending_bytes += len(blob) + ROW_OVERHEAD_BYTES
        self._maybe_commit()
        return True

    @_writes
    def add_event(self, mono_ns: int, kind: str, value: Any) -> None:
        self._tx()
        self.db.execute("INSERT INTO events(mono_ns, kind, value) VALUES (?, ?, ?)",
                        (mono_ns, kind, json.dumps(value, default=str)))
        self._maybe_commit()

    @_writes
    def set_header(self, key: str, value: Any) -> None:
        self._tx()
        self.db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def _over_bound(self) -> bool:
        return self.max_bytes is not None and self.size_bytes() + self.pending_bytes >= self.max_bytes

    def _maybe_commit(self) -> None:
        if self.commit_every_s is not None and time.monotonic() - self.last_commit >= self.commit_every_s:
            self.commit()

    @_writes
    def commit(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.saved = self.n
        self.pending_bytes = 0
        self.last_commit = time.monotonic()

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> Optional[str]:
        """Commit, move everything into run.db and leave no -wal or -shm beside it. Returns a
        note when the -wal may still hold data (a reader held the file, or closing failed)."""
        if self.db is None:
            return None
        db, self.db = self.db, None
        note = None
        try:
            if db.in_transaction:                        # a failed COMMIT (disk full) ended it already
                db.execute("COMMIT")
                self.saved = self.n
            db.execute("PRAGMA busy_timeout=1000")       # a reader may hold a snapshot for a moment
            busy, _log, _done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy or db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] != "delete":
                note = f"a reader had {self.path} open: its newest data is still in {self.path}-wal"
        except sqlite3.Error as e:
            note = f"closing {self.path}: {e}; its newest data may be in {self.path}-wal"
        finally:
            db.close()
        return note


# -- reading ------------------------------------------------------------------------
def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")       # text that is not UTF-8 is a value check's business


def _open_input(path: str) -> tuple[str, bytes]:
    """(real path, first 100 bytes) of a regular file; opening it cannot block (FIFO) or grab a tty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise RecordingError(f"{path}: no such recording") from None
    except PermissionError:
        raise                         # main() says "permission denied", exit 4: not a bad file
    except OSError as e:
        raise RecordingError(f"{path}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecordingError(f"{path}: not a memprobe recording (it is {_kind(st.st_mode)})")
        head = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    return os.path.realpath(path), head


class Recording:
    """Read a recording. Raises RecordingError with a one-line reason for files that are not
    readable recordings, and for any value in them that is not what memprobe writes."""

    def __init__(self, path: str):
        self.path = path
        self.db = None
        real, head = _open_input(path)
        side = {}
        for suffix in ("-wal", "-shm"):
            st = _lstat(real + suffix)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise RecordingError(f"{path}: refusing to read it: {real}{suffix} is {_kind(st.st_mode)}")
            side[suffix] = st
        wal, shm = side["-wal"], side["-shm"]
        # a -wal with data (or with a -shm: a recorder may be writing it) holds the newest samples:
        # read the pair with mode=ro; else nothing can change the file and immutable=1 reads it with
        # no lock and no -shm, also on read-only media (sqlite.org/uri.html)
        pair = wal is not None and (wal.st_size > 0 or shm is not None)
        if not head.startswith(b"SQLite format 3\x00") and not (pair and head == b""):
            raise RecordingError(f"{path}: not a memprobe recording (not an SQLite file)")
        self._made_shm = real + "-shm" if pair and shm is None else None
        uri = f"file:{urllib.parse.quote(real)}?{'mode=ro' if pair else 'immutable=1'}"
        try:
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self.db.text_factory = _text
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:     # the latter: SQLite's message quotes the file
            self.close()
            if pair and shm is None and not os.access(os.path.dirname(real), os.W_OK):
                # SQLite reads a -wal through a -shm it must create (sqlite.org/walformat.html)
                raise RecordingError(f"{path}: the recording did not close (its recorder was killed?) and its newest "
                                     f"data is in {path}-wal, which cannot be read here ({e}): copy {path} and "
                                     f"{path}-wal together into a writable directory and read the copy") from None
            if not pair and head[18:19] == b"\x02" and "no such table" in str(e):
                # file format byte 18 is 2 in WAL mode (sqlite.org/fileformat2.html)
                raise RecordingError(f"{path}: the recording did not close (its recorder was killed?) and its data "
                                     f"is in {path}-wal, which is missing: put {path}-wal beside it") from None
            raise RecordingError(f"{path}: not a memprobe recording or corrupt ({e})") from None
        if meta.get("magic") != MAGIC:
            self.close()
            raise RecordingError(f"{path}: not a memprobe recording (foreign SQLite file)")
        try:
            version = int(meta.get("schema_version", "0"))
        except (TypeError, ValueError):
            self.close()
            raise RecordingError(f"{path}: corrupt recording (schema version {meta.get('schema_version')!r})") from None
        if version > SCHEMA_VERSION:
            self.close()
            raise RecordingError(f"{path}: written by a newer memprobe (schema {version} > {SCHEMA_VERSION}); "
                                 f"upgrade to read it")
        self.meta = meta
        try:
            self._read_tables()
        except RecordingError:
            self.close()
            raise

    def _read_tables(self) -> None:
        path = self.path
        try:
            header = list(self.db.execute("SELECT key, value FROM header"))
            paths = self.db.execute("SELECT id, path FROM paths").fetchall()
            rows = self.db.execute("SELECT seq, mono_ns, keyframe FROM samples ORDER BY seq").fetchall()
            self.has_gpu_data = "gpu_data" in {r[1] for r in self.db.execute("PRAGMA table_info(samples)")}
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{path}: corrupt recording ({e})") from None
        self.header = {}
        for k, v in header:
            try:
                self.header[k] = json_value(v)
            except ValueError as e:
                raise RecordingError(f"{path}: corrupt header {k!r} ({e})") from None
            if k in HEADER and not _fits(self.header[k], HEADER[k]):
                raise RecordingError(f"{path}: corrupt header {k!r} (not what memprobe writes: "
                                     f"{str(self.header[k])[:80]})")
        if not all(type(i) is int and isinstance(p, str) for i, p in paths):
            raise RecordingError(f"{path}: corrupt recording (a field path that is not text)")
        self.paths = dict(paths)
        self._types: dict[int, Any] = {}
        self._fit_types: dict[tuple[int, type], Any] = {}      # (path id, scalar type) -> _fits_field
        self._selected: dict[tuple, frozenset] = {}
        if not all(type(s) is int and type(m) is int and type(k) is int for s, m, k in rows):
            bad = next(i for i, r in enumerate(rows) if not all(type(x) is int for x in r))
            raise RecordingError(f"{path}: corrupt recording (sample {bad}: seq, mono_ns or keyframe is not "
                                 f"an integer: {rows[bad]})")
        self.seqs = [r[0] for r in rows]
        if len(set(self.seqs)) != len(self.seqs):
            raise RecordingError(f"{path}: corrupt recording (repeated sample numbers)")
        self.mono = [r[1] for r in rows]
        self.keyframes = [i for i, r in enumerate(rows) if r[2]]

    def __len__(self) -> int:
        return len(self.seqs)

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def host(self) -> HostInfo:
        from .samples import GpuInfo, PlatformProfile, known
        h = known(HostInfo, self.header.get("host") or {})
        if h.get("platform") is not None:
            h["platform"] = PlatformProfile(**known(PlatformProfile, h["platform"]))
        h["gpus"] = [GpuInfo(**known(GpuInfo, g)) for g in h.get("gpus") or []]
        return HostInfo(**h)

    @property
    def kv_fraction(self) -> Optional[float]:
        """The header's KV-cache fraction when it is one (in (0, 1]), else None."""
        f = self.header.get("kv_fraction")
        return f if f is not None and 0 < f <= 1 else None

    def _decode(self, blob: Any) -> list:
        """A sample blob: [[path id, value], ...], each value of its field's type (or REMOVED);
        fields this version does not know (a newer memprobe's) are left out. Inflation stops at
        MAX_SAMPLE_JSON_BYTES: a small zlib bomb costs no memory."""
        if not isinstance(blob, bytes):
            raise RecordingError(f"{self.path}: corrupt sample data (a {type(blob).__name__}, not a zlib blob)")
        z = zlib.decompressobj()
        try:
            text = z.decompress(blob, MAX_SAMPLE_JSON_BYTES + 1)
        except zlib.error as e:
            raise RecordingError(f"{self.path}: corrupt sample data ({e})") from None
        if len(text) > MAX_SAMPLE_JSON_BYTES:
            raise RecordingError(f"{self.path}: corrupt sample data (inflates past {MAX_SAMPLE_JSON_BYTES >> 20} MiB, "
                                 f"more than any sample memprobe writes)")
        if not z.eof:
            raise RecordingError(f"{self.path}: corrupt sample data (truncated zlib stream)")
        return self._body(text)

    def _gpu_body(self, text: Any, times: tuple) -> list:
        """A gpu_data value (NULL: no GPU field written) and the row's times ((path id, value)
        of mono_ns and wall_ns): the items of a sample's blob that walk(gpu_only=True) needs,
        checked as _decode checks a blob."""
        if text is not None and not (isinstance(text, str) and len(text) <= MAX_SAMPLE_JSON_BYTES):
            raise RecordingError(f"{self.path}: corrupt sample data (gpu_data {str(text)[:40]})")
        body = [] if text is None else self._body(text)
        for pid, v in times:
            if pid is None or type(v) is not int:
                raise RecordingError(f"{self.path}: corrupt recording (sample times {times})")
            body.append([pid, v])
        return body

    def _body(self, text: Any) -> list:
        """Checked [[path id, value], ...] of a blob's JSON text (see _decode)."""
        try:
            body = json_value(text)
        except ValueError as e:
            raise RecordingError(f"{self.path}: corrupt sample data ({e})") from None
        if not isinstance(body, list):
            raise RecordingError(f"{self.path}: corrupt sample data (a {type(body).__name__}, not a list)")
        known, seen = [], self._fit_types
        for item in body:
            if not (type(item) is list and len(item) == 2 and type(item[0]) is int):
                raise RecordingError(f"{self.path}: corrupt sample data (item {str(item)[:40]})")
            pid, v = item
            t = type(v)
            # whether a str, bool, None, 64-bit int or finite float fits depends on the field and
            # type(v) alone: known after the first such value
            fits = seen.get((pid, t))
            if fits is None or t is int and not -(1 << 63) <= v < (1 << 64) or t is float and not math.isfinite(v):
                fits = self._fits_field(pid, v)
            if fits is _UNKNOWN_FIELD:
                continue
            if not fits:
                raise RecordingError(f"{self.path}: corrupt sample data ({self.paths[pid]} = {str(v)[:40]})")
            known.append(item)
        return known

    def _fits_field(self, pid: int, v: Any) -> Any:
        """Does v fit field pid (a leaf: a scalar or an empty container)? _UNKNOWN_FIELD for a
        field this version does not have. Remembered for the values whose type alone decides."""
        if pid not in self.paths:
            raise RecordingError(f"{self.path}: corrupt sample data (unknown field id {pid})")
        hint = self._leaf(pid)
        t = type(v)
        fits = _UNKNOWN_FIELD if hint is None else \
            v == REMOVED or not (isinstance(v, (list, dict)) and v) and _fits(v, hint)
        if t in (str, bool, type(None)) or t is int and -(1 << 63) <= v < (1 << 64) or \
                t is float and math.isfinite(v):
            self._fit_types[pid, t] = fits
        return fits

    def _leaf(self, pid: int) -> Any:
        """The type of a field path's leaf; None for a path no Sample field has."""
        if pid not in self._types:
            self._types[pid] = _leaf_type(self.paths[pid])
        return self._types[pid]

    def _select(self, fields: tuple[str, ...]) -> frozenset:
        """Ids of the field paths under `fields` (patterns of path parts, '*' for any one part)."""
        if fields not in self._selected:
            pats = [f.split("/") for f in fields]
            self._selected[fields] = frozenset(pid for pid, path in self.paths.items() if _under(path, pats))
        return self._selected[fields]

    def build_sample(self, flat: dict) -> Sample:
        """The Sample of a flattened {path: value} whose values _decode checked."""
        try:
            # empty containers are leaves; give each Sample its own
            return sample_from_dict(unflatten({p: type(v)() if isinstance(v, (list, dict)) else v
                                               for p, v in flat.items()}))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise RecordingError(f"{self.path}: corrupt sample data ({type(e).__name__}: {e})") from None

    def walk(self, start: int = 0, stop: Optional[int] = None, gpu_only: bool = False) -> Iterator["Step"]:
        """Samples start..stop-1 in one pass from the keyframe before start, as Steps: a Sample
        is built only when asked for, whole or in part. gpu_only: only GPU_FIELDS and the times
        are asked for; where the recording has gpu_data they are read from it, no blob decoded
        (step.full is then False)."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        k = bisect.bisect_right(self.keyframes, start) - 1
        if k < 0:
            raise RecordingError(f"{self.path}: corrupt recording (no keyframe before sample {start})")
        i = self.keyframes[k]
        step = Step(self)
        side = gpu_only and self.has_gpu_data
        if side:
            by_path = {p: pid for pid, p in self.paths.items()}
            time_ids = (by_path.get("mono_ns"), by_path.get("wall_ns"))
            step.full = False
        try:
            cur = self.db.execute(f"SELECT keyframe, {'gpu_data, mono_ns, wall_ns' if side else 'data, 0, 0'} "
                                  f"FROM samples WHERE seq >= ? AND seq < ? ORDER BY seq",
                                  (self.seqs[i], self.seqs[stop - 1] + 1))
            for key, data, mono, wall in cur:
                body = self._gpu_body(data, tuple(zip(time_ids, (mono, wall)))) if side else self._decode(data)
                if key:
                    step.flat.clear()
                for pid, v in body:
                    if v == REMOVED:
                        step.flat.pop(pid, None)
                    else:
                        step.flat[pid] = v
                if i >= start:
                    step.index, step.body, step.whole = i, body, bool(key) or i == start
                    yield step
                i += 1
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{self.path}: corrupt recording ({e})") from None

    def samples(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Sample]:
        """Samples start..stop-1 (indices into the recording), rebuilt exactly."""
        for step in self.walk(start, stop):
            yield step.sample()

    def sample(self, i: int) -> Sample:
        return next(self.samples(i, i + 1))

    def samples_at(self, indices: Iterable[int]) -> dict[int, Sample]:
        """{index: Sample} for the given indices, each keyframe span read once."""
        out: dict[int, Sample] = {}
        want = sorted({i for i in indices if 0 <= i < len(self)})
        while want:
            k = bisect.bisect_right(self.keyframes, want[0]) - 1
            nxt = self.keyframes[k + 1] if 0 <= k + 1 < len(self.keyframes) else len(self)
            span = [i for i in want if i < nxt]
            for step in self.walk(span[0], span[-1] + 1):
                if step.index in span:
                    out[step.index] = step.sample()
            want = want[len(span):]
        return out

    def index_at(self, mono_ns: int) -> Optional[int]:
        """Index of the last sample at or before mono_ns; None before the first."""
        i = bisect.bisect_right(self.mono, mono_ns) - 1
        return i if i >= 0 else None

    def timeline(self, columns: list[str]) -> list[tuple]:
        """(mono_ns, wall_ns, *columns) for every sample, from the scalar columns."""
        bad = [c for c in columns if c not in SCALARS]
        if bad:
            raise ValueError(f"no scalar column {bad}")
        try:
            q = f"SELECT mono_ns, wall_ns, {', '.join(columns)} FROM samples ORDER BY seq"
            rows = self.db.execute(q).fetchall()
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{self.path}: corrupt recording ({e})") from None
        for i, r in enumerate(rows):
            if not all(x is None or type(x) is int for x in r):
                raise RecordingError(f"{self.path}: corrupt recording (sample {i}: a column that is not an "
                                     f"integer: {r})")
        return rows

    def bursts(self) -> "Bursts":
        """The burst samples (none in a recording made without burst mode)."""
        return Bursts(self)

    def events(self, kind: Optional[str] = None) -> "Events":
        """Events of one kind (None: every kind) in order; values decoded on access."""
        return Events(self, kind)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._made_shm is not None:
            # a -wal without its -shm (copied as a pair): SQLite made a -shm to read it, and no
            # writer can be using it (a writer keeps its -shm from start to close)
            with contextlib.suppress(OSError):         # none was made (read-only media)
                os.unlink(self._made_shm)
            self._made_shm = None


class Step:
    """One sample of Recording.walk(): valid until the walk moves on."""

    def __init__(self, rec: Recording):
        self.rec = rec
        self.index = -1
        self.flat: dict[int, Any] = {}     # path id -> value, the whole sample
        self.body: list = []               # [path id, value] written for this sample
        self.whole = True                  # a keyframe, or the first step: everything is new
        self.full = True                   # flat holds every field (not a gpu_only walk of gpu_data)

    def changed(self, fields: tuple[str, ...]) -> bool:
        """Did a field under `fields` (Recording._select patterns) change since the previous step?"""
        if self.whole:
            return True
        ids = self.rec._select(fields)
        return any(pid in ids for pid, _ in self.body)

    def sample(self, fields: Optional[tuple[str, ...]] = None) -> Sample:
        """The Sample, whole, or holding only `fields` (e.g. ("gpus", "processes/*/pid")) and its times."""
        paths = self.rec.paths
        if fields is None:
            if not self.full:
                raise ValueError("a gpu_only walk holds GPU_FIELDS only")
            return self.rec.build_sample({paths[pid]: v for pid, v in self.flat.items()})
        ids, flat = self.rec._select((*fields, "mono_ns", "wall_ns")), self.flat
        return self.rec.build_sample({paths[pid]: flat[pid] for pid in sorted(ids) if pid in flat})

    def patch(self, sample: Sample, fields: tuple[str, ...]) -> bool:
        """Bring `sample`, built by sample(fields) at an earlier step of this walk, to this step
        by setting the values this step changed under `fields` (no Sample built). False when a
        change is more than a new scalar in a field the sample has (a field added or removed, a
        list that grew or shrank): `sample` may then be half set, and sample(fields) builds it."""
        if self.whole:
            return False
        ids, paths = self.rec._select((*fields, "mono_ns", "wall_ns")), self.rec.paths
        return all(pid not in ids or type(v) in _SCALARS and _set_leaf(sample, paths[pid], v)
                   for pid, v in self.body)


_SCALARS = (int, float, str, bool, type(None))


def _set_leaf(obj: Any, path: str, v: Any) -> bool:
    """Set the scalar at a flattened path of a built Sample to v; False where the path does
    not lead to a scalar it already holds (its shape changed)."""
    for part in path.split("/"):
        holder = obj
        if isinstance(obj, list) and part[:1] == "#" and part[1:].isdigit() and int(part[1:]) < len(obj):
            key, obj = int(part[1:]), obj[int(part[1:])]
        elif isinstance(obj, dict) and part in obj:
            key, obj = part, obj[part]
        elif dataclasses.is_dataclass(obj) and part in _field_names(type(obj)):
            key, obj = part, getattr(obj, part)
        else:
            return False
    if type(obj) not in _SCALARS:
        return False
    if dataclasses.is_dataclass(holder):
        setattr(holder, key, v)
    else:
        holder[key] = v
    return True


class Bursts:
    """Burst-mode batches of a recording: full-resolution series of single fields, decoded from
    the packed columns only for the paths asked for (csrc/memprobe.h gives the packing)."""

    def __init__(self, rec: Recording):
        self.rec = rec
        try:
            has = rec.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bursts'").fetchone()
            rows = rec.db.execute("SELECT seq, n, layout, dropped FROM bursts ORDER BY seq").fetchall() if has else []
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{rec.path}: corrupt recording ({e})") from None
        if not all(type(x) is int for r in rows for x in r):
            raise RecordingError(f"{rec.path}: corrupt recording (a burst row that is not integers)")
        self.rows = rows
        self.layouts = {}
        for ev in rec.events("burst_layout") if rows else []:
            if not (isinstance(ev.value, dict) and type(ev.value.get("id")) is int
                    and isinstance(ev.value.get("fields"), dict)):
                raise RecordingError(f"{rec.path}: corrupt 'burst_layout' event")
            self.layouts[ev.value["id"]] = ev.value

    def __len__(self) -> int:
        """Samples in all batches."""
        return sum(r[1] for r in self.rows)

    @property
    def dropped(self) -> int:
        """Samples the ring overwrote before they were drained (cumulative, so the last row's)."""
        return self.rows[-1][3] if self.rows else 0

    def series(self, paths: list[str]) -> tuple[list[int], dict[str, list]]:
        """(mono_ns of every burst sample, {path: value per sample}) for flattened Sample paths
        (e.g. "cgroup/current_bytes"); None where the field was not read."""
        mono: list[int] = []
        out: dict[str, list] = {p: [] for p in paths}
        for seq, n, lid, _ in self.rows:
            lay = self.layouts.get(lid)
            if lay is None:
                raise RecordingError(f"{self.rec.path}: corrupt recording (burst batch {seq}: no layout {lid})")
            want = {p: lay["fields"].get(p) for p in paths}
            at = lay["fields"].get("mono_ns")
            cols = self._columns(seq, n, {i for i in (at, *want.values()) if type(i) is int})
            if at not in cols:
                raise RecordingError(f"{self.rec.path}: corrupt burst batch {seq} (no times)")
            mono.extend(cols[at])
            for p, i in want.items():
                vals = cols.get(i, [0] * n) if type(i) is int else [None] * n
                out[p].extend(burst_value(lay, p, v) for v in vals)
        return mono, out

    def _columns(self, seq: int, n: int, wanted: set) -> dict[int, list[int]]:
        import array
        import itertools
        try:
            blob = self.rec.db.execute("SELECT data FROM bursts WHERE seq = ?", (seq,)).fetchone()[0]
            z = zlib.decompressobj()
            data = z.decompress(blob, MAX_SAMPLE_JSON_BYTES * 8)
            if not z.eof:
                raise ValueError("truncated or too large")
            version, count, ncols = struct.unpack_from("<III", data, 0)
            if version != 1 or count != n:
                raise ValueError(f"version {version}, {count} samples for {n}")
            at, cols = 12, {}
            for _ in range(ncols):
                idx, nchg, first = struct.unpack_from("<IIq", data, at)
                at += 16
                if idx in wanted:
                    pos, dv = array.array("I"), array.array("q")
                    pos.frombytes(data[at:at + 4 * nchg])
                    dv.frombytes(data[at + 4 * nchg:at + 12 * nchg])
                    if len(dv) != nchg:
                        raise ValueError("cut column")
                    if sys.byteorder != "little":
                        pos.byteswap()
                        dv.byteswap()
                    vals, v, last = [], first, 0
                    for p, d in zip(pos, dv):
                        if not last < p < n:
                            raise ValueError(f"change at {p} of {n}")
                        vals.extend(itertools.repeat(v, p - last))
                        v, last = (v + d + (1 << 63)) % (1 << 64) - (1 << 63), p     # int64 wrap, as C wrote it
                    vals.extend(itertools.repeat(v, n - last))
                    cols[idx] = vals
                at += 12 * nchg
            if at > len(data):
                raise ValueError("cut batch")
        except (sqlite3.DatabaseError, zlib.error, struct.error, ValueError, TypeError) as e:
            raise RecordingError(f"{self.rec.path}: corrupt burst batch {seq} ({e})") from None
        return cols


def burst_value(lay: dict, path: str, v: int) -> Any:
    """A raw burst value as the Sample field holds it (sources/native.py burst_layout)."""
    if v == lay.get("missing"):
        return None
    if path in lay.get("limits", ()) and (v == lay.get("unlimited") or v >= (lay.get("limit_floor") or 1 << 63)):
        return "max"
    if path in lay.get("hundredths", ()):
        return v / 100
    return v


class Event(NamedTuple):
    mono_ns: int
    kind: str
    value: Any


class Events:
    """Events of one kind (or every kind) of a recording, in order. Times are read when it is
    made; a value is decoded and checked against its kind's shape when it is asked for, so
    opening a one-hour recording with eBPF on (thousands of large cumulative reports) parses
    none of them. The last value decoded is kept."""

    def __init__(self, rec: Recording, kind: Optional[str] = None):
        self.rec, self.kind = rec, kind
        q = "SELECT seq, mono_ns, kind FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY seq"
        try:
            rows = rec.db.execute(q, (kind,) if kind else ()).fetchall()
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{rec.path}: corrupt recording ({e})") from None
        for _seq, m, k in rows:
            if type(m) is not int:
                raise RecordingError(f"{rec.path}: corrupt recording ('{k}' event time {m!r})")
        self.seqs = [r[0] for r in rows]
        self.mono = [r[1] for r in rows]
        self.kinds = [r[2] for r in rows]
        self._kept: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> Event:
        i = range(len(self))[i]
        return Event(self.mono[i], self.kinds[i], self.value(i))

    def __iter__(self) -> Iterator[Event]:
        return (self[i] for i in range(len(self)))

    def _text(self, i: int) -> Any:
        try:
            row = self.rec.db.execute("SELECT value FROM events WHERE seq = ?", (self.seqs[i],)).fetchone()
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{self.rec.path}: corrupt recording ({e})") from None
        return row[0] if row else None

    def value(self, i: int) -> Any:
        if self._kept[0] != i:
            kind = self.kinds[i]
            try:
                v = json_value(self._text(i))
            except ValueError as e:
                raise RecordingError(f"{self.rec.path}: corrupt '{kind}' event ({e})") from None
            self._kept = (i, check_event(self.rec.path, kind, v))
        return self._kept[1]

    def key(self, i: int, key: str) -> Any:
        """One top-level key of a large JSON object without parsing the rest: json.dumps writes
        '"key": ' unescaped only for keys, and no nested object of a ProbeReport has a key that
        a top-level one has."""
        if self._kept[0] == i:
            v = self._kept[1]
            return v.get(key) if isinstance(v, dict) else None
        text = self._text(i)
        at = text.find(f'"{key}": ') if isinstance(text, str) else -1
        if at < 0:
            return None
        try:
            v, _end = json.JSONDecoder().raw_decode(text, at + len(key) + 4)
        except (ValueError, RecursionError) as e:
            raise RecordingError(f"{self.rec.path}: corrupt '{self.kinds[i]}' event ({e})") from None
        return check_event(self.rec.path, self.kinds[i], v, key)

    def last_at(self, mono_ns: int) -> Optional[int]:
        """Index of the last event at or before mono_ns; None before the first."""
        k = bisect.bisect_right(self.mono, mono_ns) - 1
        return k if k >= 0 else None

    def value_at(self, mono_ns: int) -> Any:
        """The value of the last event at or before mono_ns; None before the first."""
        k = self.last_at(mono_ns)
        return None if k is None else self.value(k)

    def between(self, after_ns: int, upto_ns: int) -> list[Any]:
        """Values of the events with after_ns < mono_ns <= upto_ns (in the order written)."""
        return [self.value(i) for i, m in enumerate(self.mono) if after_ns < m <= upto_ns]
