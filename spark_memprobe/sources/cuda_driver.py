"""What the CUDA driver says, asked from a short-lived subprocess (ctypes on libcuda.so.1).

The sampling process never initialises CUDA: a context costs about 500 MB of GPU memory
and would perturb what is measured (docs/facts.md#f-cuda-context). `probe_cuda()` runs this module
as a child process that calls cuInit and reads device attributes (no context is created);
with meminfo=True the child also creates the primary context and reads cuMemGetInfo, the
"free" that engines size their KV cache from, then exits (the context dies with it).

    python -I .../spark_memprobe/sources/cuda_driver.py [--meminfo]    prints one JSON object

The child runs this file as a script in isolated mode (sources/child_process.py), so it
imports nothing from the working directory, and only the standard library.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from typing import Optional

# Kept for the child: where libcuda.so.1 is when the loader's cache does not list it (e.g. a
# container with the driver mounted under /usr/local/nvidia/lib64). CUDA_VISIBLE_DEVICES is
# left out on purpose: every device is asked, and matched to NVML by UUID.
CHILD_ENV = ("LD_LIBRARY_PATH",)

# CUdevice_attribute values (cuda.h)
ATTRS = {"integrated": 18, "concurrent_managed_access": 89, "pageable_memory_access": 88,
         "pageable_memory_access_uses_host_page_tables": 100}


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _probe(meminfo: bool) -> dict:
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"error": f"libcuda.so.1 not loadable: {e}"}
    out: dict = {}
    v = ctypes.c_int()
    if cu.cuDriverGetVersion(ctypes.byref(v)) == 0:
        out["driver_version"] = v.value
    rc = cu.cuInit(0)
    if rc != 0:
        out["error"] = f"cuInit returned {rc}"
        return out
    n = ctypes.c_int()
    cu.cuDeviceGetCount(ctypes.byref(n))
    out["devices"] = []
    for i in range(n.value):
        dev = ctypes.c_int()
        cu.cuDeviceGet(ctypes.byref(dev), i)
        d: dict = {"ordinal": i}
        raw = (ctypes.c_char * 16)()
        fn = getattr(cu, "cuDeviceGetUuid_v2", None) or cu.cuDeviceGetUuid
        if fn(raw, dev) == 0:
            d["uuid"] = _uuid(bytes(raw))
        for name, attr in ATTRS.items():
            val = ctypes.c_int()
            if cu.cuDeviceGetAttribute(ctypes.byref(val), attr, dev) == 0:
                d[name] = val.value
        if meminfo:
            ctx = ctypes.c_void_p()
            if cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0:
                cu.cuCtxSetCurrent(ctx)
                free, total = ctypes.c_size_t(), ctypes.c_size_t()
                rc = cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
                if rc == 0:
                    d["mem_free_bytes"], d["mem_total_bytes"] = free.value, total.value
                else:
                    d["mem_error"] = f"cuMemGetInfo_v2 returned {rc}"
                cu.cuDevicePrimaryCtxRelease_v2(dev)
        out["devices"].append(d)
    return out


def probe_cuda(meminfo: bool = False, timeout: float = 60.0) -> dict:
    """Run the probe in a child process; {"error": ...} when it cannot answer."""
    from .child_process import isolated, python_argv      # here: the child runs this file as a script
    cmd = python_argv(os.path.abspath(__file__), *(["--meminfo"] if meminfo else []))
    env = {k: os.environ[k] for k in CHILD_ENV if k in os.environ}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **isolated(env))
    except subprocess.TimeoutExpired:
        return {"error": f"CUDA probe did not answer in {timeout:.0f} s"}
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": f"CUDA probe failed (exit {r.returncode}): {r.stderr.strip()[-200:]}"}


def integrated_by_uuid(probe: dict) -> dict[str, Optional[bool]]:
    return {d["uuid"]: bool(d["integrated"]) for d in probe.get("devices", [])
            if "uuid" in d and "integrated" in d}


if __name__ == "__main__":
    print(json.dumps(_probe("--meminfo" in sys.argv)))
