"""A sampler's ticks as one flattened sample kept up to date from what C says changed, for the
flight recorder's base ticks (docs/performance.md, Issue 22). A busy target's base tick used to
build a Sample, flatten it and compare its ~150 paths with the last one written; here the C
sampler compares its raw vector with the last one kept (csrc/memprobe.h mp_sample_delta) and
only the columns that changed become paths and values, through the same layout burst records are
read with (sources/native.py burst_layout, recording.burst_value). Anything else is left to the
caller's whole path, whose flattened sample rebase() keeps: a process that came or went (C
compares cgroup.procs), a file that failed or grew a key, a limit event, NVML notes, a column no
path of the kept sample holds."""
from __future__ import annotations

from typing import Optional

from ..recording import burst_value, flatten

EVENTS = "cgroup/events/"       # a limit event or an OOM kill: the whole path (the Follower keeps that sample)


class FlatDelta:
    """step() updates `flat` in place and returns what changed ({path: value}), or None: build the
    sample whole (a fresh tick of the sampler), then rebase(its flat, sampler.last_c)."""

    def __init__(self, sampler):
        """sampler: the host's, or a target's whose processes it can watch (for_target)."""
        self.sampler = sampler
        self.flat: Optional[dict] = None
        self.by_col: dict[int, list[tuple[str, bool, bool]]] = {}   # column -> (path, limit, hundredths)
        self.lay: dict = {}
        self.gpu_keys: Optional[set] = None          # NVML read each tick: its paths, compared here
        self.wholes = 0                              # ticks step() left to the whole path

    @classmethod
    def for_target(cls, sampler) -> Optional["FlatDelta"]:
        """A target's: its cgroup's processes are checked at every step (the caller marks them,
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
        self.sampler.delta_base(c)
        self.flat = flat

    def step(self) -> Optional[dict]:
        if self.flat is None:
            return None
        c, pairs = self.sampler.sample_delta()
        changed = self._changed(c, pairs)
        if changed is None:
            self.flat = None
            self.wholes += 1
            return None
        self.flat.update(changed)
        return changed

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
