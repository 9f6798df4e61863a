"""The flight recorder's base ticks from what C says changed (feed/flat_delta.py), with NVML: the
host's sampler reads the GPUs every tick and their paths are compared in Python. While a process
allocates and frees device memory between ticks, the kept flat sample must equal the whole sample
built from the same C read, and the GPU's used memory and its process list must be seen to move."""
from __future__ import annotations

import pytest

from test_flat_delta import delta_ticks
from test_gpu_sources import GiB, cg  # noqa: F401 - the v2 cgroup with a CUDA worker

pytest.importorskip("spark_memprobe._native", reason="the native extension is not built here")


def test_host_delta_with_nvml_is_its_whole_sample(cg):
    from spark_memprobe.feed.host import open_host
    _, w = cg
    s, _first, _host = open_host()
    try:
        assert s.want_nvml and not s.nvml_error
        w.do("init")
        d, fast, moved = delta_ticks(s, 8, lambda i: w.do(f"malloc {GiB}" if i % 2 == 0 else "free_all"))
    finally:
        s.close()
    assert fast >= 4, f"{fast} delta ticks, {d.wholes} whole"
    assert any(p.startswith("gpus/#0/used_bytes") or p.startswith("gpus/#0/free_bytes") for p in moved), moved
