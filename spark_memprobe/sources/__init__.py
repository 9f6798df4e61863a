"""Readers of the machine: procfs, cgroupfs, NVML, container engines, native sampler, eBPF."""
