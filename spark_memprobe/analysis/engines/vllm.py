"""vLLM (v1 engine): the start-up check and the KV-cache budget.

Follows vllm-project/vllm at commit a6d5c39 (vllm/utils/mem_utils.py) and the v1 worker of the
same era (vllm/v1/worker/gpu_worker.py init_device / determine_available_memory,
vllm/v1/worker/utils.py request_memory):

  init_device     snapshot = MemorySnapshot(): free, total = torch.cuda.mem_get_info(); on an
                  integrated GPU free is replaced by psutil.virtual_memory().available
                  (MemAvailable; capability list (8,7) (11,0) (12,1), later is_integrated, PR
                  #35356; older releases kept cudaMemGetInfo free, i.e. MemFree: issue #35313)
                  requested = ceil(total x gpu_memory_utilization)
                  free < requested -> ValueError "Free memory on device ... on startup is less
                  than desired GPU memory utilization (u, Z GiB)"
  KV budget       kv_cache_memory_bytes when given (profiling still runs, its result unused);
                  else requested - (weights + torch peak increase during the profile run +
                  non-torch increase since the snapshot) - CUDA-graph estimate (when
                  VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS)

The non-torch increase is total - free - torch reserved, measured from the start-up snapshot
to after profiling: on a MemFree-based version, page cache that loading the weights adds
lowers free and is charged to it for good (DGX Spark reports: 9.5 GiB of KV instead of 40+).
"""
from __future__ import annotations

import math

from .model import BASIS_AVAILABLE, BASIS_MEMFREE, EngineState, Prediction, gib, largest_fraction, opt

SOURCE = ("vllm-project/vllm a6d5c39: vllm/utils/mem_utils.py MemorySnapshot.measure, memory_profiling; "
          "vllm/v1/worker/utils.py request_memory; vllm/v1/worker/gpu_worker.py determine_available_memory")
DEFAULT_UTILIZATION = 0.9        # vllm/config/cache.py CacheConfig.gpu_memory_utilization (0.92 in some later releases)


def error_text(device: str, free: int, total: int, util: float, requested: int) -> str:
    """vLLM's ValueError, as request_memory formats it (format_gib rounds to 2 decimals)."""
    return (f"Free memory on device {device} ({gib(free)}/{gib(total)} GiB) on startup is less than desired "
            f"GPU memory utilization ({util}, {gib(requested)} GiB). Decrease GPU memory utilization or "
            "reduce GPU memory used by other processes.")


def predict(state: EngineState, settings: dict) -> Prediction:
    util = float(settings.get("gpu_memory_utilization") or DEFAULT_UTILIZATION)
    basis = settings.get("uma_free") or BASIS_AVAILABLE
    free, seen = state.free(basis)
    total = state.cuda_total_bytes
    requested = None if total is None else math.ceil(total * util)
    ok = None if free is None or requested is None else free >= requested
    p = Prediction("vllm", SOURCE, dict(settings, gpu_memory_utilization=util, uma_free=basis), free, seen,
                   total, requested, ok)
    if ok is False:
        dev = f"cuda:{state.gpu_index}" if state.gpu_index is not None else "cuda:0"
        p.message = error_text(dev, free, total, util, requested)
    u = largest_fraction(free, total)
    if u is not None:
        p.passing["gpu_memory_utilization"] = u
    _kv(state, p, settings, requested, seen)
    return p


def _kv(state: EngineState, p: Prediction, settings: dict, requested, seen: str) -> None:
    explicit = opt(settings, "kv_cache_memory_bytes")
    if explicit is not None:
        p.kv_bytes, p.approx_bytes = explicit, 0
        p.notes.append("kv_cache_memory_bytes given: the KV cache is that size whatever profiling measures")
        return
    weights = opt(settings, "weights_bytes")
    if weights is None or requested is None:
        p.notes.append("KV budget needs weights_bytes (give --model or --weights-bytes)")
        return
    act, non_torch = opt(settings, "activation_peak_bytes"), opt(settings, "non_torch_bytes")
    graphs = opt(settings, "cudagraph_bytes") or 0
    load_cache = opt(settings, "page_cache_growth_bytes")
    if seen == BASIS_MEMFREE and load_cache:
        # free follows MemFree: page cache that loading adds counts as non-torch memory
        non_torch = (non_torch or 0) + load_cache
        p.notes.append(f"free follows MemFree: the {load_cache} B of model files not yet in the page cache will "
                       "be read during loading and counted as non-torch memory, taken from the KV budget")
    p.kv_bytes = requested - weights - (act or 0) - (non_torch or 0) - graphs
    missing = [n for n, v in (("activation_peak_bytes", act), ("non_torch_bytes", non_torch)) if v is None]
    if missing:
        p.kv_upper_bound = True
        p.notes.append("KV budget is an upper bound: " + " and ".join(missing) + " not given (the profile run "
                       "measures them; vLLM logs both as 'torch peak memory increase' and 'non-torch forward "
                       "increase memory')")
    else:
        p.approx_bytes = 0
