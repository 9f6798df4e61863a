"""Engine models (spark_memprobe/analysis/engines) against published numbers: the 63 DGX Spark
runs of github.com/brandonrc/benchmark-spark (TensorRT-LLM, copy in
tests/fixtures/gb10-synthetic/reference/), the SYNTHETIC GB10 fixture, vLLM's own start-up
error as users posted it, and the worked example in vLLM's memory_profiling docstring
(vllm/utils/mem_utils.py, commit a6d5c39)."""
from __future__ import annotations

import csv
import json
import math
import os
import re

import pytest

from fixture_loader import FIXTURES, load_step, steps
from spark_memprobe.analysis.engines import MODELS, EngineState
from spark_memprobe.analysis.engines.model import BASIS_AVAILABLE, BASIS_DEVICE, BASIS_MEMFREE, largest_fraction
from spark_memprobe.ledger import LedgerInputs, build_ledger

GiB = 1 << 30
GB10, GB10_CG = "gb10-synthetic", "system.slice/docker-gb10synthetic.scope"


def uma(free, total, available=None, **kw) -> EngineState:
    return EngineState("integrated", 0, free, total, total, free, free if available is None else available, **kw)


def discrete(free, total, **kw) -> EngineState:
    return EngineState("discrete", 0, free, total, 2 * total, total, total, **kw)


def gb10_state(prefix: str) -> EngineState:
    st = next(s for s in steps(GB10) if os.path.basename(s).startswith(prefix))
    host, s = load_step(st, GB10_CG)
    return EngineState.from_ledger(build_ledger(host, s, LedgerInputs()), s), st


# -- TensorRT-LLM: the published runs -------------------------------------------------------------

def runs() -> list[dict]:
    with open(os.path.join(FIXTURES, GB10, "reference", "benchmark-spark_runs_flat.csv")) as fh:
        return list(csv.DictReader(fh))


def test_trtllm_reproduces_every_published_dgx_spark_run():
    """Each run: a fresh host (CUDA free = total = 119.64 GiB), the engine holding `peak` less its
    ~0.07 GiB accounting offset when it sizes the cache at the default fraction 0.9."""
    rows = runs()
    assert len(rows) == 63
    total = int(119.64 * GiB)
    for r in rows:
        held = int((float(r["peak_memory_gib"]) - 0.07) * GiB)
        p = MODELS["trtllm"].predict(uma(total, total), {"weights_bytes": held, "activation_peak_bytes": 0})
        assert p.free_basis == BASIS_MEMFREE
        assert abs(p.kv_bytes / GiB - float(r["kv_cache_gib"])) < 0.01, r["order"]
        assert p.approx_bytes <= 0.07 * GiB


def test_trtllm_on_the_gb10_fixture_sizes_what_the_engine_sized():
    state, st = gb10_state("03")
    eng = json.load(open(os.path.join(st, "engine.json")))
    assert state.platform == "integrated" and state.cuda_free_bytes == eng["cuda_free"]
    assert state.cuda_total_bytes == eng["cuda_total"]
    p = MODELS["trtllm"].predict(state, {"weights_bytes": 0, "activation_peak_bytes": 0})
    assert p.kv_bytes == int(0.9 * eng["cuda_free"])
    assert abs(p.kv_bytes - eng["kv_budget_at_0_9"]) <= 1      # engine.json rounds the product


def test_state_from_ledger_reads_the_fixture_meminfo():
    state, st = gb10_state("02")
    mi = {}
    for line in open(os.path.join(st, "proc", "meminfo")):
        k, v = line.split(":")
        mi[k] = int(v.split()[0]) * 1024
    assert (state.mem_free_bytes, state.mem_available_bytes, state.mem_total_bytes) == \
        (mi["MemFree"], mi["MemAvailable"], mi["MemTotal"])
    assert state.cgroup_path == "/" + GB10_CG and state.cgroup_limit_bytes == 64 * GiB
    assert state.target_page_cache_bytes > 30 * GiB          # hypothesis H1 of the fixture
    assert not state.modelled_uma


