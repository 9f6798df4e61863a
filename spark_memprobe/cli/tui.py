"""The interactive loop behind `attach` and `replay` on a terminal: keys, refresh, redraw.

The screen itself is views/tui.py (pure rendering); this module owns the terminal: cbreak
mode for single keys, the alternate screen, and restoring both on every exit path."""
from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from typing import Optional

from ..feed import FeedHeader, FeedItem, ledger_inputs
from ..ledger import build_ledger
from ..feed.ticker import Ticker
from ..views.tui import TuiState, render_screen, trend_point

KEYS = {b"q": "quit", b"Q": "quit", b"p": "pause", b" ": "pause", b"?": "help", b"h": "help",
        b"\x1b[D": "back", b"\x1b[C": "forward", b"\x1b[5~": "page_back", b"\x1b[6~": "page_forward",
        b"\x1b[H": "first", b"\x1b[F": "last", b"\x1b[1~": "first", b"\x1b[4~": "last", b"\x03": "quit"}
MAX_FPS = 10.0


class Terminal:
    """cbreak + alternate screen while alive; everything restored in close()."""

    def __init__(self):
        from rich.console import Console
        from rich.live import Live
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd) if os.isatty(self.fd) else None
        if self.saved is not None:
            tty.setcbreak(self.fd)
        self.console = Console()
        self.live = Live(console=self.console, screen=True, auto_refresh=False, transient=True)
        self.live.start()

    def keys(self, timeout: float) -> list[str]:
        if self.saved is None:
            time.sleep(max(0.0, timeout))
            return []
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return []
        data = os.read(self.fd, 64)
        out, i = [], 0
        while i < len(data):
            for seq in sorted(KEYS, key=len, reverse=True):
                if data.startswith(seq, i):
                    out.append(KEYS[seq])
                    i += len(seq)
                    break
            else:
                i += 1
        return out

    def draw(self, st: TuiState) -> None:
        size = self.console.size
        self.live.update(render_screen(st, size.width, size.height), refresh=True)

    def close(self) -> None:
        self.live.stop()
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def apply_item(st: TuiState, item: FeedItem, header: FeedHeader, kv_fraction: float) -> None:
    for e in item.events:
        st.events.append(f"{e['kind']}: {e['message']}")
    if item.report is not None:
        st.report = item.report
    if item.sample is not None:
        st.sample = item.sample
        # the ledger's inputs once (what feed.ledger_of does): the screen's page-cache panel shows two of them
        inputs = ledger_inputs(item, header)
        st.ledger = build_ledger(header.host, item.sample, inputs, kv_fraction=kv_fraction)
        st.page_cache, st.mapped_files = inputs.page_cache, inputs.mapped_files
        st.history.append(trend_point(item.sample, st.ledger))


def run_live(feed, interval_s: float, kv_fraction: float, recorder=None) -> Optional[dict]:
    """Follow the live feed on the terminal until q, Ctrl-C/SIGTERM or the target ends.
    Returns the final event (a dict) when the target ended."""
    from .record import recording_status
    st = TuiState(host=feed.header.host, target=feed.target_text(), probes=feed.header.probes)
    term = Terminal()
    end = None
    try:
        tick = Ticker(interval_s)
        ticks: list[float] = []
        while True:
            if not st.paused or recorder is not None:
                item, end = feed.tick()
                if recorder is not None:
                    recorder.write(item)
                    st.recording = recording_status(recorder)
                if not st.paused:
                    apply_item(st, item, feed.header, kv_fraction)
                    st.target = feed.target_text()
                ticks.append(time.monotonic())
                del ticks[:-20]
                st.rate_hz = (len(ticks) - 1) / (ticks[-1] - ticks[0]) if len(ticks) > 1 and ticks[-1] > ticks[0] else None
                if end is not None:
                    st.ended = f"target ended: {end['message']}  (q to quit)"
            term.draw(st)
            if end is not None:
                while "quit" not in term.keys(60.0):
                    pass
                break
            tick.next()
            quit_ = False
            while True:
                keys = term.keys(min(tick.left(), 1.0 / MAX_FPS))
                for k in keys:
                    if k == "quit":
                        quit_ = True
                    elif k == "pause":
                        st.paused = not st.paused
                    elif k == "help":
                        st.show_help = not st.show_help
                if keys:
                    term.draw(st)
                if quit_ or tick.due():
                    break
            if quit_:
                break
    finally:
        term.close()
    return end


def run_replay(feed, kv_fraction: float, speed: float = 1.0) -> None:
    """Play a recording at its own pace (x speed), with pause, step and seek."""
    n = len(feed)
    st = TuiState(host=feed.header.host, target=feed.header.target.get("description") or
                  feed.header.target.get("cgroup_path") or "?", mode="replay", probes=feed.header.probes)
    term = Terminal()
    i = 0
    try:
        last_shown = -1
        tick = Ticker(1.0)
        while True:
            if i != last_shown:
                item = feed.item(i)
                if i != last_shown + 1:
                    st.history.clear()       # a seek: trends restart from here
                apply_item(st, item, feed.header, kv_fraction)
                st.position = (i, n)
                last_shown = i
                term.draw(st)
            gap = (feed.rec.mono[i + 1] - feed.rec.mono[i]) / 1e9 / speed if i + 1 < n else 1.0
            tick.next(gap)
            while True:
                # paused: nothing is due, so wait for keys at the screen's rate (not in a busy loop)
                keys = term.keys(1.0 / MAX_FPS if st.paused else min(tick.left(), 1.0 / MAX_FPS))
                moved = False
                for k in keys:
                    if k == "quit":
                        return
                    if k == "pause":
                        st.paused = not st.paused
                        tick.restart(gap)
                    elif k == "help":
                        st.show_help = not st.show_help
                    elif k in ("back", "forward", "page_back", "page_forward", "first", "last"):
                        step = {"back": -1, "forward": 1, "page_back": -max(1, n // 10),
                                "page_forward": max(1, n // 10)}.get(k, 0)
                        i = 0 if k == "first" else n - 1 if k == "last" else min(n - 1, max(0, i + step))
                        st.ended = None
                        moved = True
                if keys and not moved:
                    term.draw(st)
                if moved:
                    tick.restart()
                    break
                if not st.paused and tick.due():
                    if i + 1 < n:
                        i += 1
                    else:
                        st.paused = True
                        st.ended = "end of recording (q to quit, Home to restart)"
                        term.draw(st)
                    break
    finally:
        term.close()
