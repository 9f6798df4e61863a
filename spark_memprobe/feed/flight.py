"""The flight recorder (docs/flight-recorder.md): the host and every target recorded at a low
base rate into rotated recordings in one directory, and around a trigger (a PSI stall, an OOM
kill or failed charge, a container exit or restart, MemAvailable low) an event recording at
100 ms that starts with the last minute kept in memory.

Layout, one file per target per rotation period (a plain recording: report and replay read
each one as they read any other):
    flight-base-<start>-<slug>.db      base rate, one per target (and "host") per period
    flight-event-<start>-<kind>-<slug>.db   the ring before a trigger and 100 ms samples after
<start> is the UTC second the file was opened (YYYYmmddTHHMMSSZ). Only names of this form,
regular files of ours, are ever rotated or deleted; a name taken already gets a -N suffix
(a restart continues in the same directory and overwrites nothing).

What the ring holds, per 100 ms: the text of the host's /proc/meminfo and of each target's usage
counter (memory.current or memory.usage_in_bytes), one pread each, parsed only when a trigger
writes them out; plus each target's full base samples of the last minute: reading every target
whole at 10 Hz would cost ten times the base (docs/performance.md, Issue 22). Those 100 ms samples
carry LIGHT_NOTE; the report explains moments at full samples.

At the base rate a target is read whole only when its usage counter moved since its last whole
reading, or that reading is STAT_MAX_AGE_S old (the exporter's rule, feed/context.py): an idle
target costs its ring pread and nothing else. Its base sample carries the host's meminfo of the
same tick, flattened once for all targets; the host's vmstat (192 counters, most moving every
second) is only in the host's base file, and in event files (VMSTAT_NOTE says so). A base tick
outside a window whose reading only moved values is written from what C says changed, without
building a Sample (feed/flat_delta.py); anything else goes the whole way."""
from __future__ import annotations

import collections
import dataclasses
import fcntl
import os
import re
import select
import stat
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..recording import SIDECARS, RecordingError, flatten
from ..samples import CgroupSample, Sample
from ..sources.bpf import ProbeOptions, ProbeSession
from ..sources.capabilities import checks_to_dicts, run_checks
from ..sources.parse import MalformedFile
from ..sources.procfs import checked_kv, meminfo_from_kv
from ..sources.psi import EventsWatch, PsiTrigger, Reread, usage_from_raw
from ..sources.sampler import open_preads, open_ring, open_sampler
from ..sources.targets.resolver import target_to_dict
from .context import STAT_MAX_AGE_S, HostKernel
from .flat_delta import FlatDelta, Later
from .host import open_host
from .items import FeedItem
from .live import ProbeWorker
from .multi import TargetSet, Watched
from .recorder import PROBES_STEADY_S, Recorder

FILE_RE = re.compile(r"flight-(base|event)-([0-9]{8}T[0-9]{6}Z)-([A-Za-z0-9_.-]{1,120})\.db")
LIGHT_NOTE = "flight ring: 100 ms sample of memory.current and host meminfo only"
VMSTAT_NOTE = "host /proc/vmstat: in this directory's host base file (flight-base-*-host.db)"
KERNEL_EVERY_S = 10.0      # zoneinfo, buddyinfo, PSI read this often outside a window (1 ms a read here)
HOST = "host"
RING_FELL = "ring"          # by_fd's object for the C ring's eventfd
_NONE = object()
# a base file commits one row (~200 bytes busy) a second, and each commit writes its changed page
# whole to the -wal: 1 KiB pages write less than half of what 4 KiB ones do (docs/performance.md)
BASE_PAGE_BYTES = 1024
MEMINFO_CAP = 16384         # /proc/meminfo is one seq_file record (~1.5 KiB): one pread reads it whole


@dataclass
class FlightOptions:
    directory: str
    base_s: float = 1.0
    fast_s: float = 0.1                 # ring and trigger rate
    ring_s: float = 60.0                # kept before a trigger
    after_s: float = 60.0               # recorded at fast_s after it
    rotate_s: float = 3600.0
    retain_s: Optional[float] = 86400.0
    max_total_bytes: Optional[int] = 2 << 30
    psi_stall_us: Optional[int] = 100_000     # None: no PSI trigger
    psi_window_us: int = 2_000_000
    available_below_bytes: Optional[int] = None
    kv_fraction: float = 0.9
    bpf: bool = False                   # eBPF probes in trigger windows (WindowProbes)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60] or "target"