# -- vLLM -----------------------------------------------------------------------------------------

# vLLM's ValueError as users posted it (GiB printed with format_gib's 2 decimals)
VLLM_ERRORS = [
    "Free memory on device cuda:0 (85.92/121.69 GiB) on startup is less than desired GPU memory utilization (0.92, 111.95 GiB).",
    "Free memory on device (61.05/119.7 GiB) on startup is less than desired GPU memory utilization (0.52, 62.24 GiB)",
    "Free memory on device cuda:0 (12.18/23.56 GiB) on startup is less than desired GPU memory utilization (0.92, 21.67 GiB).",
    "Free memory on device cuda:0 (74.9/142.5 GiB) on startup is less than desired GPU memory utilization (0.9, 128.25 GiB).",
]
PATTERN = re.compile(r"\(([\d.]+)/([\d.]+) GiB\) on startup is less than desired GPU memory utilization "
                     r"\(([\d.]+), ([\d.]+) GiB\)")


@pytest.mark.parametrize("text", VLLM_ERRORS)
def test_vllm_startup_check_reproduces_published_errors(text):
    free, total, util, asked = (float(x) for x in PATTERN.search(text).groups())
    p = MODELS["vllm"].predict(discrete(int(free * GiB), int(total * GiB)), {"gpu_memory_utilization": util})
    assert p.admission_ok is False and p.free_basis == BASIS_DEVICE
    ours = [float(x) for x in PATTERN.search(p.message).groups()]
    assert ours[:3] == [free, total, util]
    assert abs(ours[3] - asked) <= 0.011              # the posted total is itself rounded to 0.01 GiB
    assert p.requested_bytes == math.ceil(int(total * GiB) * util)


def test_vllm_profiling_arithmetic_matches_its_docstring_example():
    """memory_profiling docstring: weights 2 GiB, peak activations 2 GiB, non-torch 1 GiB -> the
    non-KV memory is 5 GiB; KV = ceil(total x u) - 5 GiB."""
    total = 80 * GiB
    p = MODELS["vllm"].predict(discrete(79 * GiB, total), {"gpu_memory_utilization": 0.9, "weights_bytes": 2 * GiB,
                                                           "activation_peak_bytes": 2 * GiB, "non_torch_bytes": GiB})
    assert p.admission_ok and p.kv_bytes == math.ceil(total * 0.9) - 5 * GiB and p.approx_bytes == 0
    p = MODELS["vllm"].predict(discrete(79 * GiB, total), {"gpu_memory_utilization": 0.9, "weights_bytes": 2 * GiB})
    assert p.kv_upper_bound and p.kv_bytes == math.ceil(total * 0.9) - 2 * GiB
    p = MODELS["vllm"].predict(discrete(79 * GiB, total), {"kv_cache_memory_bytes": 7 * GiB})
    assert p.kv_bytes == 7 * GiB


def test_vllm_on_uma_reads_memavailable_unless_told_otherwise():
    state = uma(free=40 * GiB, total=120 * GiB, available=100 * GiB)
    new = MODELS["vllm"].predict(state, {"gpu_memory_utilization": 0.8})
    old = MODELS["vllm"].predict(state, {"gpu_memory_utilization": 0.8, "uma_free": BASIS_MEMFREE})
    assert (new.free_basis, new.free_bytes, new.admission_ok) == (BASIS_AVAILABLE, 100 * GiB, True)
    assert (old.free_basis, old.free_bytes, old.admission_ok) == (BASIS_MEMFREE, 40 * GiB, False)


def test_vllm_page_cache_read_while_loading_starves_a_memfree_version():
    """On a MemFree-based version the model files read during loading count as non-torch memory."""
    state = uma(free=110 * GiB, total=120 * GiB, available=115 * GiB)
    s = {"gpu_memory_utilization": 0.85, "weights_bytes": 60 * GiB, "activation_peak_bytes": 2 * GiB,
         "non_torch_bytes": 0, "page_cache_growth_bytes": 30 * GiB}
    old = MODELS["vllm"].predict(state, dict(s, uma_free=BASIS_MEMFREE))
    new = MODELS["vllm"].predict(state, s)
    assert new.kv_bytes - old.kv_bytes == 30 * GiB


