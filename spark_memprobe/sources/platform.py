"""Platform profile and host facts, decided from readings, never from product names.

  discrete       the GPU has its own memory (HBM/GDDR) that NVML reports, addressing mode
                 NONE or HMM, no C2C, no GPU NUMA node (H100 PCIe/SXM)
  integrated     GPU allocations come out of system RAM: NVML device memory NOT_SUPPORTED
                 or CUDA's integrated attribute is 1 (DGX Spark GB10)
  coherent-numa  GPU memory is visible to the OS as a NUMA node: C2C enabled, addressing
                 mode ATS, or NVML gives the GPU a NUMA node id (GH200/GB200 in NUMA mode)
"""
from __future__ import annotations

import os
from typing import Optional

from ..samples import GpuInfo, GpuSample, HostInfo, PlatformProfile


def detect_platform(infos: list[GpuInfo], gpus: Optional[list[GpuSample]],
                    nvml_error: Optional[str] = None) -> PlatformProfile:
    if nvml_error:
        return PlatformProfile("no-gpu", [nvml_error])
    if not infos:
        return PlatformProfile("no-gpu", ["NVML found no GPU"])
    kinds, evidence = set(), []
    by_index = {g.index: g for g in gpus or []}
    for info in infos:
        g = by_index.get(info.index)
        tag = f"GPU {info.index}"
        uma = []
        if g is not None and g.memory_error == "NOT_SUPPORTED":
            uma.append("nvmlDeviceGetMemoryInfo returns NOT_SUPPORTED (no dedicated memory)")
        if info.integrated:
            uma.append("CUDA attribute integrated = 1")
        numa = []
        if info.c2c_enabled:
            numa.append("NVLink-C2C enabled")
        if info.addressing_mode == "ATS":
            numa.append("addressing mode ATS")
        if info.numa_node is not None and info.numa_node >= 0:
            numa.append(f"GPU memory is NUMA node {info.numa_node}")
        if uma:
            kinds.add("integrated")
            evidence += [f"{tag}: {e}" for e in uma]
        elif numa:
            kinds.add("coherent-numa")
            evidence += [f"{tag}: {e}" for e in numa]
        else:
            kinds.add("discrete")
            total = g.total_bytes if g is not None and g.total_bytes is not None else info.memory_total_bytes
            evidence.append(f"{tag}: own memory of {total} bytes reported by NVML" if total is not None
                            else f"{tag}: NVML device memory readable")
            evidence.append(f"{tag}: addressing mode {info.addressing_mode or 'unknown (before R580)'}, "
                            f"C2C {'off' if info.c2c_enabled is False else 'unknown'}, no GPU NUMA node")
    if len(kinds) > 1:
        return PlatformProfile("unknown", ["GPUs disagree: " + ", ".join(sorted(kinds))] + evidence)
    return PlatformProfile(kinds.pop(), evidence)


def read_host_info(cgroup_layout: Optional[str] = None, nvml=None, gpus=None, cuda: bool = True) -> HostInfo:
    """Static host facts; with an NvmlReader, the driver, GPUs and platform profile too.
    With cuda=True and GPUs present, CUDA's `integrated` attribute is asked from a
    short-lived subprocess (no context is created)."""
    u = os.uname()
    h = HostInfo(hostname=u.nodename, kernel=u.release, machine=u.machine,
                 page_size=os.sysconf("SC_PAGE_SIZE"), cgroup_layout=cgroup_layout)
    if nvml is None:
        h.platform = PlatformProfile("unknown", ["NVML not read"])
        return h
    if nvml.error:
        h.notes.append(nvml.error)
    v = nvml.versions()
    h.driver_version, h.nvml_version, h.cuda_driver_version = v["driver_version"], v["nvml_version"], v["cuda_driver_version"]
    h.gpus = nvml.infos() if not nvml.error else []
    if cuda and h.gpus:
        from .cuda_driver import integrated_by_uuid, probe_cuda
        probe = probe_cuda()
        if "error" in probe:
            h.notes.append(f"CUDA attributes not read: {probe['error']}")
        flags = integrated_by_uuid(probe)
        for g in h.gpus:
            g.integrated = flags.get(g.uuid)
    h.platform = detect_platform(h.gpus, gpus if gpus is not None else (nvml.read() if not nvml.error else None),
                                 nvml.error)
    return h
