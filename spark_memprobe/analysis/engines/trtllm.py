"""TensorRT-LLM: the KV cache as a fraction of free memory after the model is loaded.

Follows NVIDIA/TensorRT-LLM docs/source/reference/memory.md ("kv_cache_free_gpu_memory_fraction:
the fraction of free GPU memory after loading the model", default 0.9) and the PyTorch
backend's KV sizing (tensorrt_llm/_torch/pyexecutor/_util.py KvCacheCreator, commit d8ae02c),
which reads torch.cuda.mem_get_info, i.e. cudaMemGetInfo: MemFree on an integrated GPU.
Checked against the 63 published DGX Spark runs (github.com/brandonrc/benchmark-spark; copy in
tests/fixtures/gb10-synthetic/reference/): every run has kv_cache = 0.9 x (119.64 GiB - peak +
~0.07 GiB), 0.9 x CUDA free at sizing time (tests/test_engine_models.py).

  free at sizing  cudaMemGetInfo free now - weights - activation peak (what the engine will
                  hold when it sizes the cache; 0 when it is already loaded)
  KV bytes        int(fraction x free at sizing); max_tokens caps it (not modelled)
There is no start-up check: a KV budget of 0 or less fails at allocation.
"""
from __future__ import annotations

from .model import BASIS_MEMFREE, EngineState, Prediction, opt

SOURCE = ("NVIDIA/TensorRT-LLM d8ae02c: docs/source/reference/memory.md; tensorrt_llm/_torch/pyexecutor/_util.py "
          "KvCacheCreator")
DEFAULT_FRACTION = 0.9


def predict(state: EngineState, settings: dict) -> Prediction:
    frac = float(settings.get("kv_cache_free_gpu_memory_fraction") or DEFAULT_FRACTION)
    free, seen = state.free(BASIS_MEMFREE)
    p = Prediction("trtllm", SOURCE, dict(settings, kv_cache_free_gpu_memory_fraction=frac), free, seen,
                   state.cuda_total_bytes, None, None)
    weights = opt(settings, "weights_bytes")
    if free is None or weights is None:
        p.notes.append("KV budget needs weights_bytes (0 when the engine already holds its weights)")
        return p
    act = opt(settings, "activation_peak_bytes")
    growth = opt(settings, "page_cache_growth_bytes") if seen == BASIS_MEMFREE else None
    at_sizing = free - weights - (act or 0) - (growth or 0)
    if growth:
        p.notes.append(f"free follows MemFree: {growth} B of model files read while loading lower it")
    p.requested_bytes = weights + (act or 0)
    p.kv_bytes = int(frac * at_sizing)
    p.admission_ok = p.kv_bytes > 0
    if act is None and weights:
        p.kv_upper_bound = True
        p.notes.append("KV budget is an upper bound: activation_peak_bytes not given")
    else:
        # the published runs sit 0.06-0.07 GiB above 0.9 x (total - peak): the engine's own peak accounting
        p.approx_bytes = int(frac * 0.07 * (1 << 30))
    return p
