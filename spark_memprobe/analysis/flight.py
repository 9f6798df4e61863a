"""A flight recorder's directory (feed/flight.py) as something to report on: which file, or
which stretch of rotated files, answers `report DIR --event oom`, `--at TIME` or `--last 10m`,
and the trigger of an event recording as a moment with what grew before it."""
from __future__ import annotations

import os
import re
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Optional

from ..feed.flight import FILE_RE, slug
from ..recording import Recording, RecordingError, RecordingWriter
from .timeline import Reason, Series

GROWTH = (("current", "memory.current"), ("anon", "anon"), ("file", "file"), ("shmem", "shmem"),
          ("kernel", "kernel"), ("host_used", "host MemTotal - MemAvailable"))
MiB = 1 << 20


@dataclass
class FlightFile:
    path: str
    kind: str                  # "base" or "event"
    start_s: float             # UTC second it was opened (its name)
    rest: str                  # "<slug>" (base) or "<trigger kind>-<slug>" (event), maybe "-N"


def flight_files(directory: str) -> list[FlightFile]:
    """The flight recordings in directory, oldest first (by name: nothing else is opened)."""
    out = []
    for name in os.listdir(directory):
        m = FILE_RE.fullmatch(name)
        if m:
            start = time.mktime(time.strptime(m.group(2), "%Y%m%dT%H%M%SZ")) - time.timezone
            out.append(FlightFile(os.path.join(directory, name), m.group(1), start, m.group(3)))
    return sorted(out, key=lambda f: (f.start_s, f.path))


def _matches(f: FlightFile, target: Optional[str]) -> bool:
    return target is None or slug(target) in f.rest


def pick_event(files: list[FlightFile], event: str, target: Optional[str], at_s: Optional[float]) -> FlightFile:
    """The event recording holding a trigger whose kind starts with `event` ("any": every kind)
    (a window opened by one trigger keeps later ones: its name says only the first), of the
    target whose trigger it was unless target names one, nearest to at_s (default: the newest)."""
    found = []
    for f in files:
        if f.kind != "event" or not _matches(f, target):
            continue
        try:
            with Recording(f.path) as rec:
                key = (rec.header.get("flight") or {}).get("key")
                trig = [e.value for e in rec.events("trigger")]
        except RecordingError:
            continue
        if any((event == "any" or t.get("kind", "").startswith(event))
               and (target is not None or t.get("target") == key) for t in trig):
            found.append(f)
    if not found:
        raise RecordingError(f"no '{event}' event recording" + (f" of {target!r}" if target else "") + " there")
    if at_s is None:
        return found[-1]
    return min(found, key=lambda f: abs(f.start_s - at_s))


def extract(files: list[FlightFile], target: str, t0_s: float, t1_s: float, out: str) -> int:
    """Write the samples of target's base files taken between t0_s and t1_s (wall clock) into
    one new recording at out, with the events of that stretch; returns the samples written.
    target: as the files name it, or as `record` was given it (the files name its slug)."""
    w, n = None, 0
    try:
        for f in files:
            if f.kind != "base" or not re.fullmatch(re.escape(slug(target)) + r"(-[0-9]+)?", f.rest) or f.start_s > t1_s:
                continue
            with Recording(f.path) as rec:
                rows = rec.timeline(["mem_total_bytes"])
                idx = [i for i, (_m, wall, _t) in enumerate(rows) if wall is not None and t0_s * 1e9 <= wall <= t1_s * 1e9]
                if not idx:
                    continue
                if w is None:
                    w = RecordingWriter(out, rec.header)
                m0, m1 = rows[idx[0]][0], rows[idx[-1]][0]
                evs = rec.events()
                for i in range(len(evs)):
                    if m0 - 10e9 <= evs.mono[i] <= m1:       # context events a second or so before count
                        e = evs[i]
                        w.add_event(e.mono_ns, e.kind, e.value)
                for s in rec.samples(idx[0], idx[-1] + 1):
                    w.add_sample(s)
                    n += 1
    finally:
        if w is not None:
            w.close()
    return n


def trigger_moments(rec: Recording, series: dict[str, Series], times: list[float], moments_at: list) -> list:
    """moments_at (analysis.timeline.find_moments) with each trigger of an event recording as a
    moment, and every moment moved to a whole sample (at or before it): the flight ring's 100 ms
    samples hold memory.current and meminfo only (feed/flight.py LIGHT_NOTE), too little to explain."""
    full = [i for i, v in enumerate(series["anon"].values) if v is not None] or \
        [i for i, v in enumerate(series["mem_available"].values) if v is not None]

    def whole(i: int) -> int:
        k = bisect_right(full, i) - 1
        return full[k] if k >= 0 else i
    by: dict[int, tuple] = {}
    for i, keys, label, why, before in moments_at:
        j = whole(i)
        if j in by:
            k0, l0, w0, b0 = by[j]
            by[j] = (k0 + [k for k in keys if k not in k0], f"{l0} = {label}", w0 + why, b0 if b0 is not None else before)
        else:
            by[j] = (list(keys), label, list(why), before)
    t0 = rec.mono[0]
    for e in rec.events("trigger"):
        at = rec.index_at(e.mono_ns)
        if at is None:
            continue
        j = whole(at)
        first = next((i for i in full if times[i] >= times[at] - 60), None)
        why = Reason("trigger", f"{e.value.get('message')} at +{(e.mono_ns - t0) / 1e9:.1f} s; "
                                f"{growth(series, first, at)}")
        if j in by:
            k0, l0, w0, b0 = by[j]
            by[j] = (k0 + ["trigger"], f"trigger = {l0}", [why] + w0, b0 if b0 is not None else first)
        else:
            by[j] = (["trigger"], "trigger", [why], first if first != j else None)
    return [(i, *by[i]) for i in sorted(by)]


def growth(series: dict[str, Series], first: Optional[int], last: int) -> str:
    """What grew from sample first to sample last, in words (each series from its own first and
    last reading in that stretch)."""
    if first is None or first >= last:
        return "no earlier whole sample to compare with"
    parts = []
    for key, name in GROWTH:
        vals = [v for v in series[key].values[first:last + 1] if v is not None] if key in series else []
        if len(vals) >= 2 and abs(vals[-1] - vals[0]) >= MiB:
            parts.append(f"{name} {'+' if vals[-1] > vals[0] else '-'}{abs(vals[-1] - vals[0]) / MiB:.1f} MiB")
    return "before it: " + (", ".join(parts) if parts else "nothing moved by 1 MiB or more")