def open_directory(path: str) -> int:
    """Create path (0700) or take an existing directory of ours, never through a link, and hold
    an exclusive lock on it: one recorder per directory. Returns its descriptor."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise RecordingError(f"{path}: owned by uid {st.st_uid}, not by this user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)            # what we write there is for this user only
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RecordingError(f"{path}: another flight recorder is writing there") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def our_files(directory: str) -> list[tuple[str, float, int]]:
    """(name, newest mtime, bytes with its sidecars) of each flight recording in directory: a
    name FILE_RE matches, a regular file owned by this user. Nothing else is looked at."""
    out = []
    me = os.geteuid()
    with os.scandir(directory) as it:
        for e in it:
            if not FILE_RE.fullmatch(e.name):
                continue
            try:
                st = os.lstat(os.path.join(directory, e.name))
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
                continue
            mtime, size = st.st_mtime, st.st_size
            for s in SIDECARS:
                try:
                    sst = os.lstat(os.path.join(directory, e.name + s))
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(sst.st_mode):
                    mtime, size = max(mtime, sst.st_mtime), size + sst.st_size
            out.append((e.name, mtime, size))
    return out


def remove_file(directory: str, name: str) -> None:
    """Unlink a flight recording and its sidecars (regular files only; an unlink never follows)."""
    for p in (name, *(name + s for s in SIDECARS)):
        path = os.path.join(directory, p)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass


def expired(files: list[tuple[str, float, int]], now_wall: float, retain_s: Optional[float],
            max_total: Optional[int], keep: set[str]) -> list[str]:
    """Names to delete, oldest first: older than retain_s, then while the total exceeds
    max_total. Names in keep (open for writing) are never chosen."""
    out = []
    files = sorted(files, key=lambda f: f[1])
    total = sum(f[2] for f in files)
    for name, mtime, size in files:
        if name in keep:
            continue
        if (retain_s is not None and now_wall - mtime > retain_s) or (max_total is not None and total > max_total):
            out.append(name)
            total -= size
    return out


def ring_texts(entry: tuple) -> dict[str, Optional[bytes]]:
    """The texts of a ring entry by key: /proc/meminfo (HOST) and each target's usage counter;
    None where the read failed (kernfs answers ENODEV once a cgroup is gone). One pass: a base
    tick wants every target's. Its keys map to read order (_ring_reads builds them so)."""
    out, at = {}, 0
    texts, lens = entry[2], entry[3]
    for key, i in entry[4].items():
        n = lens[i]
        out[key] = texts[at:at + n] if n >= 0 else None
        at += max(n, 0)
    return out


def whole(flat) -> dict:
    """A kept base sample as a dict (a row's is built when asked: feed/flat_delta.py Later)."""
    return flat.whole() if isinstance(flat, Later) else flat


def event_flat(flat: dict, vmstat: Optional[dict]) -> dict:
    """A kept base sample as an event file holds it: a target's with the host's vmstat of its tick
    in place of VMSTAT_NOTE (a flat of our own: mutated)."""
    if vmstat is None:
        return flat
    notes = [v for p, v in flat.items() if p.startswith("notes/") and v != VMSTAT_NOTE]
    out = {p: v for p, v in flat.items() if not p.startswith("notes/")}
    out.update(vmstat)
    out.update(flatten(notes, "notes"))
    return out


class WindowProbes(ProbeWorker):
    """The eBPF probes of the trigger windows, host-wide (page cache by file and cgroup, CUDA
    calls: what feed/live.py follows). Compiled and attached in the worker's own thread when a
    window opens (bcc compiles for seconds: sampling goes on meanwhile), a report a second from
    then on, detached when the last window closes: nothing runs, and nothing is added to any
    page-cache insertion or CUDA call, outside a window (docs/flight-recorder.md, "eBPF")."""

    def __init__(self, proc: str, cgroup_root: str):
        super().__init__(ProbeSession(ProbeOptions(faults=False, memcg=False), proc=proc, cgroup_root=cgroup_root))

    def _run(self) -> None:
        try:
            try:
                self.session.start()
            except Exception as e:  # noqa: BLE001 - no probes this window; the samples go on
                self.error = f"eBPF probes not started: {e}"
                return
            super()._run()
        finally:
            self.session.close()

    def stop(self, wait_s: float = 0.0) -> None:
        """Ask the worker to detach and end; wait at most wait_s for it (the sampling loop
        never waits: a compile still running ends, and detaches, on its own)."""
        self._stop.set()
        self._thread.join(wait_s)


class Track:
    """The host or one target: its base file, its event file while a trigger window is open,
    its full samples of the last ring_s, and its limit-events watch."""

    def __init__(self, key: str, label: str, watched: Optional[Watched], header: dict):
        self.key, self.label, self.watched, self.header = key, label, watched, header
        self.base: Optional[Recorder] = None
        self.base_period = -1
        self.event: Optional[Recorder] = None
        self.event_until = 0.0
        self.event_probes = False           # its header names the probes that ran
        # the whole base samples of the last ring_s: (mono_ns, wall_ns, flat, the host's vmstat
        # flat of that tick for a target, None for the host, whose flat holds it)
        self.full: collections.deque = collections.deque()
        self.delta: Optional[FlatDelta] = None       # base ticks from what C says changed
        self.host_gen = -1                           # FlightRecorder.host_gen at its last whole tick
        self.host_seen: dict = {}                    # the host's meminfo its file's last sample holds
        self.row: Optional[tuple] = None             # its row of this base tick, read and not yet written
        self.full_usage: Optional[bytes] = None      # usage counter text at the last whole base sample
        self.full_at = float("-inf")
        self.watch: Optional[EventsWatch] = None
        self.psi: Optional[PsiTrigger] = None


