"""Ollama: how many layers go to the GPU, decided from free memory.

Follows ollama/ollama v0.33.0-rc2 (commit fb30760):
  discover/cpu_linux.go GetCPUMem    system free = MemAvailable, or memory.max - memory.current
                                     of its own cgroup when that is limited
  server/sched.go availableMemoryForGPU / availableMemoryForLoad
                                     integrated GPU: min(GPU free, system free); GPU free is the
                                     driver's figure (cuMemGetInfo: MemFree on GB10)
  server/sched.go load               available = free - OLLAMA_GPU_OVERHEAD - MinimumMemory
  ml/device.go MinimumMemory         457 MiB (CUDA), 512 MiB (Metal)
  llm/llama_server.go appendLoadModeArgs
                                     integrated CUDA/ROCm on Linux: --load-mode dio (weights are
                                     read with direct I/O, no page cache)
Layers: as many as fit in `available` at (weights + KV) / num_layers each. Ollama's own
estimate adds the graph and output layer; the error is up to one layer plus the graph size.
"""
from __future__ import annotations

from .model import BASIS_MEMFREE, EngineState, Prediction, opt

SOURCE = ("ollama/ollama v0.33.0-rc2 fb30760: server/sched.go availableMemoryForGPU, load; "
          "discover/cpu_linux.go GetCPUMem; ml/device.go MinimumMemory")
MINIMUM_BYTES = 457 << 20


def _system_free(state: EngineState):
    if state.cgroup_limit_bytes is not None and state.cgroup_current_bytes is not None:
        return state.cgroup_limit_bytes - state.cgroup_current_bytes
    return state.mem_available_bytes


def predict(state: EngineState, settings: dict) -> Prediction:
    gpu_free, seen = state.free(BASIS_MEMFREE)
    free = gpu_free
    if state.integrated:
        sys_free = _system_free(state)
        if sys_free is not None and gpu_free is not None and 0 < sys_free < gpu_free:
            free = sys_free
            seen = "memory.max - memory.current" if state.cgroup_limit_bytes is not None else "MemAvailable"
    overhead = opt(settings, "OLLAMA_GPU_OVERHEAD") or 0
    p = Prediction("ollama", SOURCE, dict(settings), free, seen, state.cuda_total_bytes, None, None)
    if free is None:
        return p
    available = max(0, free - overhead - MINIMUM_BYTES)
    p.detail["available_bytes"] = available
    weights, layers = opt(settings, "weights_bytes"), opt(settings, "num_layers")
    kv = opt(settings, "kv_bytes")
    p.kv_bytes = kv
    if weights is None or not layers:
        p.notes.append("layer decision needs weights_bytes and num_layers (and kv_bytes for the context)")
        return p
    per_layer = (weights + (kv or 0)) / layers
    on_gpu = min(layers, int(available // per_layer))
    p.requested_bytes = weights + (kv or 0)
    p.detail.update(num_layers=layers, layers_on_gpu=on_gpu, layer_bytes=int(per_layer))
    p.approx_bytes = int(per_layer)
    p.admission_ok = on_gpu == layers
    if not p.admission_ok:
        p.message = f"offloaded {on_gpu}/{layers} layers to GPU: the rest run on the CPU"
    p.notes.append("Ollama does not refuse: layers that do not fit run on the CPU (admission_ok = all layers fit)")
    return p
