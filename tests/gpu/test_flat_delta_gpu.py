"""The flight recorder's base ticks from what C says changed (feed/flat_delta.py), with NVML: the
host's sampler reads the GPUs every tick and their paths are compared in Python. While a process
allocates and frees device memory between ticks, the kept flat sample must equal the whole sample
built from the same C read, and the GPU's used memory and its process list must be seen to move."""
from __future__ import annotations

import os
import time

import pytest

from test_gpu_sources import GiB, cg  # noqa: F401 - the v2 cgroup with a CUDA worker
from spark_memprobe.recording import flatten

pytest.importorskip("spark_memprobe._native", reason="the native extension is not built here")


def test_host_delta_with_nvml_is_its_whole_sample(cg):
    from spark_memprobe.feed.flat_delta import FlatDelta
    from spark_memprobe.feed.host import open_host
    _, w = cg
    s, _first, _host = open_host()
    try:
        assert s.want_nvml and not s.nvml_error
        d = FlatDelta(s)
        d.rebase(flatten(s.sample(full=True)), s.last_c)
        w.do("init")
        fast, wholes, moved = 0, 0, set()
        for i in range(8):
            w.do(f"malloc {GiB}" if i % 2 == 0 else "free_all")
            changed = d.step()
            if changed is None:
                wholes += 1
                d.rebase(flatten(s.sample(full=True)), s.last_c)
                continue
            fast += 1
            moved |= changed.keys()
            assert d.flat == flatten(s.to_sample(s.last_c))
    finally:
        s.close()
    assert fast >= 4, f"{fast} delta ticks, {wholes} whole"
    assert any(p.startswith("gpus/#0/used_bytes") or p.startswith("gpus/#0/free_bytes") for p in moved), moved