class FlightRecorder:
    """Drive tick() every opts.fast_s (it returns how long to wait, through wait()). log(line) is
    told about files, triggers and targets."""

    def __init__(self, opts: FlightOptions, targets: TargetSet, log: Callable[[str], None],
                 proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup"):
        self.o, self.ts, self.log = opts, targets, log
        self.dir_fd = open_directory(opts.directory)
        self.host_sampler, _first, self.host = open_host(proc, cgroup_root)
        self.capabilities = checks_to_dicts(run_checks())
        self.fast = open_sampler(proc=proc, cgroup_root=cgroup_root)       # meminfo + vmstat, no NVML
        self.meminfo = Reread(f"{proc}/meminfo")
        self.host_now: Optional[Sample] = None       # the host's sample of this tick, if it has one
        self.host_flat: dict = {}                    # the meminfo of the last base one, flattened
        self.host_gen = 0                            # counts changes of host_flat's paths
        self.host_before: dict = {}                  # host_flat before its last reading
        self.host_moved: dict = {}                   # what moved in host_flat at its last reading
        self.host_paths: list[str] = []              # host_flat's paths, in order
        self.host_row = None                         # host_moved for targets' rows (_base_row), once a tick
        self.host_vmstat: dict = {}                  # and its vmstat, flattened
        self.kernel = HostKernel(proc)
        self.tracks: dict[str, Track] = {HOST: Track(HOST, HOST, None, self._header(None))}
        # per 100 ms: (mono_ns, wall_ns, texts, lens, keys) of one mp_pread_many of /proc/meminfo and
        # every usage counter (ring_texts reads them back), the last ring_s of them, in time order
        self.ring: collections.deque = collections.deque()
        self.reads = None                            # those reads; None: to be set up again
        self.ring_keys: dict[str, int] = {}
        self.ring_fds: tuple[list[int], list[int]] = ([], [])
        # outside trigger windows a C thread does those reads (sources/native.py NativeRing) and
        # tick() runs once a base period; inside one, tick() reads every fast_s itself
        self.thread_ring = None
        self.thread_ring_keys: dict[str, int] = {}
        self.thread_ring_error: Optional[str] = None
        self.ring_efd = -1                           # the C ring's "MemAvailable fell" eventfd
        self.poller = select.poll()
        self.by_fd: dict[int, tuple[Track, object]] = {}
        self.host_psi: Optional[PsiTrigger] = None
        if opts.psi_stall_us:
            # on a hybrid host the memory controller is on v1, which has no memory.pressure: the
            # host's /proc/pressure/memory is the one PSI there is (docs/flight-recorder.md)
            self.host_psi = self._psi(f"{proc}/pressure/memory", self.tracks[HOST])
        self.low = False
        if opts.available_below_bytes is not None:
            self.ring_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.poller.register(self.ring_efd, select.POLLIN)
            self.by_fd[self.ring_efd] = (self.tracks[HOST], RING_FELL)
        self.last_base = float("-inf")
        self.last_retention = float("-inf")
        self.n_fast = 0
        self.dirty: set = set()                      # recorders written since the last commit
        self.probes: Optional[WindowProbes] = None
        self.proc, self.cgroup_root = proc, cgroup_root
        self.kernel_at = float("-inf")

    # -- triggers --------------------------------------------------------------------------
    def _psi(self, path: str, tr: Track) -> Optional[PsiTrigger]:
        try:
            t = PsiTrigger(path, self.o.psi_stall_us, self.o.psi_window_us)
        except OSError as e:
            self.log(f"no PSI trigger on {path}: {e.strerror or e}")
            return None
        self._register(t, tr)
        return t

    def _register(self, obj, tr: Track) -> None:
        self.poller.register(obj.fileno(), obj.poll_events)
        self.by_fd[obj.fileno()] = (tr, obj)

    def _unregister(self, obj) -> None:
        if obj is not None:
            self.poller.unregister(obj.fileno())
            self.by_fd.pop(obj.fileno(), None)
            obj.close()

    def wait(self, timeout_s: float) -> None:
        """Sleep until timeout_s or a trigger descriptor is ready (then handled at once)."""
        for fd, ev in self.poller.poll(max(0, int(timeout_s * 1000))):
            tr, obj = self.by_fd.get(fd, (None, None))
            if isinstance(obj, PsiTrigger):
                try:
                    if obj.answer(ev):       # this poll's answer: a second poll would say no
                        self.trigger("psi", tr, f"memory pressure: some task stalled >= "
                                                f"{self.o.psi_stall_us / 1e3:g} ms within "
                                                f"{self.o.psi_window_us / 1e6:g} s ({obj.path})")
                except OSError:
                    self._unregister(obj)
                    tr.psi = None
            elif isinstance(obj, EventsWatch):
                self._events(tr)
            elif obj is RING_FELL and self._fell() and self.thread_ring is not None:
                self._available_low(self.thread_ring.available()[0])      # the thread saw it fall: no self.low

    def step_s(self) -> float:
        """How long the caller may wait for the next tick: until the next base tick while the C
        ring reads, else fast_s."""
        if self.thread_ring is None:
            return self.o.fast_s
        return max(self.o.fast_s, self.last_base + self.o.base_s - time.monotonic())

    def _fell(self) -> bool:
        """Did the C ring say MemAvailable fell (since this was last asked)?"""
        try:
            return os.eventfd_read(self.ring_efd) > 0
        except BlockingIOError:
            return False

    def _events(self, tr: Track) -> None:
        grew = tr.watch.changes()
        where = tr.watched.follower.target.cgroup_path if tr.watched else "?"
        if grew.get("oom_kill"):
            self.trigger("oom_kill", tr, f"OOM kill in memory cgroup {where} of {tr.label} "
                                         f"(oom_kill +{grew['oom_kill']})", grew)
        elif grew.get("max"):
            self.trigger("max", tr, f"memory cgroup {where} of {tr.label} hit its limit (max +{grew['max']})", grew)

    def trigger(self, kind: str, tr: Track, message: str, facts: Optional[dict] = None) -> None:
        """Open (or extend) the event windows: the host and the track for a target's trigger,
        the host and every target for a host-wide one. A failed charge ("max") opens a window
        but never extends one: a cgroup living at its limit would record at 100 ms for ever."""
        now = time.monotonic()
        self._stop_thread_ring()               # a window: 100 ms ticks of our own, the ring's entries kept
        value = {"kind": kind, "message": message, "target": tr.key, "label": tr.label,
                 "wall_ns": time.time_ns(), "facts": facts or {}}
        self.log(f"trigger {kind}: {message}")
        if self.o.bpf and self.probes is None:
            self.probes = WindowProbes(self.proc, self.cgroup_root)
            self.log("eBPF probes starting for the trigger window")
        hit = list(self.tracks.values()) if tr.key == HOST else [self.tracks[HOST], tr]
        for t in hit:
            if t.event is None:
                self._open_event(t, kind, value)
            elif kind == "max":
                continue
            t.event.w.add_event(time.monotonic_ns(), "trigger", value)
            self.dirty.add(t.event)
            t.event_until = now + self.o.after_s

    def _open_event(self, tr: Track, kind: str, value: dict) -> None:
        hdr = dict(tr.header, interval_ns=int(self.o.fast_s * 1e9), flight=dict(self._flight(tr), trigger=value))
        tr.event = self._create("event", f"{kind}-{slug(tr.label)}", hdr)
        tr.event_probes = False
        if tr.event is None:
            return
        # the minute before: full base samples and the 100 ms ring, in time order
        light = [(s.mono_ns, s) for s in (self._light(tr, e) for e in self.ring) if s is not None]
        for mono, x in sorted([*((e[0], e) for e in tr.full), *light], key=lambda m: m[0]):
            if isinstance(x, Sample):
                tr.event.write(FeedItem(sample=x))
            else:
                tr.event.w.add_flat(x[0], x[1], event_flat(whole(x[2]), x[3]))

    def _light(self, tr: Track, entry) -> Optional[Sample]:
        mono, wall = entry[0], entry[1]
        texts = ring_texts(entry)
        meminfo_raw, usage_raw = texts[HOST], texts.get(tr.key)
        notes = [LIGHT_NOTE]
        meminfo = None
        if meminfo_raw is not None:
            try:
                meminfo = meminfo_from_kv(checked_kv(self.meminfo.path, meminfo_raw, notes))
            except MalformedFile as e:
                notes.append(f"{self.meminfo.path}: {e.reason}")
        if tr.key == HOST:
            return Sample(mono_ns=mono, wall_ns=wall, meminfo=meminfo, notes=notes)
        if tr.key not in texts or not tr.full:
            return None
        last = whole(tr.full[-1][2])
        cgs = CgroupSample(path=last["cgroup/path"], version=last["cgroup/version"],
                           current_bytes=usage_from_raw(usage_raw)) if "cgroup/path" in last else None
        return Sample(mono_ns=mono, wall_ns=wall, meminfo=meminfo, cgroup=cgs, notes=notes)

    # -- files -----------------------------------------------------------------------------
    def _header(self, target) -> dict:
        """The header of a flight recording of target (None: the host); recording.py lists its keys."""
        t = {"kind": "host", "description": "the host"}
        if target is not None:
            t = dict(target_to_dict(target), description=target.describe())
        return {"host": dataclasses.asdict(self.host), "capabilities": self.capabilities, "target": t,
                "probes": None, "interval_ns": int(self.o.base_s * 1e9), "argv": sys.argv,
                "started_wall_ns": time.time_ns(), "kv_fraction": self.o.kv_fraction, "pid": os.getpid()}

    def _flight(self, tr: Track) -> dict:
        return {"key": tr.key, "label": tr.label, "rotate_s": self.o.rotate_s, "base_s": self.o.base_s,
                "fast_s": self.o.fast_s, "ring_s": self.o.ring_s}

    def _create(self, kind: str, rest: str, header: dict) -> Optional[Recorder]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in range(100):
            name = f"flight-{kind}-{stamp}-{rest}{'' if n == 0 else f'-{n}'}.db"
            path = os.path.join(self.o.directory, name)
            try:
                # a trigger window keeps every eBPF report (one a second); base files hold none;
                # tick() commits every file written in the second, so no write commits on its own
                rec = Recorder(path, header, probes_every_s=0.0 if kind == "event" else PROBES_STEADY_S,
                               commit_every_s=None, page_size=BASE_PAGE_BYTES if kind == "base" else None)
            except RecordingError as e:
                if os.path.lexists(path):
                    continue             # taken (a restart within the same second): never overwritten
                self.log(f"cannot create {path}: {e}")
                return None
            self.log(f"writing {path}")
            return rec
        return None

    def _close(self, rec: Optional[Recorder]) -> None:
        if rec is not None:
            self.dirty.discard(rec)
            note = rec.close()
            if note:
                self.log(note)

    def open_names(self) -> set[str]:
        return {os.path.basename(r.path) for t in self.tracks.values() for r in (t.base, t.event) if r is not None}

    def retention(self) -> None:
        names = expired(our_files(self.o.directory), time.time(), self.o.retain_s, self.o.max_total_bytes,
                        self.open_names())
        for name in names:
            remove_file(self.o.directory, name)
            self.log(f"deleted {name} (retention)")

    # -- targets ---------------------------------------------------------------------------
    def _sync_targets(self) -> None:
        """Tracks for the targets the TargetSet follows now; one that left is an exit trigger."""
        try:
            self.ts.update()
        except Exception as e:  # noqa: BLE001 - listing again next time
            self.log(f"targets: {type(e).__name__}: {e}")
        for key in [k for k in self.tracks if k != HOST and k not in self.ts.watched]:
            tr = self.tracks[key]
            self.trigger("exit", tr, f"{tr.label} is gone")
            self._drop(tr)
        for key, w in self.ts.watched.items():
            if key not in self.tracks:
                self._add(key, w)

    def _add(self, key: str, w: Watched) -> None:
        tr = self.tracks[key] = Track(key, w.label, w, self._header(w.follower.target))
        self._watch(tr)

    def _watch(self, tr: Track) -> None:
        self.reads = None
        t = tr.watched.follower.target
        if not t.cgroup_dir:
            return
        try:
            tr.watch = EventsWatch(t.cgroup_dir, t.cgroup_version)
            self._register(tr.watch, tr)
        except OSError as e:
            self.log(f"{tr.label}: no limit events ({e.strerror or e}); exits and samples still recorded")
        if t.cgroup_version == 2 and self.o.psi_stall_us:
            tr.psi = self._psi(f"{t.cgroup_dir}/memory.pressure", tr)

    def _drop(self, tr: Track) -> None:
        self.reads = None
        self._unregister(tr.watch)
        self._unregister(tr.psi)
        tr.watch = tr.psi = None
        self._close(tr.base)
        self._close(tr.event)
        del self.tracks[tr.key]

    # -- sampling --------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        base = now - self.last_base >= self.o.base_s - self.o.fast_s / 2
        if base:
            self.last_base = now
            self._sync_targets()
        mono, wall = time.monotonic_ns(), time.time_ns()
        self.host_now = None
        if self.reads is None:
            self._ring_reads()
        texts: dict = {}
        entry = None
        if self.thread_ring is not None and base:
            # the thread's newest read is this tick's (the same files, read again for nothing); its
            # entries stay in C until the thread stops (a trigger): no copy of the minute in Python
            last = self.thread_ring.newest()
            if last is not None and self.thread_ring_keys is self.ring_keys and mono - last[0] <= 1.5e9 * self.o.fast_s:
                entry = (*last, self.ring_keys)
        if entry is None and (base or self.thread_ring is None):
            entry = (mono, wall, *self.reads.read(), self.ring_keys)
            if self.thread_ring is None:
                self._ring_add(entry)      # with the thread running the ring is its own, taken in order
        if entry is not None:
            texts = ring_texts(entry) if base or self.o.available_below_bytes is not None else {}
            if self.o.available_below_bytes is not None and self.thread_ring is None:
                self._available(texts[HOST])
        # between base ticks only a track in a trigger window has anything to do
        for tr in list(self.tracks.values()) if base else [t for t in self.tracks.values() if t.event is not None]:
            if tr.event is not None and now >= tr.event_until:
                self._close(tr.event)
                tr.event = None
            usage = texts.get(tr.key)
            fast = False
            if tr.event is not None or (base and self._due(tr, usage, now)):
                fast = self._sample(tr, base, usage, now)
            if base and tr.key == HOST:
                self._read_rows(texts, now)
            if base and tr.watch is not None and tr.watch.version == 1 and not (fast and self._events_seen(tr)):
                self._events(tr)      # v1 failcnt has no notification: looked at once a base period
        if self.probes is not None and all(t.event is None for t in self.tracks.values()):
            self.probes.stop()
            self.log("eBPF probes stopped: no trigger window open" + (f" ({self.probes.error})"
                                                                       if self.probes.error else ""))
            self.probes = None
        if base:
            for tr in self.tracks.values():
                if tr.row is not None:        # read and not written (a trigger opened its window since):
                    tr.row = None             # C's kept vector is past the file's last sample
                    tr.delta.flat = None
            for r in self.dirty:
                r.commit()                    # at most one second is ever uncommitted (kill -9)
            self.dirty.clear()
            if now - self.last_retention >= 60 or self.n_fast == 0:
                self.last_retention = now
                self.retention()
        self._sync_thread_ring()
        self.n_fast += 1

    def _due(self, tr: Track, usage_raw: Optional[bytes], now: float) -> bool:
        """Read this track whole at this base tick? The host always; a target when its usage
        counter moved (or could not be read: gone or re-created, which its Follower tells)."""
        if tr.key == HOST or tr.watch is None or usage_raw is None:
            return True
        return usage_raw != tr.full_usage or now - tr.full_at >= STAT_MAX_AGE_S

    def _available(self, meminfo_raw: Optional[bytes]) -> None:
        limit = self.o.available_below_bytes
        try:
            kv = checked_kv(self.meminfo.path, meminfo_raw, None, wanted=("MemAvailable",)) if meminfo_raw else None
        except MalformedFile:
            kv = None
        avail = kv.values.get("MemAvailable") if kv is not None else None
        if avail is None:
            return
        low = avail < limit
        if low and not self.low:
            self._available_low(avail)
        self.low = low

    def _available_low(self, avail: Optional[int]) -> None:
        self.low = True
        said = "?" if avail is None else f"{avail >> 20}"
        self.trigger("available", self.tracks[HOST],
                     f"MemAvailable {said} MiB < {self.o.available_below_bytes >> 20} MiB")

    def _sample(self, tr: Track, base: bool, usage_raw: Optional[bytes], now: float) -> bool:
        """Sample a track; True when it was a base tick from what changed (_base_delta)."""
        if base and tr.event is None and self._base_delta(tr, now):
            tr.full_usage, tr.full_at = usage_raw, now
            return True
        flat = None
        if tr.key == HOST:
            s = self.host_now = self.host_sampler.sample() if base else self.fast.sample()
            if tr.event is not None or now - self.kernel_at >= KERNEL_EVERY_S:
                self.kernel_at = now
                self.kernel.poll(s)
            item = FeedItem(sample=s, kernel=self.kernel.kernel, before=self.kernel.before(s))
            if base:
                flat = flatten(s)
                self._host_parts(flatten(s.meminfo, "meminfo"), flatten(s.vmstat, "vmstat"))
        else:
            if base and tr.event is None:
                self._mark(tr)
            item = self._target_item(tr)
            if item is None:
                return False
            if self.host_now is None and tr.event is not None:
                # a failed charge opens a target's window without extending the host's (trigger()):
                # the host's files are read for it all the same
                self.host_now = self.fast.sample()
            if self.host_now is not None:      # the targets' samplers read no host file (feed/multi.py)
                item.sample.meminfo, item.sample.vmstat = self.host_now.meminfo, self.host_now.vmstat
            if base:
                # the host's meminfo of this tick, flattened once for every target; its vmstat
                # (192 counters, most of them moving each second) only in the host's base file
                flat = flatten({f.name: getattr(item.sample, f.name) for f in dataclasses.fields(Sample)
                                if f.name not in ("meminfo", "vmstat", "notes")})
                flat.update(self.host_flat)
                flat.update(flatten(item.sample.notes + [VMSTAT_NOTE], "notes"))
        s = item.sample
        if base:
            tr.full_usage, tr.full_at = usage_raw, now
            self._keep(tr, s.mono_ns, s.wall_ns, flat)
            if self._write_base(tr, lambda rec: rec.write(item, flat)):
                self._rebase(tr, flat)
        if tr.event is not None:
            r = self.probes.report if self.probes is not None else None
            if r is not None:
                if not tr.event_probes:
                    tr.event_probes = True         # what ran, as `record` says it in its header
                    tr.event.w.set_header("probes", [dataclasses.asdict(p) for p in r.probes])
                item = dataclasses.replace(item, report=r)
            tr.event.write(item)                 # flattened whole: an event file holds the host's vmstat too
            self.dirty.add(tr.event)
        return False

    def _events_seen(self, tr: Track) -> bool:
        """Did this base tick's own read of memory.failcnt and memory.oom_control (a delta tick:
        neither moved since the kept sample) show what the events watch knows already?"""
        flat, last = tr.delta.flat, tr.watch.last
        return flat is not None and all(last.get(k) == flat.get(f"cgroup/events/{k}") for k in ("max", "oom_kill"))

    def _ring_reads(self) -> None:
        self._stop_thread_ring()               # its descriptors are the old set's
        keys, fds, caps = [HOST], [self.meminfo.fd], [MEMINFO_CAP]
        for k, t in self.tracks.items():
            if t.watch is not None:
                keys.append(k)
                fds.append(t.watch.fds["usage"])
                caps.append(32)
        self.reads = open_preads(fds, caps)
        self.ring_keys = {k: i for i, k in enumerate(keys)}
        self.ring_fds = (fds, caps)

    def _ring_add(self, entry: tuple) -> None:
        if self.ring and entry[0] <= self.ring[-1][0]:
            return            # the C ring's read from before the base tick's own, taken after it
        self.ring.append(entry)
        while entry[0] - self.ring[0][0] > self.o.ring_s * 1e9:
            self.ring.popleft()

    def _take_thread_ring(self) -> None:
        for mono, wall, texts, lens in self.thread_ring.take():
            self._ring_add((mono, wall, texts, lens, self.thread_ring_keys))

    def _sync_thread_ring(self) -> None:
        """The C ring runs while no window is open (and the base period is a few fast ticks)."""
        want = self.o.base_s >= 2 * self.o.fast_s and all(t.event is None for t in self.tracks.values())
        if not want:
            self._stop_thread_ring()
        elif self.thread_ring is None and self.thread_ring_error is None and self.reads is not None:
            try:
                self.thread_ring = open_ring(*self.ring_fds, self.o.fast_s, int(self.o.ring_s / self.o.fast_s) + 1,
                                             avail_below_bytes=self.o.available_below_bytes, low=self.low,
                                             notify_fd=self.ring_efd)
            except OSError as e:
                self.thread_ring_error = str(e)
                self.log(f"{e}: the ring is read by the recorder's own 100 ms ticks")
            if self.thread_ring is None and self.thread_ring_error is None:
                self.thread_ring_error = "no native extension"      # asked once, not every tick
            self.thread_ring_keys = self.ring_keys

    def _stop_thread_ring(self) -> None:
        if self.thread_ring is None:
            return
        self._take_thread_ring()
        self.low = self.thread_ring.available()[1]
        if self.ring_efd >= 0 and self._fell():
            self.low = False                   # a fall not handled yet: the next own read judges it
        self.thread_ring.stop()
        self.thread_ring = None

    def _host_parts(self, meminfo: dict, vmstat: dict) -> None:
        if meminfo.keys() != self.host_flat.keys():
            self.host_gen += 1                 # the targets' kept samples no longer have these paths
        old = self.host_before = self.host_flat
        self.host_moved = {p: v for p, v in meminfo.items() if old.get(p, _NONE) != v}
        self.host_paths, self.host_row = list(meminfo), None
        self.host_flat, self.host_vmstat = meminfo, vmstat

    def _keep(self, tr: Track, mono_ns: int, wall_ns: int, flat: dict) -> None:
        tr.full.append((mono_ns, wall_ns, flat if isinstance(flat, Later) else dict(flat),
                        None if tr.key == HOST else self.host_vmstat))
        while tr.full and mono_ns - tr.full[0][0] > self.o.ring_s * 1e9:
            tr.full.popleft()

    def _mark(self, tr: Track) -> None:
        """Before a target's whole base tick lists its processes: the delta's reference list."""
        sampler = tr.watched.follower.sampler
        if tr.delta is None or tr.delta.sampler is not sampler:
            tr.delta = FlatDelta.for_target(sampler)
        if tr.delta is not None:
            tr.delta.mark()

    def _rebase(self, tr: Track, flat: dict) -> None:
        """Keep the base sample just written for the next base tick's delta (feed/flat_delta.py)."""
        if tr.key == HOST:
            if tr.delta is None and hasattr(self.host_sampler, "delta_row"):
                tr.delta = FlatDelta(self.host_sampler)
        elif tr.event is not None or (tr.delta is not None and tr.delta.sampler is not tr.watched.follower.sampler):
            tr.delta = None                  # in a window (not marked), or a restart opened a new sampler
        if tr.delta is not None:
            tr.delta.rebase(flat, tr.delta.sampler.last_c)
            tr.host_gen, tr.host_seen = self.host_gen, self.host_flat

    def _base_delta(self, tr: Track, now: float) -> bool:
        """A base tick from what changed since the last one (feed/flat_delta.py): True when done;
        False leaves it to the whole path (a Sample built, flattened and written)."""
        d = tr.delta
        if d is None or d.flat is None:
            return False
        if tr.key != HOST:
            return self._base_row(tr, d)               # read by _read_rows
        rec = self._base_file(tr)
        if rec is not None and now - self.kernel_at >= KERNEL_EVERY_S:
            self.kernel_at = now                        # the kernel's files, without a whole tick
            self.kernel.poll(None)
            try:
                rec.write(FeedItem(sample=None, kernel=self.kernel.kernel))     # a "kernel" event when it changed
            except RecordingError as e:
                self.log(str(e))
        tr.row = d.row(rec.w.path_ids, rec.w.gpu_ids, keep=True) if rec is not None and rec.w.row_due() else None
        if tr.row is not None:
            flat = d.flat                  # the same paths: the delta kept its shape
            self._host_parts({p: flat[p] for p in self.host_flat}, {p: flat[p] for p in self.host_vmstat})
        return self._base_row(tr, d)

    def _read_rows(self, texts: dict, now: float) -> None:
        """Each target whose base tick can be a row (FlatDelta.row) read now, one after another,
        and written by _base_row in the loop after: the same code back to back stays warm (a
        tenth of the tick's CPU, docs/performance.md). Called after the host's tick: the rows
        take its meminfo."""
        for tr in self.tracks.values():
            tr.row = None
            d = tr.delta
            if (tr.key == HOST or tr.event is not None or d is None or d.flat is None or tr.host_gen != self.host_gen
                    or tr.watched.follower.sampler is not d.sampler or not self._due(tr, texts.get(tr.key), now)):
                continue
            rec = self._base_file(tr)
            if rec is None or not rec.w.row_due():
                continue                              # a new file or a keyframe: the whole path
            # the host's meminfo of this tick: the values that moved since the file's last sample
            if tr.host_seen is self.host_before:       # the file's last sample was the host's last tick
                if self.host_row is None:
                    self.host_row = self._row_values(lambda p, v: p in self.host_moved)
                moved = self.host_row
            else:
                seen = tr.host_seen
                moved = self._row_values(lambda p, v: seen.get(p, _NONE) != v)
            if moved is not None:
                tr.row = d.row(rec.w.path_ids, rec.w.gpu_ids, self.host_paths, moved, self.host_flat)

    def _base_row(self, tr: Track, d: FlatDelta) -> bool:
        """Write the row _read_rows read for this target: True when done; False leaves the tick
        to the whole path."""
        row, tr.row = tr.row, None
        if row is None:
            d.flat = None
            return False
        if not self._write_open_base(tr, lambda rec: rec.w.add_row(*row)):
            d.flat = None
            return True
        tr.host_seen = self.host_flat
        self._keep(tr, row[0], row[1], row[5])
        return True

    def _row_values(self, moved: Callable[[str, object], bool]) -> Optional[RowValues]:
        """The host's meminfo for rows (sources/native.py RowValues); None unless all integers."""
        from ..sources.native import RowValues        # rows are the native sampler's only
        vals = list(self.host_flat.values())
        if not all(v is None or type(v) is int for v in vals):
            return None
        return RowValues(vals, [moved(p, v) for p, v in self.host_flat.items()])

    def _target_item(self, tr: Track) -> Optional[FeedItem]:
        w = tr.watched
        try:
            # read whole: a target is sampled only when its usage moved, it is 30 s old or in a window; and
            # a whole base tick comes right after a delta read, which a carry (stat_max_age_s) would repeat
            s, events = w.follower.tick(full=True)
        except Exception as e:  # noqa: BLE001 - one target's failure leaves the others
            self.log(f"{tr.label}: {type(e).__name__}: {e}")
            return None
        for e in events:
            if e.kind == "cgroup-changed":
                self._unregister(tr.watch)
                self._unregister(tr.psi)
                tr.watch = tr.psi = None
                self._watch(tr)
                self.trigger("restart", tr, e.message)
            elif e.kind == "ended":
                # gone for good (TargetSet.sample drops it the same way): its base file says why, then
                # the exit trigger and the track's end, as for a container no longer listed (_sync_targets)
                if tr.base is not None:
                    tr.base.w.add_event(time.monotonic_ns(), "target", {"kind": e.kind, "message": e.message,
                                                                        "wall_ns": e.wall_ns, "facts": e.facts})
                self.ts.remove(tr.key, e.message)
                self.trigger("exit", tr, f"{tr.label}: {e.message}")
                self._drop(tr)
                return None
        if s is None:
            return None
        if tr.event is not None:            # file mappings and siblings only inside a window
            w.context.poll(s, w.follower.target, w.follower.sampler.cgfs)
        evs = [{"kind": e.kind, "message": e.message, "wall_ns": e.wall_ns, "facts": e.facts} for e in events]
        return FeedItem(sample=s, events=evs, mapped_files=w.context.mapped_files,
                        other_cgroups=w.context.other_cgroups)

    def _base_file(self, tr: Track) -> Optional[Recorder]:
        """The track's base file of this period, created when there is none; None when it cannot be."""
        period = int(time.time() // self.o.rotate_s)
        if tr.base is not None and period != tr.base_period:
            self._close(tr.base)
            tr.base = None
        if tr.base is None:
            tr.base = self._create("base", slug(tr.label), dict(tr.header, flight=self._flight(tr)))
            tr.base_period = period
            if tr.base is not None:
                self.retention()
        return tr.base

    def _write_base(self, tr: Track, write: Callable[[Recorder], object]) -> bool:
        """write(the track's base file of this period); False when there is none or it failed."""
        return self._base_file(tr) is not None and self._write_open_base(tr, write)

    def _write_open_base(self, tr: Track, write: Callable[[Recorder], object]) -> bool:
        """write(tr.base) (the file a row was read for: no rotation in between); False when it
        failed, the file closed."""
        try:
            write(tr.base)
            self.dirty.add(tr.base)
            return True
        except RecordingError as e:             # disk full: said, and tried again next period
            self.log(str(e))
            self._close(tr.base)
            tr.base = None
            return False

    def close(self) -> None:
        if self.probes is not None:
            self.probes.stop(wait_s=10.0)
        for tr in list(self.tracks.values()):
            if tr.key != HOST:
                self._drop(tr)
        host = self.tracks.pop(HOST)
        self._close(host.base)
        self._close(host.event)
        self._unregister(self.host_psi)
        self._stop_thread_ring()
        if self.ring_efd >= 0:
            self.poller.unregister(self.ring_efd)
            os.close(self.ring_efd)
        self.ts.close()
        self.host_sampler.close()
        self.fast.close()
        self.meminfo.close()
        os.close(self.dir_fd)
