"""Load, attach, read and detach the probes (bcc), and turn the kernel maps into events.

    with ProbeSession(ProbeOptions(...)) as s:     # compiles and attaches
        ...                                        # call s.poll() about once a second
        report = s.collect()
    # everything is detached here, also on exceptions, Ctrl-C and SIGTERM (cli.main turns
    # SIGTERM into KeyboardInterrupt), and bcc's own atexit handler is a second net.
"""
from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ...probe_report import (CUDA_KINDS, MEMCG_ITEM_STAT_KEYS, CudaCall, CudaOutstanding, FaultCount,
                       FaultRegion, MemcgDelta, PageCacheFile, ProbeReport, ProbeStatus,
                       memcg_item_unit)
from ..background import Background
from ..cgroupfs import CgroupFS, list_procs, norm_path
from . import bccload
from .supported import base_status, detect as detect_probes, tracepoint_exists
from .btf import memcg_item_names
from .fault_counters import FaultCounters, all_pids
from .cuda import CUDA_FUNCS, FUNC_NAMES, KIND_BY_ID, CudaLibrary, discover, open_explicit
from .quiet import quiet_stderr
from .resolve import CgroupIds, InodePaths, ProcInfo, kernel_dev

BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bpf")
PARTS = {"faults": "faults.c", "fault_addresses": "fault_addresses.c", "pagecache": "pagecache.c",
         "memcg": "memcg.c", "cuda": "cuda.c"}
REGION_SHIFT = 21                     # fault_addresses.c MP_REGION_SHIFT
MEMCG_SLOTS = 256                     # memcg.c MP_MC_SLOTS


CUDA_CALLS_PER_REPORT = 500   # calls listed per report (all are counted in outstanding bytes)
PAGE_CACHE_LISTED = 96     # files listed per report, largest first (an engine caches thousands)
PAGE_CACHE_OTHERS = 32      # files cached by other cgroups kept in a targeted report (largest first)


def settled(read_map, read_slots, tries: int = 5):
    """A map and its per-CPU pending slots (faults.c, fault_addresses.c, memcg.c), read so that
    no slot was added into the map between the two reads: such a flush (another owner took the
    slot) would leave its counts in neither copy. Slots are read before and after the map, again
    while one changed owner or shrank in between. read_slots gives (owner, counts) in a fixed
    order, counts non-decreasing while the owner keeps the slot."""
    for _ in range(tries):
        before = read_slots()
        rows = read_map()
        after = read_slots()
        if all(a[0] == b[0] and all(y >= x for x, y in zip(a[1], b[1])) for a, b in zip(before, after)):
            break
    return rows, after


class ProbesUnavailable(Exception):
    """No probe can run here (not root, no bcc, bpf() refused); the message is one line."""


@dataclass
class ProbeOptions:
    faults: bool = True                   # per process: /proc/<pid>/stat counters (free)
    fault_events: bool = False            # per (cgroup, process) by a BPF program on every fault
    fault_addresses: bool = False         # x86 tracepoint; opt-in: a program on every user fault
    pagecache: bool = True
    memcg: bool = True                    # memory.stat deltas (free)
    memcg_stream: bool = False            # memcg tracepoints (several per fault): opt-in
    memcg_events: bool = False            # count_memcg_events too (implies memcg_stream)
    cuda: bool = True
    uvm: bool = True
    cuda_libs: list[str] = field(default_factory=list)   # host paths hooked in addition
    cuda_stacks: bool = False
    scan_dirs: list[str] = field(default_factory=list)
    page_owner_entries: int = 1 << 20
    cgroup: Optional[str] = None          # target memory cgroup path (in its hierarchy)
    pid: Optional[int] = None             # target process
    rescan_s: float = 2.0                 # how often new processes are searched for libcuda
    discovery_deadline_s: float = 5.0     # longer, and the search is reported late and sampling goes on


def read_program(part: str) -> str:
    with open(os.path.join(BPF_DIR, PARTS[part] if part in PARTS else part)) as f:
        return f.read()


