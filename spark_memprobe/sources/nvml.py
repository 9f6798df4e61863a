"""NVML readings through nvidia-ml-py (import name `pynvml`).

Every call that NVML refuses (NOT_SUPPORTED on GB10 device memory, FUNCTION_NOT_FOUND on
older drivers, NOT_SUPPORTED for the NUMA node of a discrete card) becomes None with a
note naming the call and the error; no GPU, no driver and no library give an empty
reading with a reason, never 0 and never a crash.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..samples import GpuInfo, GpuProcess, GpuSample

ADDRESSING_MODES = {0: "NONE", 1: "HMM", 2: "ATS"}   # NVML_DEVICE_ADDRESSING_MODE_* (nvml.h, R580)


def _error_name(pynvml, e) -> str:
    code = getattr(e, "value", None)
    for name in dir(pynvml):
        if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == code:
            return name[len("NVML_ERROR_"):]
    return str(e)


class NvmlReader:
    """Open NVML once; read static facts and per-tick memory. `error` says why nothing is
    read (None when NVML is up)."""

    def __init__(self):
        self.error: Optional[str] = None
        self.handles: list = []
        self.nvml = None
        try:
            import pynvml
        except ImportError:
            self.error = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            name = _error_name(pynvml, e)
            self.error = ("no NVIDIA driver (libnvidia-ml.so.1 not found)" if name == "LIBRARY_NOT_FOUND"
                          else f"nvmlInit failed: {name}")
            return
        self.nvml = pynvml
        n, err = self.call(pynvml.nvmlDeviceGetCount)
        for i in range(n or 0):
            h, err = self.call(pynvml.nvmlDeviceGetHandleByIndex, i)
            if h is not None:
                self.handles.append(h)

    def call(self, fn: Callable, *args) -> tuple[Any, Optional[str]]:
        """(value, None) or (None, "NOT_SUPPORTED"-style error name)."""
        try:
            return fn(*args), None
        except self.nvml.NVMLError as e:
            return None, _error_name(self.nvml, e)
        except AttributeError:           # an nvidia-ml-py too old to have the function
            return None, "FUNCTION_NOT_IN_BINDINGS"

    @staticmethod
    def _str(v) -> Optional[str]:
        return v.decode() if isinstance(v, bytes) else v

    def versions(self) -> dict[str, Any]:
        if self.nvml is None:
            return {"driver_version": None, "nvml_version": None, "cuda_driver_version": None}
        p = self.nvml
        return {"driver_version": self._str(self.call(p.nvmlSystemGetDriverVersion)[0]),
                "nvml_version": self._str(self.call(p.nvmlSystemGetNVMLVersion)[0]),
                "cuda_driver_version": self.call(p.nvmlSystemGetCudaDriverVersion)[0]}

    def infos(self) -> list[GpuInfo]:
        p = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            g = GpuInfo(index=i)

            def get(label, fn, *a):
                v, err = self.call(fn, h, *a)
                if err:
                    g.notes.append(f"{label}: {err}")
                return v
            g.name = self._str(get("nvmlDeviceGetName", p.nvmlDeviceGetName))
            g.uuid = self._str(get("nvmlDeviceGetUUID", p.nvmlDeviceGetUUID))
            pci = get("nvmlDeviceGetPciInfo", p.nvmlDeviceGetPciInfo)
            g.pci_bus_id = self._str(pci.busId) if pci is not None else None
            mem = get("nvmlDeviceGetMemoryInfo", p.nvmlDeviceGetMemoryInfo)
            g.memory_total_bytes = mem.total if mem is not None else None
            mode = get("nvmlDeviceGetAddressingMode", p.nvmlDeviceGetAddressingMode)
            g.addressing_mode = ADDRESSING_MODES.get(mode, str(mode)) if mode is not None else None
            c2c = get("nvmlDeviceGetC2cModeInfoV", p.nvmlDeviceGetC2cModeInfoV)
            g.c2c_enabled = bool(c2c.isC2cEnabled) if c2c is not None else None
            g.numa_node = get("nvmlDeviceGetNumaNodeId", p.nvmlDeviceGetNumaNodeId)
            out.append(g)
        return out

    def read(self) -> list[GpuSample]:
        """Memory (v2, else v1) and processes of every GPU, now."""
        p = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            g = GpuSample(index=i)
            m, err = self.call(p.nvmlDeviceGetMemoryInfo, h, p.nvmlMemory_v2)
            if m is not None:
                g.total_bytes, g.free_bytes, g.used_bytes, g.reserved_bytes = m.total, m.free, m.used, m.reserved
            else:
                m1, err = self.call(p.nvmlDeviceGetMemoryInfo, h)
                if m1 is not None:
                    g.total_bytes, g.free_bytes, g.used_bytes = m1.total, m1.free, m1.used
                g.memory_error = err      # NOT_SUPPORTED on GB10 (integrated, no dedicated memory)
            g.processes = []
            for kind, fn in (("compute", p.nvmlDeviceGetComputeRunningProcesses),
                             ("graphics", p.nvmlDeviceGetGraphicsRunningProcesses),
                             ("mps", p.nvmlDeviceGetMPSComputeRunningProcesses)):
                procs, perr = self.call(fn, h)
                if perr:
                    if kind == "compute":
                        g.processes_error = perr
                    continue
                for pr in procs:
                    used = pr.usedGpuMemory   # None when NVML_VALUE_NOT_AVAILABLE
                    g.processes.append(GpuProcess(pid=pr.pid, kind=kind, used_bytes=used))
            out.append(g)
        return out

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
            self.nvml = None
