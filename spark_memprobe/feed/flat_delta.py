"""A sampler's base ticks as rows the C sampler writes, for the flight recorder (docs/performance.md,
Issue 22). A busy target's base tick used to build a Sample, flatten it and compare its ~150 paths
with the last one written, then JSON-encode and deflate what changed; here the C sampler compares
its raw vector with the last one kept and writes the row itself (csrc/memprobe.h mp_delta_row):
the changed columns become path ids and values through the layout burst records are read with
(sources/native.py burst_layout, recording.burst_value) and a map this module builds per file.
Anything else is left to the caller's whole path, whose flattened sample rebase() keeps: a process
that came or went (C compares cgroup.procs), a file that failed or grew a key, a limit event,
NVML notes, a column no path of the kept sample holds."""
from __future__ import annotations

from array import array
from typing import Optional

from ..recording import SCALARS, burst_value, deflate, flatten, json_text, scalar_values


EVENTS = "cgroup/events/"       # a limit event or an OOM kill: the whole path (the Follower keeps that sample)
# recording.py SCALARS: the cgroup's come from C (mp_delta_row), the host's from the extra paths
CG_SCALARS = [p for p in SCALARS.values() if p.startswith("cgroup/")]
HOST_SCALARS = [p for p in SCALARS.values() if not p.startswith("cgroup/")]
assert list(SCALARS.values()) == CG_SCALARS + HOST_SCALARS


