"""Engine models: from memprobe's counters, what an inference engine will compute on this
host: the free memory it reads, its start-up check and its KV-cache budget. One module per
engine, each citing the engine source it follows (docs/engines.md):

  vllm.py     gpu_memory_utilization, kv_cache_memory_bytes, the profiling arithmetic
  sglang.py   mem_fraction_static
  trtllm.py   kv_cache_free_gpu_memory_fraction
  llamacpp.py explicit context, GGML_CUDA_ENABLE_UNIFIED_MEMORY
  ollama.py   layers on an integrated GPU
  blockers.py what stands between this host and the request, ranked, and the remedies

Each has predict(state: EngineState, settings: dict) -> Prediction; settings use the engine's
own flag names (plus weights_bytes, activation_peak_bytes when known).
"""
from . import llamacpp, ollama, sglang, trtllm, vllm
from .model import EngineState, Prediction

MODELS = {"vllm": vllm, "sglang": sglang, "trtllm": trtllm, "llamacpp": llamacpp, "ollama": ollama}


def predict(engine: str, state: EngineState, settings: dict) -> Prediction:
    return MODELS[engine].predict(state, settings)


__all__ = ["MODELS", "EngineState", "Prediction", "predict"]
