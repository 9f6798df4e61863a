"""Burst mode of `memprobe record --interval 1ms` (docs/record.md).

The native sampler's C thread samples the target every interval into its ring; each tick of
the record loop, at the screen's rate, drains the ring into the recording as packed columns
(recording.py `bursts`, format in csrc/memprobe.h), with no Python object per burst sample, and
then takes the LiveFeed's own tick: one Python Sample, the context, the target's events. So
ledgers, replay and the report's moments run at the screen's rate, and the recording also
holds every burst sample, where a transient peak between two screen samples is found.
"""
from __future__ import annotations

import array
import struct
import sys
import time
from typing import Callable, Optional

from ..sources.sampler import native_available
from .recorder import Recorder

SCREEN_S = 0.1            # the record loop's rate in burst mode: samples, context, ledgers
MIN_PYTHON_S = 0.01       # cli/args.py MIN_INTERVAL_S: the fastest the Python loop holds
RING_S = 2.0              # the ring holds this long of burst samples between two drains
RING_MIN, RING_MAX = 64, 8192


def burst_plan(feed, interval_s: float) -> tuple[Optional[float], float, str]:
    """(burst interval or None, the record loop's interval, what to tell the user). Without the
    native sampler there is no burst: the Python loop records at its own floor instead."""
    ok, why = native_available()
    if not ok or getattr(feed.follower.sampler, "kind", None) != "native":
        return None, MIN_PYTHON_S, (f"burst mode (--interval under {MIN_PYTHON_S * 1000:g}ms) needs the native "
                                    f"sampler: {why}; recording every {MIN_PYTHON_S * 1000:g} ms instead")
    return interval_s, SCREEN_S, (f"burst mode: the native sampler reads every {interval_s * 1000:g} ms into its "
                                  f"ring; samples, context and ledgers every {SCREEN_S * 1000:g} ms")


def ring_capacity(interval_s: float) -> int:
    return max(RING_MIN, min(RING_MAX, int(RING_S / interval_s)))


def batch_times(packed: bytes) -> tuple[int, int]:
    """(first, last) mono_ns of a packed batch: column 0 is mono_ns and comes first."""
    _v, n, _c, idx, nchg, first = struct.unpack_from("<IIIIIq", packed, 0)
    assert idx == 0, "packed batch without mono_ns first"
    dv = array.array("q", packed[28 + 4 * nchg:28 + 12 * nchg])
    if sys.byteorder != "little":
        dv.byteswap()
    return first, first + sum(dv)


class BurstFeed:
    """A LiveFeed (feed/live.py) whose sampler also samples every interval_s into its ring; each
    tick() first writes what the ring holds into the recording. Everything else is the LiveFeed's."""

    def __init__(self, feed, rec: Recorder, interval_s: float, say: Optional[Callable[[str], None]] = None):
        self.feed, self.rec, self.interval_s = feed, rec, interval_s
        self.say = say or (lambda msg: None)
        self.samples = self.batches = 0
        self._dropped_before = 0        # overruns of the rings of earlier samplers (a restarted target)
        self._dropped_said = 0
        self._layout_id = 0
        self._layout_sig: tuple = ()
        self._pending: Optional[tuple[int, bytes]] = None    # drained, not yet written
        self.capacity = ring_capacity(interval_s)
        rec.w.set_header("burst", {"interval_ns": int(interval_s * 1e9), "ring_samples": self.capacity})
        self._sampler = None
        self._start()

    def __getattr__(self, name):
        return getattr(self.feed, name)     # header, capabilities, target_text() ...

    def _start(self) -> None:
        s = self.feed.follower.sampler
        if s is None:
            return
        s.start(self.interval_s, capacity=self.capacity, nvml=False)
        self._sampler = s
        self._layout_sig = ()

    @property
    def dropped(self) -> int:
        """Burst samples the ring overwrote before a drain took them."""
        return self._dropped_before + (self._sampler.dropped if self._sampler is not None else 0)

    def _layout(self) -> int:
        """Id of the current layout; a new "burst_layout" event when keys or processes changed."""
        s = self._sampler
        sig = (id(s), tuple(s._nkeys(r) for r in ("meminfo", "vmstat", "stat", "events")), tuple(s.pids))
        if sig != self._layout_sig:
            self._layout_id += 1
            self.rec.w.add_event(time.monotonic_ns(), "burst_layout", {"id": self._layout_id, **s.burst_layout()})
            self._layout_sig = sig
        return self._layout_id

    def _write(self) -> None:
        n, packed = self._pending
        first, last = batch_times(packed)
        self.rec.w.add_burst(first, last, n, self._layout(), self.dropped, packed)
        self._pending = None
        self.samples += n
        self.batches += 1

    def drain(self) -> None:
        """Write everything the ring holds now."""
        if self._pending is not None:
            self._write()
        s = self._sampler
        while s is not None and s.t is not None:
            n, packed = s.drain_packed()
            if not n:
                break
            self._pending = (n, packed)
            self._write()

    def tick(self):
        self.drain()
        item, end = self.feed.tick()
        if self.feed.follower.sampler is not self._sampler:     # the target restarted: a new sampler
            self._dropped_before = self.dropped       # counted at the old ring's last drain
            self._start()
        d = self.dropped
        if d > self._dropped_said:
            item.events.append({"kind": "burst", "wall_ns": time.time_ns(), "facts": {"dropped": d},
                                "message": f"burst ring overrun: {d} samples dropped so far (the recording fell "
                                           f"{RING_S:g} s behind the ring)"})
            self._dropped_said = d
        return item, end

    def close(self) -> None:
        """Stop the ring, write what it still holds, close the LiveFeed (Ctrl-C and SIGTERM come
        here through the record loop's cleanup: nothing drained is lost)."""
        try:
            s = self._sampler
            if s is not None and s.t is not None:
                s.stop()
                self.drain()
            self.say(f"burst: {self.samples} samples every {self.interval_s * 1000:g} ms in {self.batches} "
                     f"batches; {self.dropped} dropped by the ring")
        finally:
            self.feed.close()
