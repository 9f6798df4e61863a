"""The allocation kinds inference engines really use, on the real driver (issue 17).

Each test runs a PyTorch process (tests/gpu/torch_worker.py) in a fresh cgroup v2 with the eBPF
CUDA probes attached through the real libcuda.so.1, and compares what the probes count per kind
with what PyTorch itself says it holds (torch.cuda.memory_reserved) and with NVML:

- expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True): cuMemCreate ("vmm");
- the default caching allocator: cuMemAlloc_v2 ("device");
- backend:cudaMallocAsync: cuMemAllocAsync ("pool");
- cudaHostRegister: cuMemHostRegister_v2 ("host-registered"): pinned in place, no new shmem;
- cuBLAS and NCCL (one rank): their workspaces and buffers, against NVML per-process memory;
- a second engine in another cgroup: the ledger's "GPU, others" grows by its NVML bytes.
Everything must return to the baseline after the frees. Needs root, a GPU with torch, bcc and
tracefs (docs/probes.md, "GPU machine"); skips with the reason elsewhere."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from livecg import remove_cgroup_dir

from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession, base_status
from spark_memprobe.sources.bpf.supported import tracefs
from spark_memprobe.sources.cgroupfs import CgroupFS
from spark_memprobe.sources.nvml import NvmlReader

pytestmark = [pytest.mark.gpu, pytest.mark.bpf]

MiB = 1 << 20
HERE = os.path.dirname(__file__)
SIZE = 768 * MiB


def _skip_reason():
    try:
        import torch
        if not torch.cuda.is_available():
            return "torch sees no GPU"
    except ImportError as e:
        return f"no torch: {e}"
    ok, why = base_status()
    if not ok:
        return f"eBPF probes unavailable: {why} (docs/probes.md, GPU machine)"
    if tracefs() is None:
        return "tracefs not mounted"
    cgfs = CgroupFS()
    if cgfs.layout.mode != "v2" or cgfs.layout.memory_version != 2:
        return f"needs pure cgroup v2 with the memory controller (layout {cgfs.layout.mode})"
    return None


@pytest.fixture
def cgroups():
    why = _skip_reason()
    if why:
        pytest.skip(why)
    cgfs = CgroupFS()
    made = []

    def make(name):
        path = f"/memprobe-kinds-{name}-{uuid.uuid4().hex[:6]}"
        os.mkdir(cgfs.directory(path))
        made.append(path)
        return path, cgfs.directory(path)
    yield make
    for path in made:
        remove_cgroup_dir(cgfs.directory(path))


class Torch:
    def __init__(self, cgdir, conf=None):
        env = dict(os.environ)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = conf
        self.p = subprocess.Popen([sys.executable, os.path.join(HERE, "torch_worker.py"), cgdir],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert json.loads(self.p.stdout.readline()) == {"ready": True}

    def do(self, cmd) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def nvml_process_bytes(pid) -> int:
    r = NvmlReader()
    try:
        time.sleep(0.3)                   # NVML's process accounting follows within a moment
        return sum(gp.used_bytes or 0 for g in r.read() for gp in g.processes or [] if gp.pid == pid)
    finally:
        r.close()


def kinds(s: ProbeSession, pid) -> dict:
    s.poll(200)
    return {c.kind: c.outstanding_bytes for c in s.collect().cuda if c.pid == pid}


def delta(a, b):
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) != a.get(k, 0)}


def session(pid):
    return ProbeSession(ProbeOptions(faults=False, pagecache=False, memcg=False, uvm=False, pid=pid))


@pytest.mark.parametrize("conf,kind", [(None, "device"), ("expandable_segments:True", "vmm"),
                                       ("backend:cudaMallocAsync", "pool")])
def test_torch_allocator_bytes_per_kind(cgroups, conf, kind):
    _, d = cgroups(kind)
    w = Torch(d, conf)
    try:
        w.do("init")
        with session(w.p.pid) as s:
            k0, t0, n0 = kinds(s, w.p.pid), w.do("empty_cache"), nvml_process_bytes(w.p.pid)
            t1 = w.do(f"alloc {SIZE}")
            k1, n1 = kinds(s, w.p.pid), nvml_process_bytes(w.p.pid)
            t2 = w.do("free_all")
            k2 = kinds(s, w.p.pid)
            t3 = w.do("empty_cache")
            k3, n3 = kinds(s, w.p.pid), nvml_process_bytes(w.p.pid)
        print(f"{conf or 'default'}: torch reserved {t0['reserved']} -> {t1['reserved']} -> {t2['reserved']} -> "
              f"{t3['reserved']}; eBPF {k0} -> {k1} -> {k2} -> {k3}; NVML per-process {n0} -> {n1} -> {n3}")
        grew = delta(k0, k1)
        if kind == "pool":
            # the stream-ordered allocator asks the pool for exactly what torch asked for; the
            # pool's own reservation is what NVML sees
            assert grew == {"pool": SIZE}
            assert delta(k0, k2) == {}                        # freed to the pool at once
        else:
            # the caching allocator's segments are what torch reserves
            assert grew == {kind: t1["reserved"] - t0["reserved"]}
            assert t1["reserved"] - t0["reserved"] >= SIZE
        assert n1 - n0 >= SIZE                                # the card really holds it
        assert delta(k0, k3) == {}                            # all returned after empty_cache
        assert n3 - n0 < 64 * MiB
    finally:
        w.close()


def test_host_register_pins_in_place(cgroups):
    path, d = cgroups("register")
    w = Torch(d)
    cgfs = CgroupFS()
    try:
        w.do("init")
        with session(w.p.pid) as s:
            k0 = kinds(s, w.p.pid)
            st0 = cgfs.read(path, 2, notes=[]).stat
            r = w.do(f"register {256 * MiB}")
            k1 = kinds(s, w.p.pid)
            st1 = cgfs.read(path, 2, notes=[]).stat
            u = w.do("unregister")
            k2 = kinds(s, w.p.pid)
        print(f"register rc {r['rc']}, unregister rc {u['rc']}; eBPF {k0} -> {k1} -> {k2}; "
              f"anon +{st1['anon'] - st0['anon']}, shmem +{st1['shmem'] - st0['shmem']}")
        assert r["rc"] == 0 and u["rc"] == 0
        assert delta(k0, k1) == {"host-registered": 256 * MiB}
        assert delta(k0, k2) == {}
        # the registered pages are the process's own anonymous memory: no new shmem
        assert abs((st1["anon"] - st0["anon"]) - 256 * MiB) < 8 * MiB
        assert abs(st1["shmem"] - st0["shmem"]) < 8 * MiB
    finally:
        w.close()


def test_cublas_and_nccl_against_nvml(cgroups):
    """cuBLAS's handle and workspace and NCCL's buffers: the GPU bytes the probes count for the
    process (every device-side kind) against what NVML says it holds. What NVML sees beyond
    the hooked entry points (module code loaded by cuModuleLoad, driver-internal buffers) is
    printed; the bound below is what this driver measured plus a margin (H200, driver 580.159.04:
    cuBLAS 1.9 MiB, NCCL 170 MiB beyond the probes)."""
    _, d = cgroups("nccl")
    w = Torch(d)
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    try:
        w.do("init")
        with session(w.p.pid) as s:
            k0, n0 = kinds(s, w.p.pid), nvml_process_bytes(w.p.pid)
            w.do("matmul")
            k1, n1 = kinds(s, w.p.pid), nvml_process_bytes(w.p.pid)
            w.do(f"nccl {port}")
            k2, n2 = kinds(s, w.p.pid), nvml_process_bytes(w.p.pid)
        dev = ("device", "vmm", "pool")
        for name, ka, kb, na, nb in (("cublas", k0, k1, n0, n1), ("nccl", k1, k2, n1, n2)):
            probe = sum(v for k, v in delta(ka, kb).items() if k in dev)
            print(f"{name}: eBPF {delta(ka, kb)} (device-side {probe}), NVML per-process +{nb - na}, "
                  f"not seen by the probes {nb - na - probe}")
            assert probe > 0
            assert 0 <= nb - na - probe <= 256 * MiB
    finally:
        w.close()


def test_second_engine_in_another_cgroup_is_gpu_other(cgroups):
    """Target A holds 256 MiB; engine B in another cgroup allocates 1 GiB: the ledger of A puts
    B's NVML bytes in "GPU, others" (NVML device used minus A's processes) and nothing in A."""
    from spark_memprobe.ledger import build_ledger
    from spark_memprobe.sources.platform import read_host_info
    from spark_memprobe.sources.sampler import open_sampler

    path_a, dir_a = cgroups("a")
    _, dir_b = cgroups("b")
    a, b = Torch(dir_a), Torch(dir_b)
    nvml = NvmlReader()
    host = read_host_info("v2", nvml)
    nvml.close()
    try:
        a.do("init")
        a.do(f"alloc {256 * MiB}")
        b.do("init")

        def ledger():
            time.sleep(0.3)
            with open_sampler(cgroup=path_a, nvml=True) as smp:
                lg = build_ledger(host, smp.sample())
            row = {r.key: r for r in lg.rows}
            return row["gpu_target"].cells["nvml_used"], row["gpu_other"].cells["nvml_used"]

        t0, o0 = ledger()
        nb0 = nvml_process_bytes(b.p.pid)
        b.do(f"alloc {1 << 30}")
        t1, o1 = ledger()
        nb1 = nvml_process_bytes(b.p.pid)
        b.do("free_all")
        b.do("empty_cache")
        t2, o2 = ledger()
        print(f"A's row {t0} -> {t1} -> {t2}; GPU, others {o0} -> {o1} -> {o2}; B per-process {nb0} -> {nb1}")
        assert t1 == t0 and t2 == t0
        assert abs((o1 - o0) - (nb1 - nb0)) <= 4 * MiB
        assert nb1 - nb0 >= 1 << 30
        assert abs(o2 - o0) <= 4 * MiB
    finally:
        a.close()
        b.close()
