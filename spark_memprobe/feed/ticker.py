"""The one fixed-rate schedule of every loop that samples or plays back (attach, record, the
live and replay screens, export).

Deadlines are start + k * interval on the monotonic clock, so a slow tick shortens the next
wait instead of shifting every later one (no drift). A tick that overran its deadline starts
the schedule again from now: after a stall the loop goes on at its rate, never with a burst
of catch-up ticks."""
from __future__ import annotations

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
