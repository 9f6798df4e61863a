#!/usr/bin/env python3
"""An LLM-style inference engine for the end-to-end scenario (issue 11): random weights, no
downloads. It joins the cgroup given on the command line first, then:

  1. loads the safetensors weights (mmap: their pages go through the page cache)
  2. builds the Llama model on the GPU (bf16) and copies the weights in
  3. profiles one forward pass, empties the cache, and sizes a KV cache the way TensorRT-LLM
     does: fraction x torch.cuda.mem_get_info() free, capped, rounded down to 2 MiB (so the
     caching allocator asks the driver for exactly that many bytes)
  4. allocates the KV cache and pinned host I/O buffers
  5. generates tokens for a small batch
  6. frees everything and exits

Each step prints one JSON line on stdout with CLOCK_MONOTONIC nanoseconds (the clock the
recordings use), so the report can be checked against what the engine itself saw.

    engine.py CGROUP_DIR WEIGHTS CONFIG_JSON [--fraction 0.9] [--kv-cap-gib 8] [--tokens 256]
"""
import argparse
import json
import os
import sys
import time


HOLD_S = 2.0     # after each step: a steady state the recorder (100 ms, eBPF reports 1/s) can see


def log(step, hold=True, **kw):
    print(json.dumps({"step": step, "mono_ns": time.monotonic_ns(), **kw}), flush=True)
    if hold:
        time.sleep(HOLD_S)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cgroup_dir")
    ap.add_argument("weights")
    ap.add_argument("config")
    ap.add_argument("--fraction", type=float, default=0.9)
    ap.add_argument("--kv-cap-gib", type=float, default=8.0)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pinned-mib", type=int, default=256)
    a = ap.parse_args()

    with open(os.path.join(a.cgroup_dir, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    log("joined", hold=False, pid=os.getpid(), cgroup_dir=a.cgroup_dir)

    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
    log("imported", hold=False, torch=torch.__version__)

    state = load_file(a.weights, device="cpu")
    log("weights_loaded_cpu", tensors=len(state), bytes=sum(t.numel() * t.element_size() for t in state.values()),
        file_bytes=os.path.getsize(a.weights), path=os.path.realpath(a.weights))

    cfg = LlamaConfig(**json.load(open(a.config)))
    torch.set_default_dtype(torch.bfloat16)     # build the model on the GPU directly in bf16
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.load_state_dict(state, strict=True)   # copies the mmap'd weights into the GPU tensors
    model.eval()
    del state
    torch.cuda.synchronize()
    log("weights_on_gpu", torch_allocated=torch.cuda.memory_allocated())

    with torch.no_grad():
        ids = torch.randint(0, cfg.vocab_size, (8, 512), device="cuda")
        model(ids)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    budget = int(a.fraction * free)
    cap = int(a.kv_cap_gib * (1 << 30))
    kv_bytes = min(budget, cap) // (2 << 20) * (2 << 20)
    log("profiled", cuda_free=free, cuda_total=total, fraction=a.fraction, kv_budget=budget,
        kv_bytes=kv_bytes, capped=budget > cap, profile_peak=peak)

    kv = torch.empty(kv_bytes, dtype=torch.uint8, device="cuda")
    kv.zero_()
    pinned = [torch.empty(a.pinned_mib << 20, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    for p in pinned:
        p.fill_(1)
    torch.cuda.synchronize()
    log("kv_and_pinned", kv_bytes=kv_bytes, pinned_bytes=sum(p.numel() for p in pinned),
        torch_allocated=torch.cuda.memory_allocated())

    t0 = time.monotonic()
    with torch.no_grad():
        prompt = torch.randint(0, cfg.vocab_size, (a.batch, 32), device="cuda")
        out = model.generate(prompt, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False,
                             pad_token_id=0)
        pinned[0][: out.numel() * 8].view(torch.int64)[: out.numel()].copy_(out.flatten().cpu())
    torch.cuda.synchronize()
    log("generated", new_tokens=int(out.shape[1] - prompt.shape[1]), batch=a.batch,
        seconds=round(time.monotonic() - t0, 3), torch_allocated=torch.cuda.memory_allocated())

    del model, kv, pinned, out, prompt, ids
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    log("freed", torch_allocated=torch.cuda.memory_allocated())
    log("exit", hold=False)


if __name__ == "__main__":
    sys.exit(main())
