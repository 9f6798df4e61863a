"""Opening the host: a sampler with NVML and the host's facts (driver, GPUs, platform profile)
read with it. Used by the live feed, the exporter and snapshot."""
from __future__ import annotations

from ..samples import HostInfo, Sample
from ..sources.nvml import NvmlReader
from ..sources.platform import read_host_info
from ..sources.sampler import BaseSampler, open_sampler


def read_host(sampler: BaseSampler, gpus=None) -> HostInfo:
    """The host's facts for a sampler's host; gpus (a sample's GPU readings) decide the
    platform profile, else NVML is read once for it."""
    nv = NvmlReader()
    try:
        return read_host_info(sampler.cgfs.layout.mode, nv, gpus)
    finally:
        nv.close()


def open_host(proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", detail: bool = False,
              **target) -> tuple[BaseSampler, Sample, HostInfo]:
    """(sampler, its first sample, host facts): a sampler with NVML (of the host alone, or of
    the cgroup/version/pids given in target), its first sample (with the slow fields when
    detail) and the host's facts decided from that sample's GPU readings. The caller closes
    the sampler."""
    smp = open_sampler(proc=proc, cgroup_root=cgroup_root, nvml=True, **target)
    try:
        first = smp.sample(detail=detail)
        return smp, first, read_host(smp, first.gpus)
    except BaseException:
        smp.close()
        raise
