"""Waking on memory events instead of polling for them: PSI triggers and a memory cgroup's
limit events. Both give a descriptor for poll(); neither reads anything until asked.

    t = PsiTrigger("/proc/pressure/memory", stall_us=100_000, window_us=2_000_000)
    w = EventsWatch("/sys/fs/cgroup/memory/docker/<id>", version=1)
    p = select.poll(); p.register(t.fileno(), t.poll_events); p.register(w.fileno(), w.poll_events)
    p.poll(timeout_ms)                      # wakes on pressure, an OOM, or the timeout
    t.fired(); w.changes()                  # -> True/False; {"oom_kill": 1, ...} increments

Every file is opened with O_NOFOLLOW and checked to be a regular file (a planted link,
FIFO or device is refused with OSError). The caller closes what it made (close())."""
from __future__ import annotations

import errno
import os
import select
import stat
from typing import Optional

from .parse import parse_kv, parse_single


def _open_regular(path: str, flags: int = os.O_RDONLY) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path}: not a regular file")
    return fd


def usage_from_raw(raw: Optional[bytes]) -> Optional[int]:
    """memory.current / memory.usage_in_bytes text (EventsWatch.fds["usage"]) as bytes."""
    v = parse_single(raw) if raw else None
    return v if isinstance(v, int) else None


class Reread:
    """A kernel file kept open for one pread at offset 0 at each look (the flight recorder's
    100 ms ring reads /proc/meminfo through it, with every usage counter in one call)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = _open_regular(path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PsiTrigger:
    """A PSI trigger: fires when tasks stalled on memory for at least stall_us within any
    window_us (kind "some": at least one task; "full": all non-idle tasks). path is
    /proc/pressure/memory for the host or a cgroup v2 memory.pressure. The kernel wants
    500 ms <= window_us <= 10 s and, without CAP_SYS_RESOURCE (root in a container or under a
    hardened unit), a window that is a multiple of 2 s, checked then only every 2 s
    (Documentation/accounting/psi.rst, "Monitoring for pressure thresholds"; kernel/sched/psi.c
    psi_trigger_create); other windows are EINVAL. A trigger fires at most once per window and
    stays armed until close()."""

    poll_events = select.POLLPRI

    def __init__(self, path: str, stall_us: int, window_us: int, kind: str = "some"):
        if kind not in ("some", "full"):
            raise ValueError(f"PSI trigger kind {kind!r}: 'some' or 'full'")
        self.path = path
        self.fd = _open_regular(path, os.O_RDWR)
        try:
            # the trigger is the write itself; the NUL ends the string the kernel parses (psi.rst example)
            os.write(self.fd, f"{kind} {int(stall_us)} {int(window_us)}".encode() + b"\0")
        except OSError:
            os.close(self.fd)
            raise
        self._poll = select.poll()
        self._poll.register(self.fd, self.poll_events)

    def fileno(self) -> int:
        return self.fd

    def fired(self, timeout_s: float = 0.0) -> bool:
        """Did the trigger fire (within timeout_s)? See answer()."""
        return any(self.answer(ev) for _fd, ev in self._poll.poll(int(timeout_s * 1000)))

    def answer(self, events: int) -> bool:
        """Did it fire, by the events a poll() returned for fileno()? A caller polling the fd
        itself must read that poll's answer: polling a trigger clears its event
        (kernel/sched/psi.c psi_trigger_poll), so asking again says no. POLLERR: the file went
        away (its cgroup was removed), which raises OSError: it can never fire again."""
        if events & select.POLLERR:
            raise OSError(errno.ENODEV, f"{self.path}: PSI trigger gone (cgroup removed?)")
        return bool(events & select.POLLPRI)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class EventsWatch:
    """A memory cgroup's limit events as counters, what grew since the last look, and its usage.

    v2: memory.events (oom_kill, oom, max, high, ...); the kernel notifies pollers when it
        changes (cgroup_file_notify: POLLPRI), so fileno() is that file.
    v1: memory.oom_control's oom_kill (Linux 4.13+) and memory.failcnt, reported as "max" (both
        count failed charges against the limit); fileno() is an eventfd registered through
        cgroup.event_control on memory.oom_control, signalled on every OOM of the cgroup and
        when the cgroup is removed (Documentation/admin-guide/cgroup-v1/memory.rst, "OOM Control").
    fds["usage"]: memory.current (v2) or memory.usage_in_bytes (v1), the counter the limit is
    checked against, kept open for the flight recorder's 100 ms ring (usage_from_raw reads it)."""

    def __init__(self, cgroup_dir: str, version: int):
        self.dir = cgroup_dir
        self.version = version
        self.fds: dict[str, int] = {}
        self.efd: Optional[int] = None
        names = {"events": "memory.events", "usage": "memory.current"} if version == 2 else \
            {"events": "memory.oom_control", "failcnt": "memory.failcnt", "usage": "memory.usage_in_bytes"}
        try:
            for role, name in names.items():
                self.fds[role] = _open_regular(f"{cgroup_dir}/{name}")
            if version == 1:
                self._register_v1()
        except OSError:
            self.close()
            raise
        self.poll_events = select.POLLPRI if version == 2 else select.POLLIN
        self._raw: dict = {}
        self._parsed: dict[str, int] = {}
        self.last = self.counters()

    def _register_v1(self) -> None:
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ctl = _open_regular(f"{self.dir}/cgroup.event_control", os.O_WRONLY)
        try:
            os.write(ctl, f"{self.efd} {self.fds['events']}".encode())
        finally:
            os.close(ctl)

    def fileno(self) -> int:
        return self.fds["events"] if self.efd is None else self.efd

    def counters(self) -> dict[str, int]:
        """The event counters now (v2 names); a file that cannot be read or parsed is left out.
        Parsed only when the text changed since the last look (the once-a-second v1 check)."""
        raw = {}
        for role in ("events", "failcnt"):
            if role in self.fds:
                try:
                    raw[role] = os.pread(self.fds[role], 4096, 0)
                except OSError:
                    raw[role] = None
        if raw == self._raw:
            return dict(self._parsed)
        self._raw = raw
        out: dict[str, int] = {}
        kv = parse_kv(raw["events"]).values if raw.get("events") else {}
        if self.version == 2:
            out.update(kv)
        elif "oom_kill" in kv:
            out["oom_kill"] = kv["oom_kill"]
        v = parse_single(raw["failcnt"]) if raw.get("failcnt") else None
        if isinstance(v, int):
            out["max"] = v
        self._parsed = out
        return dict(out)

    def changes(self) -> dict[str, int]:
        """{counter: increment} of the counters that grew since the last call (or since the
        watch was made); clears the descriptor's readiness."""
        if self.efd is not None:
            try:
                os.eventfd_read(self.efd)
            except BlockingIOError:
                pass
        now = self.counters()
        grew = {k: v - self.last[k] for k, v in now.items() if k in self.last and v > self.last[k]}
        self.last.update(now)
        return grew

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        if self.efd is not None:
            os.close(self.efd)
            self.efd = None
