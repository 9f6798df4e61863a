"""llama.cpp (llama-server): an explicit context, no fraction.

Follows ggml-org/llama.cpp ggml/src/ggml-cuda/ggml-cuda.cu (PR #17368, "DGX Spark: UMA support",
Nov 2025, and later): a device's free memory is cudaMemGetInfo free, except on Linux when the
GPU is integrated or GGML_CUDA_ENABLE_UNIFIED_MEMORY is set, where it is MemAvailable from
/proc/meminfo (ggml_backend_cuda_get_available_uma_memory; builds before it reported MemFree).
With GGML_CUDA_ENABLE_UNIFIED_MEMORY set buffers come from cudaMallocManaged: on a discrete
GPU they may exceed device memory and page to the host (PR #8035).

  KV bytes        ctx_size x kv_bytes_per_token (n_layer x (n_embd_k_gqa + n_embd_v_gqa) x
                  type size; the server prints it as "KV self size")
  needs           weights offloaded + KV + compute buffer; start-up fails (or --fit shrinks
                  the offload) when that exceeds the free memory it reads
"""
from __future__ import annotations

from .model import BASIS_AVAILABLE, EngineState, Prediction, opt

SOURCE = "ggml-org/llama.cpp: ggml/src/ggml-cuda/ggml-cuda.cu (PR #17368 UMA memory, PR #8035 unified memory)"
ENV = "GGML_CUDA_ENABLE_UNIFIED_MEMORY"


def predict(state: EngineState, settings: dict) -> Prediction:
    unified = bool(settings.get(ENV))
    if state.integrated or unified:
        free, seen = state.mem_available_bytes, BASIS_AVAILABLE
    else:
        free, seen = state.free(BASIS_AVAILABLE)
    p = Prediction("llamacpp", SOURCE, dict(settings), free, seen, state.cuda_total_bytes, None, None)
    ctx, per_token = opt(settings, "ctx_size"), opt(settings, "kv_bytes_per_token")
    if ctx is not None and per_token is not None:
        p.kv_bytes, p.approx_bytes = ctx * per_token, 0
    weights, compute = opt(settings, "weights_bytes"), opt(settings, "compute_buffer_bytes")
    if weights is None or p.kv_bytes is None:
        p.notes.append("the start-up need is weights_bytes + ctx_size x kv_bytes_per_token (+ compute buffer): "
                       "give all three to check it")
        return p
    p.requested_bytes = weights + p.kv_bytes + (compute or 0)
    if compute is None:
        p.notes.append("compute buffer not given (the server prints it as 'compute buffer size'): the need is a "
                       "lower bound")
    if unified and not state.integrated:
        p.admission_ok = True
        p.notes.append(f"{ENV} set: managed memory may exceed the device and page to the host (slower, not refused)")
    elif free is not None:
        p.admission_ok = free >= p.requested_bytes
        if per_token and free > weights + (compute or 0):
            p.passing["ctx_size"] = (free - weights - (compute or 0)) // per_token
    if state.integrated and not unified:
        p.notes.append(f"integrated GPU: cudaMalloc takes system RAM; {ENV}=1 makes no difference to the free "
                       "figure since PR #17368")
    if state.swap_free_bytes and seen == BASIS_AVAILABLE:
        p.notes.append("llama.cpp also reads SwapFree there; whether a build adds it to free differs: up to "
                       f"{state.swap_free_bytes} B not modelled")
        p.approx_bytes = state.swap_free_bytes
    return p
