"""Writing FeedItems into a recording (recording.py owns the file): samples, each new eBPF
report, target events, and the target's context when it changed."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from typing import Optional

from ..probe_report import report_to_dict
from ..recording import COMMIT_EVERY_S, RecordingWriter
from .items import FeedItem

PROBES_STEADY_S = 10.0     # eBPF reports recorded at least this often when CUDA memory is still


def recording_header(feed, interval_s: float, kv_fraction: float) -> dict:
    """The header of a recording of a LiveFeed (recording.py lists its keys)."""
    return {"host": asdict(feed.header.host), "capabilities": feed.capabilities,
            "target": dict(feed.header.target, description=feed.target_text()),
            "probes": feed.header.probes, "interval_ns": int(interval_s * 1e9), "argv": sys.argv,
            "started_wall_ns": time.time_ns(), "kv_fraction": kv_fraction, "pid": os.getpid()}


class Recorder:
    def __init__(self, path: str, header: dict, overwrite: bool = False, max_bytes: Optional[int] = None,
                 probes_every_s: float = PROBES_STEADY_S, commit_every_s: Optional[float] = COMMIT_EVERY_S,
                 page_size: Optional[int] = None):
        self.path = path
        self.probes_every_s = probes_every_s
        self.w = RecordingWriter(path, header, overwrite=overwrite, max_bytes=max_bytes, commit_every_s=commit_every_s,
                                 page_size=page_size)
        self._report = None
        self._sig: tuple = ()
        self._probes_ns = 0
        self._context: dict = {}

    def write(self, item: FeedItem, flat: Optional[dict] = None) -> None:
        """flat: the sample already flattened (RecordingWriter.add_sample)."""
        mono = item.sample.mono_ns if item.sample is not None else time.monotonic_ns()
        for e in item.events:
            self.w.add_event(mono, "target", e)
        r = item.report
        if r is not None and r is not self._report:
            self._report = r
            # a report when CUDA memory moved (its calls are only in this one), else every
            # PROBES_STEADY_S: a long recording stays small (docs/record.md)
            sig = tuple((c.pid, c.kind, c.outstanding_bytes) for c in r.cuda or [])
            if sig != self._sig or r.cuda_calls or r.ended_mono_ns - self._probes_ns >= self.probes_every_s * 1e9:
                self.w.add_event(r.ended_mono_ns, "probes", report_to_dict(r))
                self._sig, self._probes_ns = sig, r.ended_mono_ns
        for kind, value in (("mapped_files", item.mapped_files), ("other_cgroups", item.other_cgroups),
                            ("kernel", item.kernel)):
            if value is not None and value is not self._context.get(kind):
                if value != self._context.get(kind):        # written when it changed
                    self.w.add_event(mono, kind, value)
                self._context[kind] = value
        if item.sample is not None:
            self.w.add_sample(item.sample, flat)

    def add_engine_facts(self, facts) -> None:
        """engine_facts.EngineFact read from the engine's log, each at its line's own time when
        it has one from the last day (mapped onto the monotonic clock), else now."""
        now_mono, now_wall = time.monotonic_ns(), time.time()
        for f in facts:
            age_s = now_wall - f.wall_s if f.wall_s is not None else None
            mono = now_mono - int(age_s * 1e9) if age_s is not None and 0 <= age_s < 86400 else now_mono
            self.w.add_event(mono, "engine_fact", asdict(f))

    @property
    def samples(self) -> int:
        """Samples written (committed or not)."""
        return self.w.n

    @property
    def saved(self) -> int:
        """Samples committed: what a reader will find."""
        return self.w.saved

    @property
    def full(self) -> bool:
        return self.w.full

    def size_bytes(self) -> int:
        return self.w.size_bytes()

    def commit(self) -> None:
        """Commit now (the flight recorder does every second, whatever it wrote)."""
        self.w.commit()

    def close(self) -> Optional[str]:
        """Commit and close; returns why a -wal is left, if one is."""
        return self.w.close()
