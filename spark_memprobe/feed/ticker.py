"""The one fixed-rate schedule of every loop that samples or plays back (attach, record, the
live and replay screens, export).

Deadlines are start + k * interval on the monotonic clock, so a slow tick shortens the next
wait instead of shifting every later one (no drift). A tick that overran its deadline starts
the schedule again from now: after a stall the loop goes on at its rate, never with a burst
of catch-up ticks."""
from __future__ import annotations

import select
import time
from typing import Optional


class Ticker:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.deadline = time.monotonic()

    def next(self, interval_s: Optional[float] = None) -> float:
        """Move to the next deadline (interval_s after the last one, default the ticker's);
        returns the seconds left until it, 0 when it has already passed."""
        self.deadline += self.interval_s if interval_s is None else interval_s
        now = time.monotonic()
        if self.deadline < now:
            self.deadline = now
        return self.deadline - now

    def within(self, s: float) -> float:
        """Bring the deadline to at most s from now; returns the seconds left until it."""
        now = time.monotonic()
        self.deadline = max(now, min(self.deadline, now + s))
        return self.deadline - now

    def restart(self, delay_s: float = 0.0) -> None:
        """The next deadline is delay_s from now (after a pause or a seek)."""
        self.deadline = time.monotonic() + delay_s

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def due(self) -> bool:
        return time.monotonic() >= self.deadline


class EventWake:
    """A sleep between two ticks that memory events end early, so that a burst of pressure is
    sampled at once rather than at the next deadline: a PSI trigger (psi_path: a v2 cgroup's
    memory.pressure, or the host's /proc/pressure/memory where the memory controller is on v1
    and has none) and the limit events of cgroup_dir (memory.events on v2; an OOM through
    memory.oom_control's eventfd on v1), both from sources/psi.py. Nothing is read while it
    sleeps. After an early wake the next wait sleeps its time out: at most one extra tick per
    interval, so a cgroup that lives at its limit (memory.events "max" grows on every failed
    charge) cannot turn the loop into a spin. What cannot be watched is left out (said by
    `missing`): then it is a plain sleep."""

    def __init__(self, psi_path: Optional[str], cgroup_dir: Optional[str], version: Optional[int],
                 stall_us: int = 100_000, window_us: int = 2_000_000):
        # the defaults are the flight recorder's trigger (docs/flight-recorder.md); a 2 s window
        # is one any caller may ask for (sources/psi.py)
        from ..sources.psi import EventsWatch, PsiTrigger
        self.cgroup_dir = cgroup_dir
        self.stall_us, self.window_us = stall_us, window_us
        self.psi = self.watch = None
        self.missing: list[str] = []
        self.armed = True
        self._poll = select.poll()
        if psi_path:
            try:
                self.psi = PsiTrigger(psi_path, stall_us, window_us)
                self._poll.register(self.psi.fileno(), self.psi.poll_events)
            except OSError as e:
                self.missing.append(f"PSI trigger on {psi_path}: {e.strerror or e}")
        if cgroup_dir and version:
            try:
                self.watch = EventsWatch(cgroup_dir, version)
                self._poll.register(self.watch.fileno(), self.watch.poll_events)
            except OSError as e:
                self.missing.append(f"limit events of {cgroup_dir}: {e.strerror or e}")

    def wait(self, timeout_s: float) -> Optional[str]:
        """Sleep timeout_s, or until an event: then what woke it (one line), else None."""
        if not self.armed or (self.psi is None and self.watch is None):
            self.armed = True
            time.sleep(max(0.0, timeout_s))
            return None
        end = time.monotonic() + max(0.0, timeout_s)
        while True:
            left = end - time.monotonic()
            ready = self._poll.poll(max(1, int(left * 1000 + 0.999))) if left > 0 else []
            if not ready:
                return None
            why = self._why(dict(ready))
            if why:
                self.armed = False
                return why

    def _why(self, ready: dict) -> str:
        """What woke the poll ("" when nothing that matters grew), its readiness cleared (a PSI
        trigger by this poll's answer: PsiTrigger.answer)."""
        why = []
        ev = ready.get(self.psi.fileno(), 0) if self.psi is not None else 0
        try:
            if ev and self.psi.answer(ev):
                why.append(f"memory pressure ({self.psi.path}: some task stalled >= {self.stall_us / 1e3:g} ms "
                           f"within {self.window_us / 1e6:g} s)")
        except OSError:                   # its cgroup was removed: it can never fire again
            self._poll.unregister(self.psi.fileno())
            self.psi.close()
            self.psi = None
        if self.watch is not None and self.watch.fileno() in ready:
            grew = self.watch.changes()
            if grew:
                what = ", ".join(f"{k} +{v}" for k, v in sorted(grew.items()))
                why.append(f"limit events of {self.cgroup_dir} ({what})")
        return "; ".join(why)

    def close(self) -> None:
        for obj in (self.psi, self.watch):
            if obj is not None:
                obj.close()
        self.psi = self.watch = None
