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


def _recorded_e2e() -> bool:
    """The end-to-end checks only read a finished run's files: with MEMPROBE_E2E_OUT naming one,
    they can run anywhere (e.g. here, on files brought back from the GPU machine)."""
    out = os.environ.get("MEMPROBE_E2E_OUT")
    return bool(out) and os.path.exists(os.path.join(out, "run.json"))


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if _REASON and not (item.fspath.basename == "test_e2e_inference.py" and _recorded_e2e()):
                item.add_marker(pytest.mark.skip(reason=_REASON))
