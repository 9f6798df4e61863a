"""What this host allows: each check says what it found and what its absence costs.

Used by `memprobe doctor` and written into every recording's header, so a report can say
what was not measured."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable

from .cgroupfs import detect_layout


@dataclass
class Check:
    name: str
    ok: bool
    detail: str          # what was found
    cost: str = ""       # what is lost when not ok


def check_root() -> Check:
    root = os.geteuid() == 0
    return Check("root", root, "running as root" if root else f"running as uid {os.geteuid()}",
                 "cannot create cgroups, load eBPF probes, or read other users' /proc/<pid> files")


def check_architecture() -> Check:
    """The CPU architecture and page size, and what each eBPF probe needs on this architecture
    (x86_64 and aarch64 are the ones tested: docs/testing.md)."""
    import platform

    from .bpf.supported import ARCH_NAMES, probe_needs
    arch = platform.machine()
    page = os.sysconf("SC_PAGE_SIZE")
    needs = "; ".join(f"{name}: {need}" for name, need in probe_needs(arch))
    return Check("architecture", arch in ARCH_NAMES,
                 f"{ARCH_NAMES.get(arch, arch)}, {page // 1024} KiB pages, kernel {os.uname().release}; "
                 f"probes need here: {needs}",
                 f"{arch} is not tested (x86_64 and aarch64 are): the native sampler and the eBPF "
                 "probes may not build or attach")


def check_cgroups(root: str = "/sys/fs/cgroup") -> Check:
    lay = detect_layout(root)
    where = {2: f"cgroup v2 at {lay.v2_root}", 1: f"cgroup v1 at {lay.v1_memory_root}"}.get(
        lay.memory_version, "no memory controller found")
    return Check("cgroups", lay.memory_version is not None, f"layout {lay.mode}; memory controller: {where}",
                 "no per-container accounting: only host-wide /proc numbers")


def check_native() -> Check:
    from .sampler import native_available
    ok, why = native_available()
    return Check("native sampler", ok, why,
                 "pure-Python readers are used: same numbers, about 5x the CPU per sample")


def check_tracefs(path: str = "/sys/kernel/tracing") -> Check:
    ok = os.path.isdir(f"{path}/events")
    return Check("tracefs", ok, f"{path} mounted" if ok else f"{path}/events not found",
                 "no tracepoints or uprobes: eBPF attribution is off "
                 "(mount -t tracefs tracefs /sys/kernel/tracing)")


def check_btf(path: str = "/sys/kernel/btf/vmlinux") -> Check:
    ok = os.path.exists(path)
    return Check("kernel BTF", ok, path if ok else f"{path} missing",
                 "kernel struct layouts unknown to BPF; probes then rely on helpers and tracepoint fields only")


def check_nvml() -> Check:
    from .nvml import NvmlReader
    r = NvmlReader()
    try:
        if r.error:
            return Check("NVML", False, r.error, "no GPU memory readings: GPU rows and CUDA free are None")
        v = r.versions()
        return Check("NVML", True, f"{len(r.handles)} GPU(s), driver {v['driver_version']}, "
                                   f"NVML {v['nvml_version']}", "")
    finally:
        r.close()


def check_bpf_probes() -> Check:
    """Which eBPF probes (memprobe probes, docs/probes.md) this host supports."""
    from .bpf import base_status, detect, summary
    ok, why = base_status()
    if not ok:
        return Check("eBPF probes", False, why,
                     "no attribution of faults, page cache, memcg charges or CUDA allocations to "
                     "cgroups, processes and files")
    any_ok, text = summary(detect())
    return Check("eBPF probes", any_ok, text, "no attribution by event, file or allocation call")


def check_container_engines() -> Check:
    """Which container engines answer (memprobe ls / attach ask them for names and PIDs)."""
    from .engines import connect_engines
    engines, tried = connect_engines()
    for e in engines:
        e.close()
    detail = "; ".join(a.line() for a in tried) or "none asked (MEMPROBE_ENGINES)"
    return Check("container engines", bool(engines), detail,
                 "containers are found by ID prefix in cgroup paths only (/proc scan): no names, "
                 "no exit codes or OOM flags")


CHECKS: list[Callable[[], Check]] = [check_root, check_architecture, check_cgroups, check_native, check_tracefs, check_btf,
                                     check_nvml, check_bpf_probes, check_container_engines]


def run_checks(checks=None) -> list[Check]:
    out = []
    for fn in checks or CHECKS:
        try:
            out.append(fn())
        except Exception as e:  # noqa: BLE001 - a broken probe is itself a finding
            out.append(Check(fn.__name__.removeprefix("check_"), False, f"check failed: {e!r}"))
    return out


def checks_to_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
