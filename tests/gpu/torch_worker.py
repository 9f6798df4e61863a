"""A PyTorch process that joins a cgroup and allocates GPU and host memory the way inference
engines do, on command (tests/gpu/test_alloc_kinds.py).

The allocator backend comes from PYTORCH_CUDA_ALLOC_CONF in the environment (the default
caching allocator on cudaMalloc, `expandable_segments:True` on the VMM API, or
`backend:cudaMallocAsync` on stream-ordered pools). Commands on stdin, one JSON line on stdout
after each with what torch itself says it holds: init, alloc N, free_all, empty_cache,
register N, unregister, matmul, nccl, exit."""
import json
import os
import sys

with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write("0")                          # cgroup v2: "0" moves the writing process
import torch                              # noqa: E402 (imported after joining the cgroup)

held = []
registered = None
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    out = {}
    if cmd == "init":
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    elif cmd == "alloc":
        held.append(torch.empty(int(a[0]), dtype=torch.uint8, device="cuda").fill_(1))   # no other reference
        torch.cuda.synchronize()
    elif cmd == "free_all":
        held.clear()
        torch.cuda.synchronize()
    elif cmd == "empty_cache":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
    elif cmd == "register":
        # memory the process already owns, pinned in place (cudaHostRegister -> cuMemHostRegister_v2)
        buf = torch.ones(int(a[0]), dtype=torch.uint8)
        rc = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.numel(), 0)
        registered = buf
        out["rc"] = int(rc)
    elif cmd == "unregister":
        out["rc"] = int(torch.cuda.cudart().cudaHostUnregister(registered.data_ptr()))
        registered = None
    elif cmd == "matmul":
        x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        held += [x, x @ x]                # cuBLAS: handle and workspace through the allocator
        del x
        torch.cuda.synchronize()
    elif cmd == "nccl":
        import torch.distributed as dist
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{a[0]}", rank=0, world_size=1)
        held.append(torch.ones(1 << 20, device="cuda"))
        dist.all_reduce(held[-1])         # NCCL buffers are made on the first collective
        torch.cuda.synchronize()
    elif cmd == "exit":
        break
    out["reserved"] = torch.cuda.memory_reserved()
    out["allocated"] = torch.cuda.memory_allocated()
    print(json.dumps(out), flush=True)
