"""Recordings: one SQLite file per run, raw samples and events, never ledger output.

Layout (schema 1; `sqlite3 run.db .schema` shows it):
  meta(key, value)            magic, schema version, tool version
  header(key, value)          JSON: host facts, capabilities, target, probes chosen/refused, interval
  targets(seq, mono_ns, wall_ns, value)   target history (a restarted container gets a new cgroup)
  paths(id, path)             dictionary of flattened sample field paths
  samples(seq, mono_ns, wall_ns, keyframe, data, <scalar columns>)
      data is zlib(JSON) of the sample flattened to {path id: value}: a full keyframe every
      KEYFRAME_EVERY samples, otherwise only the fields that changed since the previous
      sample. The scalar columns repeat a few raw readings so that sqlite3 users and report
      timelines need not decode blobs.
  events(seq, mono_ns, kind, value)       JSON, e.g. eBPF aggregates

Conventions between `memprobe record` and its readers (report, replay, export):
  header keys  "host" (HostInfo as a dict), "capabilities" (doctor checks), "target" (the
               resolved Target as a dict), "probes" (ProbeStatus dicts, chosen and refused; None
               when eBPF was off), "interval_ns", "argv", "started_wall_ns", "kv_fraction"
  event kinds  "probes": an events.ProbeReport dict, cumulative since the start except its
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
               sample uses the last one at or before it.

WAL journal, committed at least once a second: a kill -9 loses at most the last second.
The file is created with mode 0600 and never through a symlink. This module imports
sample types only (never sources): a recording replays exactly as it ran.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from typing import Any, Iterator, Optional

from . import __version__
from .samples import HostInfo, Sample, sample_from_dict, sample_to_dict

MAGIC = "spark_memprobe recording"
SCHEMA_VERSION = 1
KEYFRAME_EVERY = 600
COMMIT_EVERY_S = 1.0
REMOVED = {"__removed__": 1}       # a path present in the previous sample and gone now

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


class RecordingError(Exception):
    """A recording that cannot be read: corrupt, truncated, foreign or from a newer tool."""


# -- flattening ---------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "", out: Optional[dict] = None) -> dict:
    """Nested dicts/lists -> {path: leaf}. List items are '#i', dict keys are str(key);
    empty containers are leaves."""
    out = {} if out is None else out
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}/#{i}" if prefix else f"#{i}", out)
    else:
        out[prefix] = obj
    return out


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


# -- writing ------------------------------------------------------------------------
def _create_file(path: str, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        raise RecordingError(f"{path} exists (use --force to overwrite)") from None
    if overwrite:
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass


class RecordingWriter:
    def __init__(self, path: str, header: dict, overwrite: bool = False, max_bytes: Optional[int] = None):
        _create_file(path, overwrite)
        self.path = path
        self.max_bytes = max_bytes
        self.full = False
        old = os.umask(0o077)          # -wal and -shm files get 0600 too
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
        finally:
            os.umask(old)
        self.db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{c} INTEGER" for c in SCALARS)
        self.db.executescript(f"""
            CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE header(key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE targets(seq INTEGER PRIMARY KEY, mono_ns INTEGER, wall_ns INTEGER, value TEXT);
            CREATE TABLE paths(id INTEGER PRIMARY KEY, path TEXT UNIQUE);
            CREATE TABLE samples(seq INTEGER PRIMARY KEY, mono_ns INTEGER, wall_ns INTEGER,
                                 keyframe INTEGER, data BLOB, {cols});
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
        self.path_ids: dict[str, int] = {}
        self.prev: Optional[dict] = None
        self.n = 0
        self.last_commit = time.monotonic()
        self.db.execute("BEGIN")

    def _ids(self, flat: dict) -> None:
        new = [p for p in flat if p not in self.path_ids]
        for p in new:
            cur = self.db.execute("INSERT INTO paths(path) VALUES (?)", (p,))
            self.path_ids[p] = cur.lastrowid

    def add_sample(self, s: Sample) -> bool:
        """Append one sample. False when the size bound stopped the recording."""
        if self.full:
            return False
        if self.max_bytes is not None and self.size_bytes() >= self.max_bytes:
            self.full = True
            self.add_event(s.mono_ns, "recording_stopped",
                           {"reason": f"size bound of {self.max_bytes} bytes reached"})
            self.commit()
            return False
        flat = flatten(sample_to_dict(s))
        self._ids(flat)
        key = self.prev is None or self.n % KEYFRAME_EVERY == 0
        if key:
            body = [[self.path_ids[p], v] for p, v in flat.items()]
        else:
            body = [[self.path_ids[p], v] for p, v in flat.items() if p not in self.prev or self.prev[p] != v]
            body += [[self.path_ids[p], REMOVED] for p in self.prev if p not in flat]
        blob = zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)
        scal = [flat.get(p) if isinstance(flat.get(p), int) else None for p in SCALARS.values()]
        self.db.execute(f"INSERT INTO samples(seq, mono_ns, wall_ns, keyframe, data, {', '.join(SCALARS)}) "
                        f"VALUES (?, ?, ?, ?, ?{', ?' * len(SCALARS)})",
                        [self.n, s.mono_ns, s.wall_ns, int(key), blob, *scal])
        self.prev = flat
        self.n += 1
        self._maybe_commit()
        return True

    def add_event(self, mono_ns: int, kind: str, value: Any) -> None:
        self.db.execute("INSERT INTO events(mono_ns, kind, value) VALUES (?, ?, ?)",
                        (mono_ns, kind, json.dumps(value, default=str)))
        self._maybe_commit()

    def add_target(self, mono_ns: int, wall_ns: int, value: dict) -> None:
        self.db.execute("INSERT INTO targets(mono_ns, wall_ns, value) VALUES (?, ?, ?)",
                        (mono_ns, wall_ns, json.dumps(value, default=str)))
        self._maybe_commit()

    def set_header(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def _maybe_commit(self) -> None:
        if time.monotonic() - self.last_commit >= COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.last_commit = time.monotonic()
        self.db.execute("BEGIN")

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        if self.db is None:
            return
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
        self.db = None


# -- reading ------------------------------------------------------------------------
class Recording:
    """Read a recording. Raises RecordingError with a one-line reason for files that are not
    readable recordings."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise RecordingError(f"{path}: no such recording")
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise RecordingError(f"{path}: not a memprobe recording (not an SQLite file)")
        self.path = path
        try:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{path}: not a memprobe recording or corrupt ({e})") from None
        if meta.get("magic") != MAGIC:
            raise RecordingError(f"{path}: not a memprobe recording (foreign SQLite file)")
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise RecordingError(f"{path}: corrupt recording (schema version {meta.get('schema_version')!r})") from None
        if version > SCHEMA_VERSION:
            raise RecordingError(f"{path}: written by a newer memprobe (schema {version} > {SCHEMA_VERSION}); "
                                 f"upgrade to read it")
        self.meta = meta
        try:
            self.header = {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM header")}
            self.paths = dict(self.db.execute("SELECT id, path FROM paths"))
            rows = self.db.execute("SELECT seq, mono_ns, keyframe FROM samples ORDER BY seq").fetchall()
        except (sqlite3.DatabaseError, ValueError) as e:
            raise RecordingError(f"{path}: corrupt recording ({e})") from None
        self.seqs = [r[0] for r in rows]
        self.mono = [r[1] for r in rows]
        self.keyframes = [i for i, r in enumerate(rows) if r[2]]

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def host(self) -> HostInfo:
        from .samples import GpuInfo, PlatformProfile
        h = dict(self.header.get("host") or {})
        if h.get("platform") is not None:
            h["platform"] = PlatformProfile(**h["platform"])
        h["gpus"] = [GpuInfo(**g) for g in h.get("gpus") or []]
        return HostInfo(**h)

    def _decode(self, blob: bytes) -> list:
        try:
            return json.loads(zlib.decompress(blob))
        except (zlib.error, ValueError) as e:
            raise RecordingError(f"{self.path}: corrupt sample data ({e})") from None

    def samples(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Sample]:
        """Samples start..stop-1 (indices into the recording), rebuilt exactly."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        k = max([i for i in self.keyframes if i <= start], default=None)
        if k is None:
            raise RecordingError(f"{self.path}: corrupt recording (no keyframe before sample {start})")
        flat: dict = {}
        cur = self.db.execute("SELECT seq, keyframe, data FROM samples WHERE seq >= ? AND seq < ? ORDER BY seq",
                              (self.seqs[k], self.seqs[stop - 1] + 1))
        i = k
        try:
            for seq, key, blob in cur:
                body = self._decode(blob)
                if key:
                    flat = {}
                for pid, v in body:
                    p = self.paths.get(pid)
                    if p is None:
                        raise RecordingError(f"{self.path}: corrupt recording (unknown field id {pid})")
                    if v == REMOVED:
                        flat.pop(p, None)
                    else:
                        flat[p] = v
                if i >= start:
                    yield sample_from_dict(unflatten(flat))
                i += 1
        except sqlite3.DatabaseError as e:
            raise RecordingError(f"{self.path}: corrupt recording ({e})") from None

    def sample(self, i: int) -> Sample:
        return next(self.samples(i, i + 1))

    def timeline(self, columns: list[str]) -> list[tuple]:
        """(mono_ns, wall_ns, *columns) for every sample, from the scalar columns."""
        bad = [c for c in columns if c not in SCALARS]
        if bad:
            raise ValueError(f"no scalar column {bad}")
        return self.db.execute(f"SELECT mono_ns, wall_ns, {', '.join(columns)} FROM samples ORDER BY seq").fetchall()

    def events(self, kind: Optional[str] = None) -> list[tuple[int, str, Any]]:
        q = "SELECT mono_ns, kind, value FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY seq"
        return [(m, k, json.loads(v)) for m, k, v in self.db.execute(q, (kind,) if kind else ())]

    def targets(self) -> list[tuple[int, int, dict]]:
        return [(m, w, json.loads(v)) for m, w, v in
                self.db.execute("SELECT mono_ns, wall_ns, value FROM targets ORDER BY seq")]

    def close(self) -> None:
        self.db.close()
