"""A PyTorch "engine" for tests/gpu/test_ab_gpu.py: vLLM v1's KV arithmetic on a real GPU
(vllm/v1/worker/gpu_worker.py, 0.10.x: requested = utilization x total at start-up; the KV cache
gets requested minus what became used since), with real weights: MODEL is mapped, copied to the
GPU, and EXTRA_MIB of GPU memory stand for a larger activation peak. Prints vLLM's log line.

    python torch_engine.py MODEL UTILIZATION EXTRA_MIB
"""
import mmap
import sys
import time

import torch

model, util, extra_mib = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.zeros(1, device="cuda")                            # the CUDA context, before the snapshot
free0, total = torch.cuda.mem_get_info()
with open(model, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    weights = torch.frombuffer(m, dtype=torch.uint8).to("cuda")
peak = torch.empty(extra_mib << 20, dtype=torch.uint8, device="cuda").fill_(1) if extra_mib else None
torch.cuda.synchronize()
free1, _ = torch.cuda.mem_get_info()
kv = int(util * total) - (free0 - free1)
print(time.strftime("INFO %m-%d %H:%M:%S [gpu_worker.py:276] ")
      + f"Available KV cache memory: {kv / (1 << 30):.2f} GiB", flush=True)
cache = torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(1)   # a token KV cache
time.sleep(2.5)                                          # serving: the mappings are read meanwhile
