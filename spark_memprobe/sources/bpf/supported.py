"""What this kernel offers for each probe, checked cheaply (no BPF compile unless asked).

Each probe has mechanisms in order of preference; detect() returns one ProbeStatus per
mechanism considered, chosen or refused with the reason, so a report can say what was not
measured (bcc tools' habit: probe, fall back, say which)."""
from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Optional

from ...probe_report import ProbeStatus
from . import bccload

TRACEFS_DIRS = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]

# syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h)
_NR = {"x86_64": {"bpf": 321, "perf_event_open": 298},
       "aarch64": {"bpf": 280, "perf_event_open": 241}}

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_PAGE_FAULTS = 2          # include/uapi/linux/perf_event.h


def tracefs() -> Optional[str]:
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


def tracepoint_exists(category: str, event: str) -> bool:
    t = tracefs()
    return t is not None and os.path.exists(os.path.join(t, "events", category, event, "format"))


def _syscall(name: str, *args) -> tuple[int, int]:
    nr = _NR.get(platform.machine(), {}).get(name)
    if nr is None:
        return -1, 38   # ENOSYS: unknown architecture
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(ctypes.c_long(nr), *args)
    return r, ctypes.get_errno()


def perf_page_faults_ok() -> tuple[bool, str]:
    """Open (and close) a system-wide software page-fault counter on CPU 0."""
    attr = bytearray(128)                          # struct perf_event_attr, PERF_ATTR_SIZE_VER7+
    struct.pack_into("<IIQ", attr, 0, PERF_TYPE_SOFTWARE, len(attr), PERF_COUNT_SW_PAGE_FAULTS)
    struct.pack_into("<Q", attr, 40, 1)            # flags: disabled
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd, err = _syscall("perf_event_open", buf, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
                       ctypes.c_ulong(0))
    if fd >= 0:
        os.close(fd)
        return True, "perf_event_open(software page-faults, all tasks) works"
    return False, f"perf_event_open refused: {os.strerror(err)}"