class _CuEvent(ctypes.Structure):
    # struct mp_cu_event in bpf/cuda.c
    _fields_ = [("ts", ctypes.c_uint64), ("cgroup_id", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("ptr", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("tid", ctypes.c_uint32),
                ("func", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("result", ctypes.c_int32),
                ("stack_id", ctypes.c_int32), ("comm", ctypes.c_char * 16)]


class ProbeSession:
    def __init__(self, opts: ProbeOptions, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 log: Optional[Callable[[str], None]] = None):
        self.opts = opts
        self.proc = proc
        self.cgfs = CgroupFS(cgroup_root)
        self.log = log or (lambda msg: None)
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.statuses: list[ProbeStatus] = []
        self.notes: list[str] = []
        self.bpf = None
        self.uvm_bpf = None
        self.parts: list[str] = []
        self.cflags: list[str] = []
        self.libs: list[CudaLibrary] = []
        self.cuda_calls: list[CudaCall] = []
        self.cuda_lost = 0
        self.memcg_poll_start: Optional[dict[str, int]] = None
        self.counters = FaultCounters(proc)
        self.v2ids = CgroupIds(self.cgfs.layout.v2_root)
        self.memcg_ids = CgroupIds(self.cgfs.memory_root())
        self.procs = ProcInfo(proc, self.cgfs)
        self.inodes = InodePaths(proc)
        self.target_pids: set[int] = set()
        self.started_ns = 0
        self._last_rescan = 0.0
        self._discovery: Optional[Background] = None
        self.discovery_overdue = 0          # searches for libcuda that outlived their deadline
        self._closed = False
        self.stat_names: dict[int, str] = {}
        self.event_names: dict[int, str] = {}

    # ---------------------------------------------------------------- planning
    def plan(self) -> list[ProbeStatus]:
        """Which mechanisms will be used (no compile). Also fills self.parts."""
        o = self.opts
        found = detect_probes(want_fentry=False)
        ok, why = base_status()
        if not ok:
            raise ProbesUnavailable(why)
        stream = o.memcg_stream or o.memcg_events
        wanted = {"faults": o.faults, "fault_addresses": o.fault_addresses,
                  "pagecache": o.pagecache, "memcg": o.memcg, "cuda": o.cuda, "uvm": o.uvm}
        # per-event mechanisms that a plain run leaves off: they cost on every fault (docs/probes.md)
        opt_in = {"perf:software/page-faults": (o.fault_events, "opt-in (--fault-events): a BPF program on "
                                                "every fault; the counters give the same per-process counts"),
                  "tracepoint:memcg:mod_memcg_state/mod_memcg_lruvec_state": (
                      stream, "opt-in (--memcg-stream): several tracepoint hits per fault; memory.stat gives "
                      "the same deltas without increase/decrease")}
        statuses = []
        for s in found:
            if not wanted.get(s.name, True):
                s = ProbeStatus(s.name, s.mechanism, False, "not requested")
            elif s.mechanism in opt_in and not opt_in[s.mechanism][0]:
                s = ProbeStatus(s.name, s.mechanism, False, opt_in[s.mechanism][1])
            statuses.append(s)
        for name, fallback in (("faults", "counters"), ("memcg", "poll")):
            fb = next(s for s in statuses if s.name == name and s.mechanism.startswith(fallback))
            fb.chosen = wanted[name] and not any(s.chosen for s in statuses if s.name == name and s is not fb)
            if not wanted[name]:
                fb.reason = "not requested"
            elif fb.chosen and name == "memcg" and stream:
                fb.reason = "fallback (no memcg tracepoints): memory.stat read at start and end"
        self.statuses = statuses
        self.parts = [p for p in PARTS if any(s.name == p and s.chosen and s.mechanism.split(":")[0]
                                              not in ("poll", "counters") for s in statuses)]
        self.cflags = [f"-DMP_PC_OWNER_ENTRIES={int(o.page_owner_entries)}"]
        if o.cuda_stacks:
            self.cflags.append("-DMP_CU_STACKS")
        if "memcg" in self.parts and o.memcg_events and tracepoint_exists("memcg", "count_memcg_events"):
            self.cflags.append("-DMP_MEMCG_EVENTS")
        return self.statuses

    def program_text(self, parts: Optional[list[str]] = None) -> str:
        if not self.parts and parts is None:
            try:
                self.plan()
            except ProbesUnavailable:
                self.parts = [p for p in PARTS]
                self.cflags = [f"-DMP_PC_OWNER_ENTRIES={int(self.opts.page_owner_entries)}"]
        out = [f"// memprobe BPF program (bcc); cflags: {' '.join(self.cflags)}"]
        for p in parts if parts is not None else self.parts:
            out.append(f"\n// ===== spark_memprobe/bpf/{PARTS[p]} =====\n")
            out.append(read_program(p))
        return "\n".join(out)

    def _status(self, name: str, mechanism_prefix: str = "") -> Optional[ProbeStatus]:
        for s in self.statuses:
            if s.name == name and s.mechanism.startswith(mechanism_prefix):
                return s
        return None

    def _refuse(self, name: str, reason: str, mechanism_prefix: str = "") -> None:
        s = self._status(name, mechanism_prefix)
        if s is not None:
            s.chosen = False
            s.reason = reason
        fallback = {"memcg": ("poll", "memory.stat read at start and end"),
                    "faults": ("counters", "/proc/<pid>/stat counters")}.get(name)
        if fallback and getattr(self.opts, name):
            fb = self._status(name, fallback[0])
            if fb is not None:
                fb.chosen = True
                fb.reason = f"fallback ({reason}): {fallback[1]}"

    # ---------------------------------------------------------------- attach
    def start(self) -> list[ProbeStatus]:
        bcc = bccload.import_bcc()
        if not self.statuses:
            self.plan()
        self.notes.append(bccload.prepare_environment())
        self.stat_names, self.event_names, note = memcg_item_names()
        if note:
            self.notes.append(note)
        self._refresh_targets()
        for d in self.opts.scan_dirs:
            n = self.inodes.scan_dir(d)
            self.notes.append(f"scanned {n} files under {d} for page-cache paths")
        if self.parts:
            self.bpf = self._compile(bcc)
        self._attach(bcc)
        if self.opts.uvm and self._status("uvm") and self._status("uvm").chosen:
            self._attach_uvm(bcc)
        fb = self._status("memcg", "poll")
        if fb is not None and fb.chosen:
            self.memcg_poll_start = self._read_memory_stat()
        if self._counting():
            self.counters.start(self._counter_pids())
        self.v2ids.scan()
        self.memcg_ids.scan()
        self.started_ns = time.monotonic_ns()
        return self.statuses

    def _compile(self, bcc):
        t0 = time.monotonic()
        err: list[str] = []
        try:
            with quiet_stderr(err):
                b = bcc.BPF(text=self.program_text().encode(), cflags=self.cflags)
            self.notes.append(f"BPF compiled and loaded in {time.monotonic() - t0:.2f} s")
            return b
        except Exception:  # noqa: BLE001 - bcc raises bare Exception; find the part at fault
            pass
        good = []
        for p in list(self.parts):
            msg: list[str] = []
            try:
                with quiet_stderr(msg):
                    bcc.BPF(text=self.program_text([p]).encode(), cflags=self.cflags).cleanup()
                good.append(p)
            except Exception as e:  # noqa: BLE001
                first = next((ln for ln in "".join(msg).splitlines() if "error" in ln), str(e))
                self._refuse(p, f"BPF compile/load failed: {first.strip()[:200]}")
        self.parts = good
        if not good:
            return None
        with quiet_stderr():
            b = bcc.BPF(text=self.program_text().encode(), cflags=self.cflags)
        self.notes.append(f"BPF compiled and loaded in {time.monotonic() - t0:.2f} s (after isolating failures)")
        return b

    def _try(self, name: str, prefix: str, fn) -> bool:
        try:
            with quiet_stderr():
                fn()
            return True
        except Exception as e:  # noqa: BLE001
            self._refuse(name, f"attach failed: {e}", prefix)
            return False

    def _attach(self, bcc) -> None:
        b = self.bpf
        if b is None:
            return
        if "faults" in self.parts:
            if self._try("faults", "perf", lambda: b.attach_perf_event(
                    ev_type=bcc.PerfType.SOFTWARE, ev_config=bcc.PerfSWConfig.PAGE_FAULTS,
                    fn_name=b"mp_fault", sample_period=1)):
                try:
                    with quiet_stderr():
                        b.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"mp_exec")
                except Exception as e:  # noqa: BLE001 - only the comm after exec is lost
                    self.notes.append(f"sched:sched_process_exec not attached ({e}): comm is the one at the "
                                      "first fault")
        if "fault_addresses" in self.parts:
            self._try("fault_addresses", "tracepoint", lambda: b.attach_raw_tracepoint(
                tp=b"page_fault_user", fn_name=b"mp_fault_user"))
        if "pagecache" in self.parts:
            def pc():
                b.attach_tracepoint(tp=b"filemap:mm_filemap_add_to_page_cache", fn_name=b"mp_pc_add")
                b.attach_tracepoint(tp=b"filemap:mm_filemap_delete_from_page_cache", fn_name=b"mp_pc_delete")
            self._try("pagecache", "tracepoint", pc)
        if "memcg" in self.parts:
            def mc():
                b.attach_tracepoint(tp=b"memcg:mod_memcg_state", fn_name=b"mp_mc_state")
                b.attach_tracepoint(tp=b"memcg:mod_memcg_lruvec_state", fn_name=b"mp_mc_lruvec")
                if "-DMP_MEMCG_EVENTS" in self.cflags:
                    b.attach_tracepoint(tp=b"memcg:count_memcg_events", fn_name=b"mp_mc_event")
            self._try("memcg", "tracepoint", mc)
        if "cuda" in self.parts:
            b[b"mp_cu_events"].open_perf_buffer(self._on_cuda_event, page_cnt=64, lost_cb=self._on_cuda_lost)
            for path in self.opts.cuda_libs:
                try:
                    self._hook_library(open_explicit(path))
                except OSError as e:
                    self.notes.append(f"--cuda-lib {path}: {e.strerror}")
            self._start_discovery()
            self._pick_up_discovery(self.opts.discovery_deadline_s)
            cu = self._status("cuda")
            if cu is not None and not self.libs and self._discovery is not None:
                cu.reason = "the search for libcuda.so.1 has not returned yet (see the notes); hooked when it does"
            elif cu is not None and not self.libs:
                cu.reason = ("no libcuda.so.1 mapped by " + ("the target's processes" if self._targeted() else
                             "any process") + " yet; searched again every "
                             f"{self.opts.rescan_s:g} s (or give --cuda-lib PATH)")

    def _start_discovery(self) -> None:
        """Search the processes for libcuda off the caller's thread: the search reads their
        /proc files and opens files in their roots, which they can make slow or stall."""
        pids, known, proc = self._cuda_scan_pids(), [x.key for x in self.libs], self.proc
        self._discovery = Background(lambda: discover(pids, proc, known=known), "memprobe-cuda-discovery")
        self._last_rescan = time.monotonic()

    def _pick_up_discovery(self, wait_s: float = 0.0) -> None:
        """Hook what the last search found, once it has returned; say once when it is late."""
        d = self._discovery
        if d is None:
            return
        if not d.wait(wait_s):
            if not d.overdue_said and d.age_s() >= self.opts.discovery_deadline_s:
                d.overdue_said = True
                self.discovery_overdue += 1
                self.notes.append(f"the search for libcuda.so.1 has not returned in {self.opts.discovery_deadline_s:g}"
                                  " s (a process's /proc files or a file in its root stall it): sampling goes on, "
                                  "and no new search starts until it returns")
            return
        self._discovery = None
        found, notes = d.result()
        for n in notes:
            if n not in self.notes:
                self.notes.append(n)
        for lib in found:
            if lib.key in {x.key for x in self.libs}:
                lib.close()
                continue
            if self.started_ns:
                self.log(f"hooking {lib.path} found in pid {lib.pid}")
            self._hook_library(lib)

    def _hook_library(self, lib: CudaLibrary) -> None:
        b = self.bpf
        hooked, missing, failed = [], [], []
        for f in CUDA_FUNCS:
            try:
                with quiet_stderr():
                    path, sym = lib.attach_path.encode(), f.name.encode()
                    b.attach_uprobe(name=path, sym=sym, fn_name=f.entry.encode(), pid=-1)
                    b.attach_uretprobe(name=path, sym=sym, fn_name=f.ret.encode(), pid=-1)
                hooked.append(f.name)
            except Exception as e:  # noqa: BLE001
                (missing if "could not determine address" in str(e) or "not found" in str(e).lower()
                 else failed).append(f"{f.name}" if f.optional else f"{f.name} ({e})")
        where = f"{lib.path} (dev {lib.dev_major}:{lib.dev_minor} inode {lib.inode}, opened via {lib.how}" + \
                (f", found in pid {lib.pid})" if lib.pid else ")")
        required_missing = [m for m in missing + failed if not m.split(" ")[0].endswith("_ptsz")]
        reason = f"{len(hooked)} entry points hooked"
        if required_missing:
            reason += "; not hooked: " + ", ".join(required_missing)
        self.statuses.append(ProbeStatus("cuda", "uprobe+uretprobe", bool(hooked), reason, where))
        cu = self._status("cuda", "uprobe:")
        if cu is not None and hooked:
            cu.reason = "hooked (see the libraries below)"
        if hooked:
            self.libs.append(lib)
        else:
            lib.close()

    def _attach_uvm(self, bcc) -> None:
        try:
            with quiet_stderr():
                self.uvm_bpf = bcc.BPF(text=read_program("uvm.c").encode())
            s = self._status("uvm")
            s.reason = "fentry attached"
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if "super-user" in msg:
                # bcc words the kernel's EPERM this way, also for root (src/python/bcc/__init__.py)
                msg = "the kernel refused the fentry program (EPERM as root)"
            self._refuse("uvm", msg)

    # ---------------------------------------------------------------- targets
    def _targeted(self) -> bool:
        return self.opts.cgroup is not None or self.opts.pid is not None

    def _refresh_targets(self) -> None:
        if self.opts.pid is not None:
            self.target_pids.add(self.opts.pid)
        if self.opts.cgroup is not None:
            try:
                self.target_pids.update(list_procs(self.cgfs.directory(self.opts.cgroup)))
            except OSError:
                pass
        for pid in self.target_pids:
            self.procs.see(pid)

    def _cuda_scan_pids(self) -> Optional[list[int]]:
        return sorted(self.target_pids) if self._targeted() else None

    # ---------------------------------------------------------------- running
    def poll(self, timeout_ms: int = 0) -> None:
        """Drain the CUDA event stream, learn names of new processes and files, and hook
        libcuda in processes that loaded it since the last look."""
        if self._counting():
            self.counters.poll(self._counter_pids())
            for pid in self.counters.faults():      # comm and cgroups while the process lives
                self.procs.see(pid)
        if self.bpf is None:
            return
        if "cuda" in self.parts:
            self.bpf.perf_buffer_poll(timeout=timeout_ms)
        self._refresh_targets()
        b = self.bpf
        # procs.see(maps=True) and inodes.from_pid read /proc/<pid>/maps in this thread, which
        # a target can stall (cuda.read_maps); only the libcuda search runs off it
        if "faults" in self.parts:
            for (_, pid), _ in self._fault_events(b).items():
                self.procs.see(pid)
        if "fault_addresses" in self.parts:
            for pid in {k.tgid for k, _ in b[b"mp_fault_regions"].items()} | \
                    {s.key.tgid for s in b[b"mp_region_slot"][0] if s.n}:
                self.procs.see(pid, maps=True)
        if "pagecache" in self.parts:
            for k, v in b[b"mp_pc_files"].items():
                if v.last_tgid:
                    self.procs.see(v.last_tgid)
                    if self.inodes.lookup(*kernel_dev(k.dev), k.ino) is None:
                        self.inodes.from_pid(v.last_tgid)
        if "cuda" in self.parts:
            self._pick_up_discovery()
            if self._discovery is None and time.monotonic() - self._last_rescan >= self.opts.rescan_s:
                self._start_discovery()

    def _on_cuda_event(self, cpu, data, size) -> None:
        e = ctypes.cast(data, ctypes.POINTER(_CuEvent)).contents
        kind = KIND_BY_ID.get(e.kind, "unknown")
        stack = None
        if self.opts.cuda_stacks and e.stack_id >= 0:
            try:
                st = self.bpf[b"mp_cu_stacks"]
                stack = [self.bpf.sym(a, e.tgid, show_module=True, show_offset=True).decode("utf-8", "replace")
                         for a in st.walk(e.stack_id)]
            except Exception:  # noqa: BLE001 - symbolisation is best effort
                stack = None
        self.procs.see(e.tgid)
        self.cuda_calls.append(CudaCall(
            ts_ns=e.ts, pid=e.tgid, tid=e.tid, cgroup_id=e.cgroup_id, func=FUNC_NAMES.get(e.func, str(e.func)),
            kind=kind, size_bytes=e.size if (e.size or kind != "unknown") else None, ptr=e.ptr,
            result=e.result, stack=stack, comm=e.comm.decode("utf-8", "replace") or None))

    def _on_cuda_lost(self, n) -> None:
        self.cuda_lost += n

    def _read_memory_stat(self) -> Optional[dict[str, int]]:
        path = self.opts.cgroup or "/"
        try:
            s = self.cgfs.read(path, procs=False, numa=False)
        except OSError as e:
            self.notes.append(f"memory.stat of {path} not readable: {e}")
            return None
        return s.stat

    # ---------------------------------------------------------------- reading
    def collect(self) -> ProbeReport:
        self.poll()
        end = time.monotonic_ns()
        r = ProbeReport(started_mono_ns=self.started_ns, ended_mono_ns=end,
                        probes=[ProbeStatus(**vars(s)) for s in self.statuses],
                        target=self._target_text(), page_size=self.page_size, notes=list(self.notes))
        b = self.bpf
        tv2 = self._target_v2_ids()
        want = (lambda cg, pid: True) if not self._targeted() else \
            (lambda cg, pid: pid in self.target_pids or cg in tv2)
        if b is not None and "faults" in self.parts:
            comms = {k.value: v.comm.decode("utf-8", "replace") for k, v in b[b"mp_comms"].items()}
            r.faults, r.fault_source = [], "perf:software/page-faults"
            for (cg, pid), n in self._fault_events(b).items():
                if want(cg, pid):   # comm: as of the last exec seen (kernel), else as read from /proc
                    r.faults.append(FaultCount(
                        cgroup_id=cg, pid=pid, faults=n, comm=comms.get(pid) or self.procs.comm.get(pid),
                        cgroup_path=self.v2ids.path(cg), memory_cgroup=self.procs.memory_cgroup.get(pid)))
            r.faults.sort(key=lambda f: -f.faults)
            lost = b[b"mp_fault_lost"][0].value
            if lost:
                r.notes.append(f"{lost} page faults not counted: the (cgroup, pid) table was full")
        elif self._counting():
            r.faults, r.fault_source = self._fault_counts(want), "/proc/<pid>/stat"
        if b is not None and "fault_addresses" in self.parts:
            rows, slots = settled(lambda: [((k.tgid, k.region), v.value) for k, v in b[b"mp_fault_regions"].items()],
                                  lambda: [((s.key.tgid, s.key.region), (s.n,)) for s in b[b"mp_region_slot"][0]])
            regions: dict[tuple[int, int], int] = dict(rows)
            for key, (n,) in slots:                     # per CPU: faults not yet added to the map
                if n:
                    regions[key] = regions.get(key, 0) + n
            per: dict[tuple[int, str], list[int]] = {}
            for (pid, region), n in regions.items():
                if self._targeted() and pid not in self.target_pids:
                    continue
                start = region << REGION_SHIFT
                m = self.procs.mapping_of(pid, start, start + (1 << REGION_SHIFT)) or "?"
                acc = per.setdefault((pid, m), [0, 0])
                acc[0] += n
                acc[1] += 1
            r.fault_regions = sorted((FaultRegion(pid, m, n, regions) for (pid, m), (n, regions) in per.items()),
                                     key=lambda x: -x.faults)
        if b is not None and "pagecache" in self.parts:
            r.page_cache = []
            for pid in self.target_pids:        # name the files the target maps or holds open
                self.inodes.from_pid(pid)
            items = list(b[b"mp_pc_files"].items())
            # besides the target's own: the largest files cached by anyone else, so that pages
            # the target uses but another cgroup brought in (first touch) are reported too
            others = sorted((kv for kv in items if not want(kv[0].cgroup_id, kv[1].last_tgid)),
                            key=lambda kv: kv[1].removed - kv[1].added)[:PAGE_CACHE_OTHERS]
            keep = {id(kv) for kv in others}
            rescanned: set[int] = set()
            for k, v in (kv for kv in items if id(kv) in keep or want(kv[0].cgroup_id, kv[1].last_tgid)):
                maj, mnr = kernel_dev(k.dev)
                # one fresh look at a process per report: rescanning it for every unnamed file
                # made one report take 34 s for an engine with thousands of cached files
                if v.last_tgid and v.last_tgid not in rescanned and self.inodes.lookup(maj, mnr, k.ino) is None:
                    rescanned.add(v.last_tgid)
                    self.inodes.from_pid(v.last_tgid, max_age_s=0)
                hit = self.inodes.lookup(maj, mnr, k.ino)
                r.page_cache.append(PageCacheFile(
                    cgroup_id=k.cgroup_id, dev_major=maj, dev_minor=mnr, inode=k.ino, added_pages=v.added,
                    removed_pages=v.removed, removed_by_other_pages=v.removed_by_other,
                    last_pid=v.last_tgid or None, path=hit[0] if hit else None, path_source=hit[1] if hit else None,
                    cgroup_path=self.v2ids.path(k.cgroup_id) if k.cgroup_id else None, page_size=self.page_size))
            r.page_cache.sort(key=lambda f: -f.net_pages)
            if len(r.page_cache) > PAGE_CACHE_LISTED:
                rest = r.page_cache[PAGE_CACHE_LISTED:]
                r.notes.append(f"{len(rest)} smaller cached files ({sum(max(0, f.net_bytes) for f in rest)} bytes) "
                               f"not listed: a report lists the {PAGE_CACHE_LISTED} largest")
                r.page_cache = r.page_cache[:PAGE_CACHE_LISTED]
            st = b[b"mp_pc_stats"]
            r.page_cache_untracked_pages = st[0].value
            if st[1].value:
                r.notes.append(f"{st[1].value} page-cache pages not counted: the file table was full")
            if st[0].value:
                r.notes.append(f"{st[0].value} pages added while the owner table was full "
                               f"(--page-owner-entries): their removals count as owner unknown")
        if b is not None and "memcg" in self.parts:
            r.memcg, r.memcg_source = self._memcg_from_map(b), "tracepoint"
        elif self.memcg_poll_start is not None:
            r.memcg, r.memcg_source = self._memcg_from_poll(), "memory.stat poll"
            r.notes.append("memcg deltas from memory.stat read at start and end (--memcg-stream sums each update): "
                           "flushed lazily, tens of pages per CPU of error; no per-update stream")
        if b is not None and "cuda" in self.parts:
            r.cuda = []
            # the call stream: calls since the previous collect(), so a report stays small on a
            # long run (the outstanding bytes above are the cumulative view)
            calls, self.cuda_calls = self.cuda_calls, []
            call_comm = {c.pid: c.comm for c in calls if c.comm}
            for k, v in b[b"mp_cu_outstanding"].items():
                if not want(v.cgroup_id, k.tgid):
                    continue
                r.cuda.append(CudaOutstanding(
                    pid=k.tgid, kind=KIND_BY_ID.get(k.kind, "unknown"), outstanding_bytes=v.bytes, allocs=v.allocs,
                    frees=v.frees, failed_calls=v.failed, cgroup_id=v.cgroup_id,
                    comm=self.procs.comm.get(k.tgid) or call_comm.get(k.tgid)))
            r.cuda.sort(key=lambda c: (c.pid, CUDA_KINDS.index(c.kind) if c.kind in CUDA_KINDS else 99))
            kept = [c for c in calls if want(c.cgroup_id, c.pid)]
            if len(kept) > CUDA_CALLS_PER_REPORT:
                r.notes.append(f"{len(kept) - CUDA_CALLS_PER_REPORT} CUDA calls of this interval left out of "
                               f"the call list (the {CUDA_CALLS_PER_REPORT} largest kept); outstanding bytes count them")
                kept = sorted(kept, key=lambda c: -(c.size_bytes or 0))[:CUDA_CALLS_PER_REPORT]
                kept.sort(key=lambda c: c.ts_ns)
            r.cuda_calls = kept
            r.cuda_lost_events = self.cuda_lost
        if self.uvm_bpf is not None:
            n = sum(v.value for _, v in self.uvm_bpf[b"mp_uvm_calls"].items())
            r.notes.append(f"uvm_cpu_chunk_alloc calls: {n}")
        ids = {f.cgroup_id for f in r.faults or []} | {p.cgroup_id for p in r.page_cache or []}
        r.cgroup_paths = {i: p for i in ids if (p := self.v2ids.path(i)) is not None}
        r.ended_mono_ns = time.monotonic_ns()        # when the report was complete
        return r

    def _fault_events(self, b) -> dict[tuple[int, int], int]:
        """(cgroup v2 id, pid) -> faults counted by faults.c: the map plus each CPU's pending slot."""
        rows, slots = settled(lambda: [((k.cgroup_id, k.tgid), v.value) for k, v in b[b"mp_faults"].items()],
                              lambda: [((s.key.cgroup_id, s.key.tgid), (s.n,)) for s in b[b"mp_fault_slot"][0]])
        out = dict(rows)
        for key, (n,) in slots:
            if n:
                out[key] = out.get(key, 0) + n
        return out

    def _counting(self) -> bool:
        s = self._status("faults", "counters")
        return s is not None and s.chosen

    def _counter_pids(self) -> list[int]:
        return sorted(self.target_pids) if self._targeted() else all_pids(self.proc)

    def _fault_counts(self, want) -> list[FaultCount]:
        """FaultCount rows from the /proc/<pid>/stat counters (cgroup: the process's v2 cgroup)."""
        ids = {p: i for i, p in self.v2ids.paths.items()}
        out = []
        for pid, n in self.counters.faults().items():
            self.procs.see(pid)
            path = self.procs.v2_cgroup.get(pid)
            cg = ids.get(path) if path is not None else None
            if cg is None and path is not None:
                self.v2ids.scan()
                ids = {p: i for i, p in self.v2ids.paths.items()}
                cg = ids.get(path)
            if want(cg or 0, pid):
                out.append(FaultCount(cgroup_id=cg or 0, pid=pid, faults=n, comm=self.procs.comm.get(pid),
                                      cgroup_path=path if cg else None,
                                      memory_cgroup=self.procs.memory_cgroup.get(pid)))
        return sorted(out, key=lambda f: -f.faults)

    def _memcg_from_map(self, b) -> list[MemcgDelta]:
        tm = self._target_memcg_ids()
        out = []
        v1 = self.cgfs.layout.memory_version == 1
        sums: dict[tuple[int, int, int], list[int]] = {}
        rows, slots = settled(
            lambda: [((k.memcg_id, k.item, k.source), (sum(int(x.inc) for x in vals), sum(int(x.dec) for x in vals)))
                     for k, vals in b[b"mp_memcg"].items()],
            lambda: [((x.memcg_id, i.value % MEMCG_SLOTS, i.value // MEMCG_SLOTS), (int(x.inc), -int(x.dec)))
                     for i, vals in b[b"mp_mc_slots"].items() for x in vals])
        for key, (inc, dec) in rows:
            acc = sums.setdefault(key, [0, 0])
            acc[0] += inc
            acc[1] += dec
        for key, (inc, neg_dec) in slots:               # per CPU: sums not yet added to the map
            if inc or neg_dec:
                acc = sums.setdefault(key, [0, 0])
                acc[0] += inc
                acc[1] -= neg_dec
        for (memcg_id, item, source), (inc, dec) in sums.items():
            if (tm is not None and memcg_id not in tm) or (inc == 0 and dec == 0):
                continue
            if source == 2:
                name = self.event_names.get(item)
                unit, key = "events", None
                if name in ("PGFAULT", "PGMAJFAULT"):
                    key = name.lower()
            else:
                name = self.stat_names.get(item)
                unit = memcg_item_unit(name)
                keys = MEMCG_ITEM_STAT_KEYS.get(name or "", (None, None))
                key = keys[1] if v1 else keys[0]
            out.append(MemcgDelta(memcg_id=memcg_id, item=item, delta=inc + dec, item_name=name, unit=unit,
                                  source=("state", "lruvec", "event")[source] if source < 3 else str(source),
                                  stat_key=key, cgroup_path=self.memcg_ids.path(memcg_id),
                                  increase=inc, decrease=dec))
        out.sort(key=lambda d: (d.memcg_id, d.source, -abs(d.delta)))
        return out

    def _memcg_from_poll(self) -> list[MemcgDelta]:
        end = self._read_memory_stat() or {}
        start = self.memcg_poll_start or {}
        path = norm_path(self.opts.cgroup or "/")
        try:
            mid = os.stat(self.cgfs.directory(path), follow_symlinks=False).st_ino
        except OSError:
            mid = 0
        out = []
        for key in sorted(set(start) & set(end)):
            d = end[key] - start[key]
            if d:
                out.append(MemcgDelta(memcg_id=mid, item=-1, delta=d, item_name=None, unit="bytes",
                                      source="poll", stat_key=key, cgroup_path=path))
        return out

    def _target_text(self) -> Optional[str]:
        if self.opts.pid is not None:
            return f"pid {self.opts.pid}"
        if self.opts.cgroup is not None:
            return f"memory cgroup v{self.cgfs.layout.memory_version} {norm_path(self.opts.cgroup)}"
        return None

    def _target_v2_ids(self) -> set[int]:
        if self.opts.cgroup is None or self.cgfs.layout.v2_root is None:
            return set()
        return self.v2ids.ids_under(norm_path(self.opts.cgroup)) if os.path.isdir(
            os.path.join(self.cgfs.layout.v2_root, norm_path(self.opts.cgroup).lstrip("/"))) else set()

    def _target_memcg_ids(self) -> Optional[set[int]]:
        if self.opts.cgroup is not None:
            return self.memcg_ids.ids_under(norm_path(self.opts.cgroup))
        if self.opts.pid is not None:
            mc = self.procs.memory_cgroup.get(self.opts.pid)
            return self.memcg_ids.ids_under(mc) if mc else set()
        return None

    # ---------------------------------------------------------------- detach
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for b in (self.bpf, self.uvm_bpf):
            if b is not None:
                try:
                    b.cleanup()
                except Exception:  # noqa: BLE001 - detach the rest anyway
                    pass
        self.bpf = self.uvm_bpf = None
        for lib in self.libs:
            lib.close()
        d, self._discovery = self._discovery, None
        if d is not None and d.done():          # found but not picked up
            try:
                for lib in d.result()[0]:
                    lib.close()
            except Exception:  # noqa: BLE001 - a failed search opened nothing to close
                pass
        # a search still stalled keeps the descriptors it opens until the process exits

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False
