"""On the GPU: `memprobe preflight --engine vllm` predicts the KV cache that a small torch
program sizing its cache with vLLM's arithmetic then gets, within 1 %.

The child follows vllm-project/vllm a6d5c39 (vllm/utils/mem_utils.py MemorySnapshot and
memory_profiling; vllm/v1/worker/utils.py request_memory; gpu_worker.py
determine_available_memory), written from that source: a start-up snapshot of
torch.cuda.mem_get_info, requested = ceil(total x u), the check, "weights" loaded, a profile run
whose torch peak increase and non-torch increase are measured, then
KV = requested - (weights + peak increase + non-torch increase), allocated."""
from __future__ import annotations

import json
import subprocess
import sys

from spark_memprobe.cli import main

GiB = 1 << 30
UTIL, WEIGHTS, ACTIVATIONS = 0.3, 4 * GiB, 2 * GiB

CHILD = r"""
import gc, json, math, sys
import torch
util, weights, act = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.cuda.set_device(0)
gc.collect(); torch.cuda.empty_cache()
free0, total = torch.cuda.mem_get_info()                       # MemorySnapshot at init_device
non_torch0 = (total - free0) - torch.cuda.memory_reserved()
requested = math.ceil(total * util)                            # request_memory
if free0 < requested:
    print(json.dumps({"refused": True, "free": free0, "total": total})); sys.exit(0)
w = torch.empty(weights, dtype=torch.uint8, device="cuda")     # load_model
weights_memory = torch.cuda.memory_allocated()
gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
peak0 = torch.cuda.memory_stats()["allocated_bytes.all.peak"]  # memory_profiling: before_profile
a = torch.ones(act, dtype=torch.uint8, device="cuda")          # profile_run: peak activations
torch.cuda.synchronize(); del a
gc.collect(); torch.cuda.empty_cache()
free1, total1 = torch.cuda.mem_get_info()                      # after_profile
peak_increase = torch.cuda.memory_stats()["allocated_bytes.all.peak"] - peak0
non_torch_increase = ((total1 - free1) - torch.cuda.memory_reserved()) - non_torch0
kv = requested - (weights_memory + peak_increase + non_torch_increase)
cache = torch.empty(kv, dtype=torch.uint8, device="cuda")      # initialize_kv_cache
print(json.dumps({"refused": False, "free": free0, "total": total, "requested": requested, "kv": kv,
                  "weights": weights_memory, "peak_increase": peak_increase, "non_torch_increase": non_torch_increase}))
"""


def test_vllm_kv_size_within_one_percent_of_preflight(capsys):
    capsys.readouterr()
    rc = main(["preflight", "--engine", "vllm", "--gpu-memory-utilization", str(UTIL), "--weights-bytes",
               str(WEIGHTS), "--activation-peak-bytes", str(ACTIVATIONS), "--non-torch-bytes", "0", "--json"])
    pred = json.loads(capsys.readouterr().out)["prediction"]
    out = subprocess.run([sys.executable, "-c", CHILD, str(UTIL), str(WEIGHTS), str(ACTIVATIONS)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print("preflight:", {k: pred[k] for k in ("free_bytes", "total_bytes", "requested_bytes", "kv_bytes")})
    print("child:", got)
    assert pred["free_basis"] == "device free"
    assert got["refused"] is (rc == 8) and pred["admission_ok"] is (not got["refused"])
    assert pred["total_bytes"] == got["total"]                          # NVML total - reserved == cudaMemGetInfo
    # the child's own CUDA context (about 500 MB, docs/facts.md#f-cuda-context) is taken before it reads free
    assert 0 <= pred["free_bytes"] - got["free"] < GiB
    assert abs(got["kv"] - pred["kv_bytes"]) <= 0.01 * got["kv"]