def test_vllm_largest_utilisation_that_passes_on_a_spark_that_caps_near_101_gib():
    """DGX Spark reports: free caps near 101-102 GiB of 121.7 after a fresh boot, so 0.87 never passes."""
    free, total = int(101.5 * GiB), int(121.7 * GiB)
    p = MODELS["vllm"].predict(uma(free, total, available=free), {"gpu_memory_utilization": 0.87})
    assert p.admission_ok is False and p.passing["gpu_memory_utilization"] == 0.83
    assert math.ceil(total * 0.83) <= free < math.ceil(total * 0.84)
    assert largest_fraction(0, total) is None


# -- SGLang, llama.cpp, Ollama --------------------------------------------------------------------

def test_sglang_pool_is_fraction_of_free_before_loading_minus_weights():
    p = MODELS["sglang"].predict(discrete(80 * GiB, 80 * GiB), {"mem_fraction_static": 0.85, "weights_bytes": 60 * GiB})
    assert p.kv_bytes == int(20 * GiB - 80 * GiB * (1 - 0.85)) and p.admission_ok   # 8 GiB, as sglang floats it
    p = MODELS["sglang"].predict(discrete(80 * GiB, 80 * GiB), {"mem_fraction_static": 0.7, "weights_bytes": 60 * GiB})
    assert p.kv_bytes < 0 and p.admission_ok is False and "--mem-fraction-static" in p.message
    assert p.passing["mem_fraction_static"] == 0.76                   # 60/80 = 0.75 leaves 0: the next step


def test_llamacpp_free_figure_and_explicit_context():
    s = {"ctx_size": 32768, "kv_bytes_per_token": 128 * 1024, "weights_bytes": 40 * GiB, "compute_buffer_bytes": GiB}
    on_uma = MODELS["llamacpp"].predict(uma(free=10 * GiB, total=120 * GiB, available=60 * GiB), s)
    assert on_uma.free_basis == BASIS_AVAILABLE and on_uma.kv_bytes == 4 * GiB and on_uma.admission_ok
    small = MODELS["llamacpp"].predict(discrete(24 * GiB, 24 * GiB), s)
    assert small.free_basis == BASIS_DEVICE and small.admission_ok is False
    managed = MODELS["llamacpp"].predict(discrete(24 * GiB, 24 * GiB), dict(s, GGML_CUDA_ENABLE_UNIFIED_MEMORY=True))
    assert managed.admission_ok is True
    fits = MODELS["llamacpp"].predict(discrete(45 * GiB, 48 * GiB), dict(s, ctx_size=10 ** 6))
    assert fits.admission_ok is False and fits.passing["ctx_size"] == 4 * GiB // (128 * 1024)


def test_ollama_layers_on_an_integrated_gpu():
    s = {"weights_bytes": 48 * GiB, "num_layers": 48, "kv_bytes": 0}
    st = uma(free=30 * GiB, total=120 * GiB, available=90 * GiB)
    p = MODELS["ollama"].predict(st, s)
    # min(GPU free 30, system 90) - 457 MiB, at 1 GiB a layer
    assert p.free_bytes == 30 * GiB and p.detail["layers_on_gpu"] == 29 and p.admission_ok is False
    st.cgroup_limit_bytes, st.cgroup_current_bytes = 20 * GiB, 2 * GiB
    p = MODELS["ollama"].predict(st, s)
    assert p.free_bytes == 18 * GiB and p.free_basis == "memory.max - memory.current"
    assert p.detail["layers_on_gpu"] == 17


def test_every_model_takes_the_agreed_api():
    state = uma(free=50 * GiB, total=120 * GiB, available=80 * GiB)
    for name, mod in MODELS.items():
        p = mod.predict(state, {})
        assert p.engine == name and p.source and isinstance(p.notes, list) and isinstance(p.settings, dict)
        assert p.free_bytes is not None and p.total_bytes == 120 * GiB
