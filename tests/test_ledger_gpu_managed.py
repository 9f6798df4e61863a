"""Managed memory after it migrated to the GPU, next to pinned host memory that stays mapped
(issue 17, defects 1 and 2 of an H200 run). Readings are built from the counters measured on the
H200 (docs/facts.md#f-managed-migrated, #f-file-mapped-shmem): the managed pages left the CPU
(file_mapped fell, the kernel charge stayed), the pinned buffers are shmem that the process maps
(file_mapped and RssShmem), NVML used holds the managed pages but NVML per-process does not."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from spark_memprobe.ledger import LedgerInputs, build_ledger
from spark_memprobe.samples import (CgroupSample, GpuProcess, GpuSample, HostInfo, Meminfo, PlatformProfile,
                                    ProcessSample, Sample)

PAGE = 4096
MiB, GiB = 1 << 20, 1 << 30
CG = "/engine"
PID = 4242
HOST = HostInfo(page_size=PAGE, platform=PlatformProfile("discrete", ["test readings"]))


def reading(pinned: int, managed: int, managed_on_gpu: bool, device: int = 2 * GiB, driver_other: int = 600 * MiB,
            other_procs: int = 3 * GiB, page_cache_mapped: int = 0) -> Sample:
    kernel_items = 64 * MiB
    on_cpu = 0 if managed_on_gpu else managed
    stat = {"anon": 512 * MiB, "file": pinned + page_cache_mapped + 256 * MiB, "shmem": pinned,
            "kernel": kernel_items + managed, "slab": 48 * MiB, "slab_reclaimable": 16 * MiB,
            "kernel_stack": 4 * MiB, "pagetables": 12 * MiB, "sec_pagetables": 0, "percpu": 0, "vmalloc": 0,
            "sock": 0, "file_mapped": pinned + page_cache_mapped + on_cpu,
            "active_file": page_cache_mapped + 128 * MiB, "inactive_file": 128 * MiB, "file_dirty": 0,
            "file_writeback": 0}
    current = stat["anon"] + stat["file"] + stat["kernel"]
    cg = CgroupSample(path=CG, version=2, current_bytes=current, stat=stat, max_bytes="max", procs=[PID])
    proc = ProcessSample(pid=PID, rss_anon_bytes=512 * MiB, rss_file_bytes=page_cache_mapped + on_cpu,
                         rss_shmem_bytes=pinned)
    used = device + other_procs + driver_other + (managed if managed_on_gpu else 0)
    gpu = GpuSample(index=0, total_bytes=141 * GiB, used_bytes=used, free_bytes=141 * GiB - used, reserved_bytes=0,
                    processes=[GpuProcess(pid=PID, kind="compute", used_bytes=device),
                               GpuProcess(pid=7, kind="compute", used_bytes=other_procs)])
    mi = {"MemTotal": 1000 * GiB, "MemFree": 900 * GiB, "MemAvailable": 950 * GiB, "Active(file)": 10 * GiB,
          "Inactive(file)": 10 * GiB, "KReclaimable": GiB, "Mapped": stat["file_mapped"], "Cached": 20 * GiB}
    return Sample(mono_ns=1, wall_ns=1, meminfo=Meminfo(bytes=mi), cgroup=cg, processes=[proc], gpus=[gpu])


def ebpf(pinned: int, managed: int) -> LedgerInputs:
    return LedgerInputs(cuda_bytes={"managed": managed, "host-pinned": pinned, "device": 2 * GiB})


def rules(lg) -> dict:
    return {f.rule: f for f in lg.findings}


def row(lg, key):
    return next(r for r in lg.rows if r.key == key)


def test_the_h200_case_raises_no_managed_double_view():
    """532 MiB of pinned buffers stay mapped, 1 GiB of managed memory went to the GPU: the old
    estimate min(unitemised kernel, file_mapped, eBPF managed) called the pinned bytes managed."""
    pinned, managed = 532 * MiB, GiB
    lg = build_ledger(HOST, reading(pinned, managed, managed_on_gpu=True), ebpf(pinned, managed))
    assert "managed_double_view" not in rules(lg)
    assert "pinned_shmem" in rules(lg)


def test_managed_on_the_gpu_belongs_to_the_target_with_ebpf():
    pinned, managed = 532 * MiB, GiB
    lg = build_ledger(HOST, reading(pinned, managed, managed_on_gpu=True), ebpf(pinned, managed))
    assert row(lg, "gpu_target").cells["nvml_used"] == 2 * GiB + managed
    assert row(lg, "gpu_target").cells["nvml_procs"] == 2 * GiB          # NVML per-process leaves it out
    assert row(lg, "gpu_target.managed").cells["nvml_used"] == managed
    assert row(lg, "gpu_other").cells["nvml_used"] == 3 * GiB + 600 * MiB
    assert row(lg, "gpu_other").label == "GPU, others"


def test_managed_on_the_cpu_is_not_put_on_the_gpu():
    """Touched on the CPU: the pages are mapped there (kernel and file_mapped), the double view is
    raised, and none of it is counted as GPU memory of the target."""
    lg = build_ledger(HOST, reading(0, GiB, managed_on_gpu=False), ebpf(0, GiB))
    assert rules(lg)["managed_double_view"].bytes == GiB
    assert row(lg, "gpu_target").cells["nvml_used"] == 2 * GiB
    assert not any(r.key == "gpu_target.managed" for r in lg.rows)


def test_without_ebpf_the_gpu_rest_is_not_attributed():
    lg = build_ledger(HOST, reading(532 * MiB, GiB, managed_on_gpu=True), LedgerInputs())
    other = row(lg, "gpu_other")
    assert other.label == "GPU, not attributed" and "managed" in other.title
    assert other.cells["nvml_used"] == 3 * GiB + 600 * MiB + GiB
    assert "managed_double_view" not in rules(lg)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4 * GiB // PAGE), st.integers(1, 8 * GiB // PAGE), st.integers(0, 2 * GiB // PAGE),
       st.booleans())
def test_pinned_plus_managed_on_gpu_never_raises_managed_double_view(pinned, managed, driver, with_ebpf):
    pinned, managed, driver = pinned * PAGE, managed * PAGE, driver * PAGE
    s = reading(pinned, managed, managed_on_gpu=True, driver_other=driver)
    lg = build_ledger(HOST, s, ebpf(pinned, managed) if with_ebpf else LedgerInputs())
    assert "managed_double_view" not in rules(lg)
    if with_ebpf:
        assert row(lg, "gpu_target").cells["nvml_used"] - 2 * GiB == managed


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4 * GiB // PAGE), st.integers(1, 2 * GiB // PAGE))
def test_mapped_page_cache_can_only_shrink_the_gpu_managed_estimate(managed, cache):
    """Mapped page cache in file_mapped cannot be told from managed pages still on the CPU by
    counters alone (docs/ledger.md, "managed on GPU"): the estimate stays between the live managed
    bytes less the mapped page cache and the live managed bytes."""
    managed, cache = managed * PAGE, cache * PAGE
    lg = build_ledger(HOST, reading(0, managed, managed_on_gpu=True, page_cache_mapped=cache), ebpf(0, managed))
    got = row(lg, "gpu_target").cells["nvml_used"] - 2 * GiB
    assert max(0, managed - cache) <= got <= managed