def bpf_syscall_ok() -> tuple[bool, str]:
    """Load the smallest BPF program (socket filter: r0 = 0; exit) and close it."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)                          # union bpf_attr, BPF_PROG_LOAD part
    struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(ibuf), ctypes.addressof(lic))
    abuf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd, err = _syscall("bpf", ctypes.c_int(5), abuf, ctypes.c_uint(len(attr)))   # BPF_PROG_LOAD
    if fd >= 0:
        os.close(fd)
        return True, "bpf() program load works"
    return False, f"bpf() refused: {os.strerror(err)}"


def uprobes_ok() -> tuple[bool, str]:
    if os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        return True, "uprobe PMU (perf_event_open; detached when the file descriptor closes)"
    t = tracefs()
    if t and os.path.exists(os.path.join(t, "uprobe_events")):
        return True, f"{t}/uprobe_events"
    return False, "no uprobe PMU and no uprobe_events (kernel without CONFIG_UPROBE_EVENTS, or tracefs not mounted)"


def base_status() -> tuple[bool, str]:
    """Can we load probes at all? (root, bcc, bpf()); the reason is one line."""
    if os.geteuid() != 0:
        return False, f"needs root (running as uid {os.geteuid()})"
    if bccload.import_bcc() is None:
        return False, bccload.bcc_error() or "bcc not found"
    ok, why = bpf_syscall_ok()
    if not ok:
        return False, why
    return True, "root, bcc and bpf() available"


ARCH_NAMES = {"x86_64": "x86_64 (amd64)", "aarch64": "aarch64 (arm64)"}


def probe_needs(arch: Optional[str] = None) -> list[tuple[str, str]]:
    """(probe, what it needs on this architecture), for `memprobe doctor` (docs/doctor.md). The
    mechanisms are those detect() tries; the fault-address tracepoint and fentry differ by arch."""
    arch = arch or platform.machine()
    x86 = arch == "x86_64"
    return [
        ("faults", "perf software page-fault event"),
        ("fault_addresses", "tracepoint exceptions:page_fault_user" if x86 else
                            f"none on {arch} (exceptions:page_fault_user is x86-only)"),
        ("pagecache", "filemap tracepoints"),
        ("memcg", "memcg tracepoints (Linux 6.13+), else memory.stat polling"),
        ("cuda", "uprobes on libcuda.so.1"),
        ("uvm", "fentry on nvidia_uvm (module BTF, BPF trampolines" +
                (")" if x86 else f"; bcc 0.26 offers fentry on x86_64 only, not on {arch})")),
    ]


def kfunc_refused(bcc) -> Optional[str]:
    """Why bcc will not load fentry (kfunc) programs here, or None. bcc decides in
    BPF.support_kfunc(): x86_64 only in bcc 0.26 (src/python/bcc/__init__.py), then kernel BTF and
    the bpf_trampoline_link_prog symbol."""
    try:
        if bcc.BPF.support_kfunc():
            return None
    except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
        return f"bcc could not tell whether fentry works: {e}"
    ver = getattr(bcc, "__version__", "?")
    arch = platform.machine()
    if arch != "x86_64":
        return f"bcc {ver} offers no fentry (kfunc) probes on {arch} (its BPF.support_kfunc() is x86_64-only)"
    return f"bcc {ver} says this kernel has no fentry (kfunc) support (BTF or BPF trampolines missing)"


def fentry_ok(function: str = "vfs_read") -> tuple[bool, str]:
    """Try to load an fentry program (compiles with bcc: ~0.3 s). Only called when asked."""
    bcc = bccload.import_bcc()
    if bcc is None:
        return False, bccload.bcc_error() or "bcc not found"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return False, "no kernel BTF (/sys/kernel/btf/vmlinux): fentry needs it"
    why = kfunc_refused(bcc)
    if why:
        return False, why
    bccload.prepare_environment()
    from .quiet import quiet_stderr
    try:
        with quiet_stderr():
            b = bcc.BPF(text=f"KFUNC_PROBE({function}) {{ return 0; }}")
        b.cleanup()
        return True, f"fentry on {function} loads"
    except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
        msg = str(e)
        if "super-user" in msg:
            # bcc reports the kernel's EPERM this way even for root (src/python/bcc/__init__.py)
            msg = "kernel refused the fentry program (EPERM as root: trampolines or lockdown)"
        return False, msg


def detect(want_fentry: bool = False) -> list[ProbeStatus]:
    """One ProbeStatus per mechanism, chosen where available, in fallback order."""
    ok, why = base_status()
    out: list[ProbeStatus] = []
    t = tracefs()
    arch = platform.machine()

    def add(name, mech, avail, reason, target=None):
        out.append(ProbeStatus(name, mech, bool(ok and avail), reason if ok else why, target))

    # 1. page faults: per process from /proc/<pid>/stat by default (no per-fault cost); per
    #    (cgroup, process) by the perf software event, which works everywhere (arm64 has no x86
    #    exceptions tracepoints); the x86 tracepoint adds addresses
    out.append(ProbeStatus("faults", "counters:/proc/<pid>/stat", True,
                           "minflt + majflt per process, kept by the kernel: no per-fault cost"))
    pf_ok, pf_why = perf_page_faults_ok() if ok else (False, why)
    add("faults", "perf:software/page-faults", pf_ok, pf_why)
    tp = tracepoint_exists("exceptions", "page_fault_user")
    add("fault_addresses", "raw_tracepoint:exceptions:page_fault_user", tp,
        "tracepoint present" if tp else
        ("tracefs not mounted" if t is None else f"no exceptions:page_fault_user on {arch} (x86 only)"))
    # 2. page cache by file
    add_tp = tracepoint_exists("filemap", "mm_filemap_add_to_page_cache")
    del_tp = tracepoint_exists("filemap", "mm_filemap_delete_from_page_cache")
    add("pagecache", "tracepoint:filemap:mm_filemap_add_to/delete_from_page_cache", add_tp and del_tp,
        "tracepoints present" if add_tp and del_tp else
        ("tracefs not mounted (mount -t tracefs tracefs /sys/kernel/tracing)" if t is None
         else "filemap tracepoints missing"))
    # 3. memcg stream (Linux 6.13+), else polling memory.stat
    mc = tracepoint_exists("memcg", "mod_memcg_state") and tracepoint_exists("memcg", "mod_memcg_lruvec_state")
    add("memcg", "tracepoint:memcg:mod_memcg_state/mod_memcg_lruvec_state", mc,
        "tracepoints present (Linux 6.13+), aggregated in the kernel per (memcg id, item)" if mc else
        ("tracefs not mounted" if t is None else "no memcg tracepoints (Linux < 6.13)"))
    out.append(ProbeStatus("memcg", "poll:memory.stat", True,
                           "memory.stat read at start and end, the default (flushed lazily: tens of pages "
                           "per CPU of error); the tracepoints with --memcg-stream"))
    # 4. CUDA uprobes
    up_ok, up_why = uprobes_ok()
    add("cuda", "uprobe:libcuda.so.1", up_ok, up_why)
    # 5. UVM CPU chunk allocations through fentry on nvidia_uvm
    if not os.path.isdir("/sys/module/nvidia_uvm"):
        uvm_ok, uvm_why = False, "nvidia_uvm module not loaded"
        if want_fentry and ok:
            f_ok, f_why = fentry_ok()
            uvm_why += f"; fentry on this kernel: {'works' if f_ok else f_why}"
    elif not os.path.exists("/sys/kernel/btf/nvidia_uvm"):
        uvm_ok, uvm_why = False, "nvidia_uvm has no BTF (/sys/kernel/btf/nvidia_uvm): fentry cannot attach"
    elif want_fentry and ok:
        uvm_ok, uvm_why = fentry_ok()
    elif ok and kfunc_refused(bccload.import_bcc()):
        uvm_ok, uvm_why = False, kfunc_refused(bccload.import_bcc())
    else:
        uvm_ok, uvm_why = True, "nvidia_uvm with BTF present (fentry tried at attach)"
    add("uvm", "fentry:nvidia_uvm:uvm_cpu_chunk_alloc", uvm_ok, uvm_why)
    return out


# mechanisms that read counters the kernel keeps (no BPF): they work wherever /proc and cgroupfs do
FREE = ("poll:memory.stat", "counters:/proc/<pid>/stat")


def summary(statuses: list[ProbeStatus]) -> tuple[bool, str]:
    """One line for `memprobe doctor`."""
    chosen = [f"{s.name} ({s.mechanism.split(':', 1)[0]})" for s in statuses if s.chosen]
    refused = sorted({f"{s.name}: {s.reason}" for s in statuses if not s.chosen and s.mechanism not in FREE
                      and not any(c.name == s.name and c.chosen for c in statuses)})
    text = ("supported: " + ", ".join(chosen)) if chosen else "no probe supported"
    if refused:
        text += "; not: " + "; ".join(refused)
    return any(s.chosen and s.mechanism not in FREE for s in statuses), text