class FlatDelta:
    """row() gives a tick's row, or None: build the sample whole (a fresh tick of the sampler),
    then rebase(its flat, sampler.last_c)."""

    def __init__(self, sampler):
        """sampler: the host's, or a target's whose processes it can watch (for_target)."""
        self.sampler = sampler
        self.flat: Optional[dict] = None
        self.by_col: dict[int, list[tuple[str, bool, bool]]] = {}   # column -> (path, limit, hundredths)
        self.lay: dict = {}
        self.gpu_keys: Optional[set] = None          # NVML read each tick: its paths, compared here
        self.maps: Optional[tuple] = None            # row(): (a file's path ids, its row map, extra ids)
        self.wholes = 0                              # ticks row() left to the whole path

    @classmethod
    def for_target(cls, sampler) -> Optional["FlatDelta"]:
        """A target's: its cgroup's processes are checked at every row (the caller marks them,
        mark(), before it lists them for a whole tick); None without the native sampler or a cgroup."""
        if not hasattr(sampler, "watch_procs") or not sampler.watch_procs():
            return None
        return cls(sampler)

    def mark(self) -> None:
        self.sampler.mark_procs()

    def rebase(self, flat: dict, c) -> None:
        """flat: the flattened sample of struct c (the sampler's last tick), as written."""
        self.lay = lay = self.sampler.burst_layout()
        limits, hundredths = set(lay["limits"]), set(lay["hundredths"])
        self.by_col = {}
        for path, col in lay["fields"].items():
            if path in flat and not path.startswith(EVENTS):
                self.by_col.setdefault(col, []).append((path, path in limits, path in hundredths))
        live_nvml = self.sampler.want_nvml and not self.sampler.nvml_error
        self.gpu_keys = {p for p in flat if p == "gpus" or p.startswith("gpus/")} if live_nvml else None
        self.maps = None
        self.sampler.delta_base(c)
        self.flat = flat

    def _changed(self, c, pairs) -> Optional[dict]:
        if pairs is None:
            return None
        out, lay = {}, self.lay
        for col, v in pairs:
            paths = self.by_col.get(col)
            if paths is None:
                return None            # a column no kept path holds (or a limit event)
            for path, limit, hundredths in paths:
                out[path] = burst_value(lay, path, v) if limit else v / 100 if hundredths else v
        if self.gpu_keys is not None:
            notes: list[str] = []
            gpus = self.sampler.build("gpus", c, notes)
            g = flatten(gpus, "gpus")
            if notes or g.keys() != self.gpu_keys:
                return None
            out.update((p, v) for p, v in g.items() if self.flat[p] != v)
        return out

    # -- rows encoded in C (csrc/memprobe.h mp_delta_row) ------------------------------------
    def row(self, ids: dict, gpu_ids: set, extra_paths: list[str] = (), extra=None,
            extra_flat: Optional[dict] = None, keep: bool = False) -> Optional[tuple]:
        """A tick written as a row by C: (mono_ns, wall_ns, blob, scalars, gpu_data,
        the sample after it) for RecordingWriter.add_row, or None: build the sample whole.
        ids, gpu_ids: the file's path ids; extra_paths (paths of every sample, the host's meminfo),
        extra (sources/native.py RowValues: their values and which moved since this file's last
        sample) and extra_flat ({path: value} of all of them). keep: flat is kept up to date
        (the host's, whose meminfo and vmstat are wanted every tick) and NVML's paths compared
        here; else flat stays the kept whole sample and the row's is built when asked (Later):
        a target's, whose sampler reads no NVML (feed/multi.py)."""
        if self.flat is None or (self.gpu_keys is not None and not keep):
            return None
        if self.maps is None or self.maps[0] is not ids:
            self.maps = (ids, *self._map(ids, extra_paths))
        c, blob, scal, since, pairs = self.sampler.delta_row(self.maps[1], extra, self.maps[2],
                                                             self.gpu_keys is None, keep)
        changed = self._changed(c, pairs) if keep and blob is not None else {}
        if blob is None or changed is None:
            self.flat = None
            self.wholes += 1
            return None
        if not keep:
            scal += scalar_values(extra_flat or {}, HOST_SCALARS)
            return c.mono_ns, c.wall_ns, blob, scal, None, Later(self, since, extra_flat or {})
        flat = self.flat
        flat.update(changed)
        gpu_data = None
        if self.gpu_keys is not None:            # NVML's changes: JSON here, and the zlib of it all
            items = [[ids[p], v] for p, v in changed.items() if p == "gpus" or p.startswith("gpus/")]
            if items:
                text = json_text(items)
                blob = blob[:-1] + ("," if len(blob) > 2 else "").encode() + text[1:].encode()
                gpu_data = text if any(i[0] in gpu_ids for i in items) else None
            blob = deflate(blob)
        scal = scalar_values(flat)
        return c.mono_ns, c.wall_ns, blob, scal, gpu_data, flat

    def _map(self, ids: dict, extra_paths: list[str]):
        from ..sources.native import ROW_HUNDREDTHS, ROW_INT, ROW_LIMIT, row_ids    # row() is native's only
        lay = self.lay
        items = sorted((col, ids[path], ROW_LIMIT if limit else ROW_HUNDREDTHS if hundredths else ROW_INT)
                       for col, paths in self.by_col.items() for path, limit, hundredths in paths if path in ids)
        scal_cols = [lay["fields"].get(p, -1) if p in self.flat else -1 for p in CG_SCALARS]
        return (self.sampler.row_map(items, lay.get("limit_floor"), scal_cols),
                row_ids([ids.get(p, -1) for p in extra_paths]))


class Later:
    """The flattened sample a row brought its file to, built when asked (whole()): the kept whole
    sample, the columns that differ from it since (mp_delta_row) and the extra paths."""
    __slots__ = ("base", "by_col", "lay", "since", "extra")

    def __init__(self, d: FlatDelta, since: tuple[bytes, bytes], extra: dict):
        self.base, self.by_col, self.lay = d.flat, d.by_col, d.lay
        self.since, self.extra = since, extra

    def __call__(self) -> dict:
        return self.whole()

    def whole(self) -> dict:
        f, lay = dict(self.base), self.lay
        cols, vals = array("i"), array("q")
        cols.frombytes(self.since[0])
        vals.frombytes(self.since[1])
        for col, v in zip(cols, vals):
            for path, limit, hundredths in self.by_col.get(col, ()):
                f[path] = burst_value(lay, path, v) if limit else v / 100 if hundredths else v
        f.update(self.extra)
        return f
