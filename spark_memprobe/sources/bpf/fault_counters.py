"""Page faults per process from the counters the kernel keeps anyway: minflt and majflt of
/proc/<pid>/stat (fields 10 and 12, proc(5); the whole thread group, exited threads included,
fs/proc/array.c do_task_stat). Nothing runs per fault: the cost is one read per process per poll.

Counts are deltas since start(): a process alive at start counts from its value then, one
started later from zero. A process that exits keeps its last polled value, so the faults of its
last poll interval are missed (the perf-event probe, --fault-events, sees those)."""
from __future__ import annotations

import os
from typing import Iterable, Optional


def read_proc_pid_stat_faults(proc: str, pid: int) -> Optional[tuple[int, int]]:
    """(starttime in clock ticks, minflt + majflt) of one process, None when it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data.rpartition(b")")[2].split()     # comm (field 2) may hold spaces and ')'
    try:
        # rest[0] is field 3 (state): field N is rest[N - 3]
        return int(rest[19]), int(rest[7]) + int(rest[9])
    except (IndexError, ValueError):
        return None


def all_pids(proc: str) -> list[int]:
    try:
        return [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return []


class FaultCounters:
    """Fault deltas per process since start(), from /proc/<pid>/stat."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self.base: dict[tuple[int, int], int] = {}     # (pid, starttime) -> count at start
        self.seen: dict[tuple[int, int], int] = {}     # (pid, starttime) -> delta at the last poll

    def start(self, pids: Iterable[int]) -> None:
        for pid in pids:
            r = read_proc_pid_stat_faults(self.proc, pid)
            if r is not None:
                self.base[(pid, r[0])] = r[1]

    def poll(self, pids: Iterable[int]) -> None:
        for pid in pids:
            r = read_proc_pid_stat_faults(self.proc, pid)
            if r is not None:
                key = (pid, r[0])
                self.seen[key] = r[1] - self.base.get(key, 0)

    def faults(self) -> dict[int, int]:
        """pid -> faults since start (the newest process of a reused pid wins), zeros left out."""
        out: dict[int, int] = {}
        for (pid, _), n in sorted(self.seen.items(), key=lambda kv: kv[0][1]):
            if n > 0:
                out[pid] = n
        return out
