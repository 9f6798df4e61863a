"""GPU tests: run on the GPU machine (pure cgroup v2, one H100); skipped elsewhere with the reason."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))


def _gpu_reason():
    from spark_memprobe.sources.nvml import NvmlReader
    r = NvmlReader()
    try:
        if r.error:
            return f"no NVIDIA GPU here ({r.error})"
        if not r.handles:
            return "NVML found no GPU"
        return None
    finally:
        r.close()


_REASON = _gpu_reason()


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if _REASON:
                item.add_marker(pytest.mark.skip(reason=_REASON))
