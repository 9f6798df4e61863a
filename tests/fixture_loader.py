"""Load a captured fixture step (tests/fixtures/<scenario>/steps/NN-*) into the tool's types.

The kernel files are read by the real PureSampler with the step's proc/ and cgroup/ as
roots. nvml.json (nvidia-ml-py readings saved by the capture; errors kept as
{"nvml_error": ..., "code": N}) becomes GpuInfo/GpuSample here: that file is a capture
format, not something the tool reads on a live host."""
from __future__ import annotations

import json
import os
from typing import Optional

from spark_memprobe.samples import GpuInfo, GpuProcess, GpuSample, HostInfo, Sample
from spark_memprobe.sources.cgroupfs import CgroupFS, parse_proc_cgroup
from spark_memprobe.sources.nvml import ADDRESSING_MODES
from spark_memprobe.sources.platform import detect_platform
from spark_memprobe.sources.sampler import PureSampler

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NVML_CODES = {3: "NOT_SUPPORTED", 13: "FUNCTION_NOT_FOUND"}


def steps(scenario: str) -> list[str]:
    d = os.path.join(FIXTURES, scenario, "steps")
    return [os.path.join(d, s) for s in sorted(os.listdir(d))]


def step_pids(step: str) -> list[int]:
    d = os.path.join(step, "proc")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit())


def _err(v) -> Optional[str]:
    if isinstance(v, dict) and "nvml_error" in v:
        return NVML_CODES.get(v.get("code"), v["nvml_error"])
    return None


def load_nvml(step: str, cgfs: CgroupFS) -> tuple[Optional[dict], list[GpuInfo], Optional[list[GpuSample]]]:
    path = os.path.join(step, "nvml.json")
    if not os.path.exists(path):
        return None, [], None
    j = json.load(open(path))
    info = GpuInfo(index=0, name=j.get("name"), uuid=j.get("uuid"))
    mode = j.get("addressing_mode")
    info.addressing_mode = ADDRESSING_MODES.get(mode) if isinstance(mode, int) else None
    c2c = j.get("c2c_enabled")
    info.c2c_enabled = bool(c2c) if isinstance(c2c, int) else None
    numa = j.get("numa_node")
    info.numa_node = numa if isinstance(numa, int) else None
    g = GpuSample(index=0)
    mem = j.get("memory_v2") or j.get("memory_v1")
    if isinstance(mem, dict) and not _err(mem):
        g.total_bytes, g.free_bytes, g.used_bytes = mem.get("total"), mem.get("free"), mem.get("used")
        g.reserved_bytes = mem.get("reserved")
        info.memory_total_bytes = g.total_bytes
    else:
        g.memory_error = _err(mem) or "NOT_CAPTURED"
    procs = j.get("compute_processes")
    if isinstance(procs, list):
        g.processes = []
        for p in procs:
            owner = None
            cg = os.path.join(step, "proc", str(p["pid"]), "cgroup")
            if os.path.exists(cg):
                owner = cgfs.memory_cgroup_of(parse_proc_cgroup(open(cg, "rb").read()))[1]
            g.processes.append(GpuProcess(pid=p["pid"], kind="compute", used_bytes=p.get("usedGpuMemory"),
                                          owner_cgroup=owner))
    else:
        g.processes_error = _err(procs) or "NOT_CAPTURED"
    return j, [info], [g]


def load_step(step: str, cgroup: Optional[str], pids: Optional[list[int]] = None) -> tuple[HostInfo, Sample]:
    """(HostInfo, Sample) for one step; pids default to the processes captured in proc/."""
    pids = step_pids(step) if pids is None else pids
    cgroot = os.path.join(step, "cgroup")
    with PureSampler(proc=os.path.join(step, "proc"), cgroup_root=cgroot, cgroup=cgroup, pids=pids) as smp:
        s = smp.sample(detail=True)
        cgfs = smp.cgfs
    j, infos, gpus = load_nvml(step, cgfs)
    s.gpus = gpus
    uname = os.path.join(step, "..", "..", "uname")
    words = open(uname).read().split() if os.path.exists(uname) else []
    kernel = words[2] if len(words) > 2 else None
    machine = words[-2] if len(words) > 2 else None        # `uname -a`: ... <machine> <os>
    # 4 KiB pages assumed: no fixture captured the page size (getconf PAGESIZE)
    host = HostInfo(hostname="fixture", kernel=kernel, machine=machine, page_size=4096,
                    cgroup_layout=cgfs.layout.mode, driver_version=(j or {}).get("driver"),
                    nvml_version=(j or {}).get("nvml"), gpus=infos)
    host.platform = detect_platform(infos, gpus, None if j else "no nvml.json in this step")
    return host, s
