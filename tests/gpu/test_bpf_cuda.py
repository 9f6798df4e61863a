"""eBPF CUDA probes on a real GPU, through the real libcuda.so.1 (run on the GPU machine).

A child process in a fresh cgroup v2 creates a CUDA context with cupy, then, while the probes
are attached, allocates known sizes through the CUDA runtime (device: cudaMalloc, managed:
cudaMallocManaged, pinned: cudaHostAlloc, each reaching the driver's cuMemAlloc_v2,
cuMemAllocManaged and cuMemHostAlloc) and touches a host buffer page by page. Required:
exact bytes per kind attributed to the child and its cgroup v2 id, zero after the frees, and
the child's page faults counted under that cgroup.

Needs root, an NVIDIA GPU with cupy, and bcc (docs/probes.md "GPU machine" has the recipe:
PYTHONPATH, LD_LIBRARY_PATH and BCC_KERNEL_SOURCE pointing at an unpacked python3-bpfcc and
merged headers, tracefs mounted). Skips with the reason otherwise."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from livecg import remove_cgroup_dir

from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession, base_status
from spark_memprobe.sources.bpf.supported import tracefs
from spark_memprobe.sources.cgroupfs import detect_layout

pytestmark = [pytest.mark.gpu, pytest.mark.bpf]

DEVICE, MANAGED, PINNED = 256 << 20, 64 << 20, 32 << 20
TOUCH_PAGES = 20000


def _gpu_reason():
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - no cupy, no driver, no device
        return f"no usable GPU through cupy: {e}"
    return None if n > 0 else "no GPU"


@pytest.fixture
def gpu_ready():
    why = _gpu_reason()
    if why:
        pytest.skip(why)
    ok, bwhy = base_status()
    if not ok:
        pytest.skip(f"eBPF probes unavailable: {bwhy} (see docs/probes.md, GPU machine)")
    if tracefs() is None:
        pytest.skip("tracefs not mounted (mount -t tracefs tracefs /sys/kernel/tracing)")
    lay = detect_layout()
    if lay.v2_root is None:
        pytest.skip("no cgroup2 hierarchy")
    return lay.v2_root


CHILD = textwrap.dedent("""
    import os, sys, mmap
    with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    import cupy
    rt = cupy.cuda.runtime
    cupy.cuda.Device(0).use()
    rt.free(rt.malloc(1 << 20))             # context and runtime initialised before the probes
    print("ready", flush=True)
    sys.stdin.readline()
    d = rt.malloc(%(DEVICE)d)
    m = rt.mallocManaged(%(MANAGED)d, 1)    # cudaMemAttachGlobal
    h = rt.hostAlloc(%(PINNED)d, 0)
    buf = mmap.mmap(-1, %(TOUCH)d * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, %(TOUCH)d * 4096, 4096):
        buf[i] = 1
    print("allocated", flush=True)
    sys.stdin.readline()
    rt.free(d)
    rt.free(m)
    rt.freeHost(h)
    print("freed", flush=True)
    sys.stdin.readline()
""") % {"DEVICE": DEVICE, "MANAGED": MANAGED, "PINNED": PINNED, "TOUCH": TOUCH_PAGES}


def test_real_cuda_allocations_are_attributed_exactly_per_kind(gpu_ready):
    cg = os.path.join(gpu_ready, f"memprobe-gpu-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(cg)
    cgid = os.stat(cg).st_ino
    child = subprocess.Popen([sys.executable, "-c", CHILD, cg], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"

        def step(word, want):
            child.stdin.write(word + "\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == want

        opts = ProbeOptions(pagecache=False, memcg=False, uvm=False, pid=child.pid)
        with ProbeSession(opts) as s:
            libs = [x for x in s.statuses if x.mechanism == "uprobe+uretprobe" and x.chosen]
            assert libs, [vars(x) for x in s.statuses]
            r0 = s.collect()
            step("go", "allocated")
            s.poll(200)
            r1 = s.collect()
            step("free", "freed")
            s.poll(200)
            r2 = s.collect()

        def kinds(r):
            return {c.kind: c.outstanding_bytes for c in r.cuda if c.pid == child.pid}
        k0, k1, k2 = kinds(r0), kinds(r1), kinds(r2)
        print("libraries:", [x.target for x in libs])
        print("outstanding before/after alloc/after free:", k0, k1, k2)
        print("calls:", [(c.func, c.kind, c.size_bytes, c.result) for c in r2.cuda_calls if c.pid == child.pid])
        delta = {k: k1.get(k, 0) - k0.get(k, 0) for k in set(k0) | set(k1)}
        assert delta.get("device") == DEVICE
        assert delta.get("managed") == MANAGED
        assert delta.get("host-pinned") == PINNED
        assert {k: k2.get(k, 0) - k0.get(k, 0) for k in delta} == {k: 0 for k in delta}
        assert all(c.cgroup_id == cgid for c in r1.cuda if c.pid == child.pid)
        mine = [f for f in r1.faults if f.pid == child.pid]
        assert {f.cgroup_id for f in mine} == {cgid}
        assert sum(f.faults for f in mine) >= TOUCH_PAGES
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
        remove_cgroup_dir(cg, tries=50, wait_s=0.1)
