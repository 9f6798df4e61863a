"""Platform profile from readings (documented model inputs for the kinds this CI host lacks),
and the no-driver path on this host for real."""
import pytest

from spark_memprobe.samples import GpuInfo, GpuSample
from spark_memprobe.sources.nvml import NvmlReader
from spark_memprobe.sources.platform import detect_platform


def info(**kw):
    return GpuInfo(index=0, **kw)


@pytest.mark.parametrize("gi,gs,kind,evidence", [
    # H100 as read on the GPU machine (docs/measured/h100-gpu-sources.log)
    (info(addressing_mode="NONE", c2c_enabled=False, memory_total_bytes=85520809984, integrated=False),
     GpuSample(index=0, total_bytes=85520809984), "discrete", "own memory of 85520809984 bytes"),
    # GB10 as reported: device memory NOT_SUPPORTED (nvidia-smi shows "Not Supported")
    (info(addressing_mode="ATS"), GpuSample(index=0, memory_error="NOT_SUPPORTED"), "integrated", "NOT_SUPPORTED"),
    (info(integrated=True), GpuSample(index=0, total_bytes=1), "integrated", "integrated = 1"),
    # GH200 in NUMA mode: C2C on, ATS, GPU memory is a NUMA node
    (info(c2c_enabled=True, addressing_mode="ATS", numa_node=1), GpuSample(index=0, total_bytes=1), "coherent-numa",
     "NVLink-C2C enabled"),
    (info(addressing_mode="ATS"), GpuSample(index=0, total_bytes=1), "coherent-numa", "addressing mode ATS"),
    (info(addressing_mode="HMM", c2c_enabled=False), GpuSample(index=0, total_bytes=1), "discrete", "addressing mode HMM"),
])
def test_detect(gi, gs, kind, evidence):
    p = detect_platform([gi], [gs])
    assert p.kind == kind and any(evidence in e for e in p.evidence), p


def test_mixed_gpus_are_unknown_not_guessed():
    p = detect_platform([GpuInfo(index=0), GpuInfo(index=1, integrated=True)],
                        [GpuSample(index=0, total_bytes=1), GpuSample(index=1, total_bytes=1)])
    assert p.kind == "unknown" and "disagree" in p.evidence[0]


def test_no_driver_here_is_a_reason_not_a_crash():
    r = NvmlReader()
    try:
        if not r.error:
            pytest.skip("this host has an NVIDIA driver; the no-driver path is what CI checks")
        assert "no NVIDIA driver" in r.error and r.handles == []
        assert detect_platform([], None, r.error).kind == "no-gpu"
    finally:
        r.close()
