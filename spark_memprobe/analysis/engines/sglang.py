"""SGLang: the static memory pool (weights + KV) from mem_fraction_static.

Follows sgl-project/sglang v0.5.8 (python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py
profile_max_num_token, init_memory_pool; python/sglang/srt/utils.py get_available_gpu_memory):

  before loading  pre = get_available_gpu_memory()   (min over ranks; "total_gpu_memory")
  after loading   post = get_available_gpu_memory()
  KV bytes        rest = post - pre x (1 - mem_fraction_static); tokens = rest // cell_size
  refusal         tokens <= 0 -> RuntimeError "Not enough memory. Please try to increase
                  --mem-fraction-static."

get_available_gpu_memory is torch.cuda.mem_get_info free on a discrete GPU and
psutil.virtual_memory().available (MemAvailable) on an integrated one (props.is_integrated;
earlier an SM list 87/110/121, PR #10075; before that MemFree as well).
post = pre - weights is the model's assumption: whatever else the process allocates while
loading (and, on a MemFree basis, page cache that loading adds) lowers post too.
"""
from __future__ import annotations

from .model import BASIS_AVAILABLE, BASIS_MEMFREE, EngineState, Prediction, opt

SOURCE = ("sgl-project/sglang v0.5.8: python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py "
          "profile_max_num_token; python/sglang/srt/utils.py get_available_gpu_memory")
DEFAULT_FRACTION = 0.88          # server_args.py picks by GPU memory; 0.88 when it cannot tell
REFUSAL = "Not enough memory. Please try to increase --mem-fraction-static."


def predict(state: EngineState, settings: dict) -> Prediction:
    frac = float(settings.get("mem_fraction_static") or DEFAULT_FRACTION)
    basis = settings.get("uma_free") or BASIS_AVAILABLE
    pre, seen = state.free(basis)
    p = Prediction("sglang", SOURCE, dict(settings, mem_fraction_static=frac, uma_free=basis), pre, seen,
                   state.cuda_total_bytes, None if pre is None else int(pre * frac), None)
    weights = opt(settings, "weights_bytes")
    if pre is None or weights is None:
        p.notes.append("KV budget needs weights_bytes (give --model or --weights-bytes)")
        return p
    post = pre - weights
    growth = opt(settings, "page_cache_growth_bytes")
    if seen == BASIS_MEMFREE and growth:
        post -= growth
        p.notes.append(f"free follows MemFree: {growth} B of model files read while loading lower it too")
    p.kv_bytes = int(post - pre * (1 - frac))
    p.notes.append("exact if weights_bytes is all that loading allocates: anything else the process allocates "
                   "between the two measurements comes off the KV pool as well")
    p.admission_ok = p.kv_bytes > 0
    if not p.admission_ok:
        p.message = REFUSAL
    if pre > 0:
        # the smallest fraction (0.01 steps) that leaves a KV pool above 0
        need = 1 - (post / pre)
        p.passing["mem_fraction_static"] = min(1.0, round(int(need * 100 + 1) / 100, 2))
    return p
