"""Inference engines' start-up lines: what vLLM, SGLang, TensorRT-LLM, llama.cpp and Ollama say
about their memory, as engine_facts.EngineFact (docs/engine-log.md).

Each pattern below follows the engine's own format string (file and version cited beside it)
and real public log excerpts. Unknown lines are ignored; a line is looked at only when it holds
one of KEYWORDS. Logs are streamed: at most MAX_LINES lines, MAX_FACTS facts and MAX_LINE_BYTES
per line (a longer line is cut there), so a huge or binary file costs bounded memory and time.

Units: vLLM and SGLang print "GB" for bytes / 2**30 (vLLM v0 worker/model_runner.py
`/ float(2**30)`; SGLang srt/utils.py get_available_gpu_memory `/ (1 << 30)` and
mem_cache/memory_pool.py `GB = 1024 * 1024 * 1024`), so GB is read as GiB for them. llama.cpp
prints buffer sizes / 1024 / 1024 as MiB; Ollama's format.HumanBytes2 (format/bytes.go) is binary.
"""
from __future__ import annotations

import datetime
import errno
import os
import re
import stat
import time
from typing import Callable, Iterable, Iterator, Optional

from ..engine_facts import LINE_CHARS, EngineFact, EngineLog
from .pagecache import NotRegularFile

MAX_LINES = 2_000_000
MAX_FACTS = 5_000
MAX_LINE_BYTES = 64 << 10
MAX_FILE_BYTES = 1 << 30          # a file larger than this is read from its last MAX_FILE_BYTES

_UNIT = {"b": 1, "kib": 1 << 10, "kb": 1 << 10, "mib": 1 << 20, "mb": 1 << 20,
         "gib": 1 << 30, "gb": 1 << 30, "tib": 1 << 40, "tb": 1 << 40}
_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def _bytes(num: str, unit: str) -> int:
    return int(round(float(num) * _UNIT[unit.lower()]))


def _count(s: str) -> int:
    return int(s.replace(",", ""))


# -- timestamps: each engine's logging format -----------------------------------------------
# docker/podman logs --timestamps: RFC 3339 with nanoseconds before each line
_TS_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) ")
# Ollama: Go slog text handler, time=2025-08-22T17:36:22.023-04:00
_TS_OLLAMA = re.compile(r"\btime=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")
# SGLang: "[2025-10-16 09:06:09 TP0] " (srt/utils.py configure_logger, datefmt %Y-%m-%d %H:%M:%S)
_TS_SGLANG = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[\] ]")
# TensorRT-LLM: "[01/16/2026-06:20:15] [TRT-LLM] " (tensorrt_llm/logger.py, %m/%d/%Y-%H:%M:%S)
_TS_TRTLLM = re.compile(r"^\[(\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d)\]")
# vLLM: "INFO 02-12 08:33:42 [gpu_worker.py:360] " after an optional "(EngineCore_DP0 pid=1) "
# (vllm/logger.py _FORMAT "%(levelname)s %(asctime)s ...", _DATE_FORMAT "%m-%d %H:%M:%S": no year)
_TS_VLLM = re.compile(r"^(?:\([^)]*\) )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? ")


def _rfc3339(m: re.Match) -> Optional[float]:
    try:
        tz = m.group(3)
        base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
        off = datetime.timezone.utc if tz == "Z" else datetime.timezone(
            datetime.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])) * (1 if tz[0] == "+" else -1))
        return base.replace(tzinfo=off).timestamp() + (float(m.group(2)) if m.group(2) else 0.0)
    except ValueError:
        return None


def _local(text: str, fmt: str) -> Optional[float]:
    try:
        return time.mktime(time.strptime(text, fmt))
    except (ValueError, OverflowError):
        return None


def line_time(line: str, year: int) -> tuple[Optional[float], str]:
    """(wall-clock epoch seconds of the line's own timestamp or None, the line without a
    container engine's timestamp prefix). Engine timestamps without a zone are local time;
    vLLM's have no year: `year` is used."""
    m = _TS_RFC3339.match(line)
    if m:
        return _rfc3339(m), line[m.end():]
    m = _TS_OLLAMA.search(line)
    if m:
        return _rfc3339(m), line
    m = _TS_SGLANG.match(line)
    if m:
        return _local(m.group(1), "%Y-%m-%d %H:%M:%S"), line
    m = _TS_TRTLLM.match(line)
    if m:
        return _local(m.group(1), "%m/%d/%Y-%H:%M:%S"), line
    m = _TS_VLLM.match(line)
    if m:
        return _local(f"{year}-{m.group(1)}", "%Y-%m-%d %H:%M:%S"), line
    return None, line


# -- the lines ------------------------------------------------------------------------------
Rule = tuple[str, str, "re.Pattern[str]", Callable[[re.Match], dict]]


def _r(engine: str, kind: str, pattern: str, get: Callable[[re.Match], dict]) -> Rule:
    return engine, kind, re.compile(pattern), get


RULES: list[Rule] = [
    # ---- vLLM ----
    # vllm/entrypoints/openai/api_server.py (v0.5-v0.11): logger.info("vLLM API server version %s", ...)
    _r("vllm", "version", r"vLLM API server version (\S+)", lambda m: {"text": m.group(1)}),
    # vllm/v1/engine/core.py (v0.8-v0.11) "Initializing a V1 LLM engine (v%s) with config: ...";
    # vllm/engine/llm_engine.py (v0.4-v0.7) "Initializing an LLM engine (v%s) with config: ..."
    _r("vllm", "version", r"Initializing an? (?:V1 )?LLM engine \(v([^)\s]+)\) with config",
       lambda m: {"text": m.group(1)}),
    # vllm/v1/worker/gpu_model_runner.py load_model (v0.8-v0.11) "Model loading took %.4f GiB [memory]
    # and %.6f seconds"; v0 vllm/worker/model_runner.py "Loading model weights took %.4f GB"
    _r("vllm", "weights", r"(?:Model loading|Loading model weights) took " + _NUM + r" (GiB|GB)\b",
       lambda m: {"value_bytes": _bytes(m.group(1), m.group(2))}),
    # vllm/v1/worker/gpu_worker.py determine_available_memory (v0.8-v0.11)
    # "Available KV cache memory: %.2f GiB"
    _r("vllm", "kv_cache", r"Available KV cache memory: " + _NUM + r" (GiB|GB)\b",
       lambda m: {"value_bytes": _bytes(m.group(1), m.group(2))}),
    # vllm/v1/core/kv_cache_utils.py (v0.8-v0.11) "GPU KV cache size: %s tokens" (thousands commas)
    _r("vllm", "kv_tokens", r"GPU KV cache size: ([0-9,]+) tokens", lambda m: {"count": _count(m.group(1))}),
    # v0 vllm/executor/gpu_executor.py (v0.4-v0.6) "# GPU blocks: %d, # CPU blocks: %d"
    _r("vllm", "kv_blocks", r"# (?:GPU|cuda) blocks: ([0-9]+)", lambda m: {"count": int(m.group(1))}),
    # vllm/v1/worker/gpu_model_runner.py capture_model (v0.8-v0.11)
    # "Graph capturing finished in %.0f secs, took %.2f GiB"
    _r("vllm", "cuda_graph", r"Graph capturing finished in [0-9.]+ secs?, took " + _NUM + r" (GiB|GB)\b",
       lambda m: {"value_bytes": _bytes(m.group(1), m.group(2))}),
    # vllm/entrypoints/utils.py log_non_default_args (v0.10-v0.11): "non-default args: {...}"
    _r("vllm", "utilization", r"'gpu_memory_utilization': " + _NUM,
       lambda m: {"fraction": float(m.group(1)), "text": "gpu_memory_utilization"}),
    # vllm/v1/worker/utils.py / gpu_worker.py init_device (v0.9-v0.11): "Free memory on device [cuda:0]
    # (%.2f/%.2f GiB) on startup is less than desired GPU memory utilization (%.2f, %.2f GiB)."
    # Multi-rank reports print a range "(58.33-58.44/63.98 GiB)"; the lowest free is kept.
    _r("vllm", "admission_error",
       r"Free memory on device ?(\S*) \(" + _NUM + r"(?:-[0-9.]+)?/" + _NUM + r" GiB\) on startup is less than "
       r"desired GPU memory utilization \(" + _NUM + r"(?:, " + _NUM + r" GiB)?\)",
       lambda m: {"device": m.group(1) or None, "free_bytes": _bytes(m.group(2), "GiB"),
                  "total_bytes": _bytes(m.group(3), "GiB"), "fraction": float(m.group(4)),
                  "requested_bytes": _bytes(m.group(5), "GiB") if m.group(5) else None,
                  "text": "free memory on device is less than desired GPU memory utilization"}),
    # the same check, message split in two sentences (vLLM 0.2x on DGX Spark, public excerpts)
    _r("vllm", "startup_free", r"Free memory on device ?(\S*) \(" + _NUM + r"(?:-[0-9.]+)?/" + _NUM
       + r" GiB\) on startup\.",
       lambda m: {"device": m.group(1) or None, "free_bytes": _bytes(m.group(2), "GiB"),
                  "total_bytes": _bytes(m.group(3), "GiB")}),
    _r("vllm", "utilization", r"Desired GPU memory utilization is \(" + _NUM + r", " + _NUM + r" GiB\)",
       lambda m: {"fraction": float(m.group(1)), "requested_bytes": _bytes(m.group(2), "GiB"),
                  "text": "gpu_memory_utilization"}),
    # vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory (v0.8-v0.11): "To serve at least one
    # request with the model's max seq len (%d), (%.2f GiB KV cache is needed, which is larger than
    # the available KV cache memory (%.2f GiB)."
    _r("vllm", "kv_shortfall", r"max seq len \(([0-9]+)\), \(?" + _NUM + r" GiB KV cache is needed, which is "
       r"larger than the available KV cache memory \(" + _NUM + r" GiB\)",
       lambda m: {"count": int(m.group(1)), "requested_bytes": _bytes(m.group(2), "GiB"),
                  "free_bytes": _bytes(m.group(3), "GiB")}),
    # vllm/v1/core/kv_cache_utils.py: "No available memory for the cache blocks. Try increasing ..."
    _r("vllm", "admission_error", r"No available memory for the cache blocks",
       lambda m: {"text": "no available memory for the cache blocks"}),
    # ---- SGLang ----
    # python/sglang/srt/model_executor/model_runner.py load_model (v0.4-v0.5):
    # "Load weight end. type=%s, dtype=%s, avail mem=%.2f GB, mem usage=%.2f GB."
    _r("sglang", "weights", r"Load weight end\..*?avail mem=" + _NUM + r" GB, mem usage=" + _NUM + r" GB",
       lambda m: {"value_bytes": _bytes(m.group(2), "GB"), "free_bytes": _bytes(m.group(1), "GB")}),
    # python/sglang/srt/mem_cache/memory_pool.py MHATokenToKVPool (v0.4): "KV Cache is allocated.
    # #tokens: %d, K size: %.2f GB, V size: %.2f GB"; v0.5: "... #tokens: %d, KV size: %.2f GB"
    _r("sglang", "kv_cache", r"KV Cache is allocated\. #tokens: ([0-9]+), K size: " + _NUM + r" GB, V size: "
       + _NUM + r" GB",
       lambda m: {"count": int(m.group(1)),
                  "value_bytes": _bytes(m.group(2), "GB") + _bytes(m.group(3), "GB")}),
    _r("sglang", "kv_cache", r"KV Cache is allocated\. #tokens: ([0-9]+), KV size: " + _NUM + r" GB",
       lambda m: {"count": int(m.group(1)), "value_bytes": _bytes(m.group(2), "GB")}),
    # model_runner.py init_device_graphs (v0.4-v0.5): "Capture cuda graph end. Time elapsed: %.2f s.
    # mem usage=%.2f GB. avail mem=%.2f GB."
    _r("sglang", "cuda_graph", r"Capture cuda graph end\..*?mem usage=" + _NUM + r" GB\. avail mem=" + _NUM + " GB",
       lambda m: {"value_bytes": _bytes(m.group(1), "GB"), "free_bytes": _bytes(m.group(2), "GB")}),
    # launch_server logs "server_args=ServerArgs(..., mem_fraction_static=0.88, ...)"
    _r("sglang", "utilization", r"\bmem_fraction_static=" + _NUM,
       lambda m: {"fraction": float(m.group(1)), "text": "mem_fraction_static"}),
    # model_runner.py profile_max_num_token: "Not enough memory. Please try to increase --mem-fraction-static."
    _r("sglang", "admission_error", r"Not enough memory\. Please try to increase --mem-fraction-static",
       lambda m: {"text": "not enough memory for the KV cache at this mem_fraction_static"}),
    # ---- TensorRT-LLM ----
    # tensorrt_llm/__init__.py (v0.x-v1.x): print(f"[TensorRT-LLM] TensorRT-LLM version: {__version__}")
    _r("trtllm", "version", r"TensorRT-LLM version: (\S+)", lambda m: {"text": m.group(1)}),
    # tensorrt_llm/_torch/pyexecutor/_util.py (v0.19-v1.1): "Memory used after loading model weights
    # (inside torch) in memory usage profiling: %.2f GiB"
    _r("trtllm", "weights", r"Memory used after loading model weights \(inside torch\) in memory usage "
       r"profiling: " + _NUM + r" GiB", lambda m: {"value_bytes": _bytes(m.group(1), "GiB")}),
    # _util.py cal_max_tokens (v0.19-v1.1): "Peak memory during memory usage profiling (torch + non-torch):
    # %.2f GiB, available KV cache memory when calculating max tokens: %.2f GiB[, fraction is set %s,
    # kv size is %d. device total memory %.2f GiB, ...]"
    _r("trtllm", "kv_cache", r"Peak memory during memory usage profiling \(torch \+ non-torch\): " + _NUM
       + r" GiB, available KV cache memory when calculating max tokens: " + _NUM + r" GiB"
       r"(?:, fraction is set " + _NUM + r")?(?:.*?device total memory " + _NUM + r" GiB)?",
       lambda m: {"value_bytes": _bytes(m.group(2), "GiB"), "fraction": float(m.group(3)) if m.group(3) else None,
                  "total_bytes": _bytes(m.group(4), "GiB") if m.group(4) else None}),
    _r("trtllm", "profile_peak", r"Peak memory during memory usage profiling \(torch \+ non-torch\): " + _NUM + " GiB",
       lambda m: {"value_bytes": _bytes(m.group(1), "GiB")}),
    _r("trtllm", "utilization", r"fraction is set " + _NUM,
       lambda m: {"fraction": float(m.group(1)), "text": "free_gpu_memory_fraction"}),
    # cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp (v0.x-v1.x): "[MemUsageChange] Allocated %.2f GiB
    # for max tokens in paged KV cache (%d)."; the PyTorch flow: "Allocated %.2f GiB for max tokens (%d)"
    _r("trtllm", "kv_cache", r"\[MemUsageChange\] Allocated " + _NUM + r" GiB for max tokens(?: in paged KV "
       r"cache)? \(([0-9]+)\)", lambda m: {"value_bytes": _bytes(m.group(1), "GiB"), "count": int(m.group(2))}),
    # kvCacheManager.cpp: "Number of blocks in KV cache primary pool: %d"
    _r("trtllm", "kv_blocks", r"Number of blocks in KV cache primary pool: ([0-9]+)",
       lambda m: {"count": int(m.group(1))}),
    # ---- llama.cpp ----
    # common/common.cpp (b3000-b6000): LOG_INF("build: %d (%s) with %s for %s")
    _r("llamacpp", "version", r"^build: ([0-9]+) \(([0-9a-f]+)\) with ",
       lambda m: {"text": f"b{m.group(1)} ({m.group(2)})"}),
    # src/llama-model.cpp load_tensors (b4500-b6000) "%s: %12s model buffer size = %8.2f MiB";
    # older src/llama.cpp llm_load_tensors "%s: %10s buffer size = %8.2f MiB"
    _r("llamacpp", "weights", r"(?:load_tensors|llm_load_tensors): +(\S+) (?:model )?buffer size = +" + _NUM
       + r" MiB", lambda m: {"device": m.group(1), "value_bytes": _bytes(m.group(2), "MiB")}),
    # src/llama-kv-cache.cpp (b4500-b6000) "%s: %10s KV buffer size = %8.2f MiB" (function names
    # llama_kv_cache_init, llama_kv_cache_unified, llama_kv_cache over the versions)
    _r("llamacpp", "kv_cache", r"llama_kv_cache\w*: +(\S+) KV buffer size = +" + _NUM + r" MiB",
       lambda m: {"device": m.group(1), "value_bytes": _bytes(m.group(2), "MiB")}),
    # src/llama-context.cpp / llama.cpp: "%s: n_ctx = %u" (llama_context, llama_new_context_with_model)
    _r("llamacpp", "kv_tokens", r"(?:llama_context|llama_new_context_with_model): +n_ctx += ([0-9]+)",
       lambda m: {"count": int(m.group(1))}),
    # ggml/src/ggml-cuda/ggml-cuda.cu ggml_backend_cuda_buffer_type_alloc_buffer: "allocating %.2f MiB
    # on device %d: cudaMalloc failed: %s"
    _r("llamacpp", "admission_error", r"allocating " + _NUM + r" MiB on device ([0-9]+): cudaMalloc failed: (.*)",
       lambda m: {"requested_bytes": _bytes(m.group(1), "MiB"), "device": f"CUDA{m.group(2)}",
                  "text": m.group(3).strip()[:120]}),
    # ---- Ollama ----
    # server/routes.go Serve (v0.1-v0.12): "Listening on %s (version %s)"
    _r("ollama", "version", r"Listening on \S+ \(version ([^)\s]+)\)", lambda m: {"text": m.group(1)}),
    # ml/device.go BackendMemory.Log (v0.12): "model weights" device=CUDA0 size="4.1 GiB";
    # ml/backend/ggml/ggml.go (v0.9-v0.11): msg="model weights" buffer=CUDA0 size="11.5 GiB"
    _r("ollama", "weights", r'msg="model weights" (?:device|buffer)=(\S+) size="' + _NUM + r' (B|KiB|MiB|GiB)"',
       lambda m: {"device": m.group(1), "value_bytes": _bytes(m.group(2), m.group(3))}),
    _r("ollama", "kv_cache", r'msg="kv cache" (?:device|buffer)=(\S+) size="' + _NUM + r' (B|KiB|MiB|GiB)"',
       lambda m: {"device": m.group(1), "value_bytes": _bytes(m.group(2), m.group(3))}),
    # llm/memory.go (v0.3-v0.11): msg="offload to cuda" / msg=offload ... memory.required.kv="992.0 MiB"
    _r("ollama", "kv_cache", r'memory\.required\.kv="' + _NUM + r' (B|KiB|MiB|GiB)"',
       lambda m: {"value_bytes": _bytes(m.group(1), m.group(2))}),
    _r("ollama", "weights", r'memory\.weights\.total="' + _NUM + r' (B|KiB|MiB|GiB)"',
       lambda m: {"value_bytes": _bytes(m.group(1), m.group(2))}),
    # llm/server.go (v0.1-v0.11): "model requires more system memory (%s) than is available (%s)"
    _r("ollama", "admission_error", r"model requires more system memory \(" + _NUM + r" (B|KiB|MiB|GiB)\) than is "
       r"available \(" + _NUM + r" (B|KiB|MiB|GiB)\)",
       lambda m: {"requested_bytes": _bytes(m.group(1), m.group(2)), "free_bytes": _bytes(m.group(3), m.group(4)),
                  "text": "model requires more system memory than is available"}),
]

# a line is matched against RULES only when it holds one of these (most lines hold none)
KEYWORDS = ("version", "build:", "took", "KV", "kv", "blocks", "Graph", "graph", "gpu_memory_utilization", "Free memory",
            "Desired", "cache blocks", "Load weight", "mem_fraction_static", "Not enough memory",
            "Memory used", "fraction is set", "buffer size", "n_ctx", "cudaMalloc", "model weights",
            "memory.", "system memory")


def parse_line(line: str, line_no: int, year: int) -> list[EngineFact]:
    """Facts one log line tells (usually none)."""
    if not any(k in line for k in KEYWORDS):
        return []
    wall, body = line_time(line, year)
    body = body.rstrip("\r\n")
    out = []
    for engine, kind, pat, get in RULES:
        m = pat.search(body)
        if m:
            try:
                vals = get(m)
            except (ValueError, OverflowError):
                continue
            out.append(EngineFact(engine=engine, kind=kind, line_no=line_no, line=body[:LINE_CHARS],
                                  wall_s=wall, **vals))
    return out


def parse_lines(lines: Iterable[str], year: Optional[int] = None, start_line: int = 1) -> EngineLog:
    """Every fact the lines tell, in order. `year`: for timestamps without one (vLLM), default
    this year."""
    year = year or time.localtime().tm_year
    log = EngineLog()
    n = start_line - 1
    for n, line in enumerate(lines, start_line):
        if n - start_line >= MAX_LINES or len(log.facts) >= MAX_FACTS:
            log.capped = True
            n -= 1
            break
        log.facts.extend(parse_line(line[:MAX_LINE_BYTES], n, year))
    log.lines = n - start_line + 1
    return log


def _text_lines(f, limit: int) -> Iterator[str]:
    """Lines of a binary file object, each cut at MAX_LINE_BYTES, decoded with replacement,
    at most `limit` bytes read."""
    left = limit
    while left > 0:
        raw = f.readline(min(MAX_LINE_BYTES, left))
        if not raw:
            return
        left -= len(raw)
        if not raw.endswith(b"\n") and len(raw) == MAX_LINE_BYTES:
            while left > 0:                 # skip the rest of an overlong line
                more = f.readline(min(MAX_LINE_BYTES, left))
                left -= len(more)
                if not more or more.endswith(b"\n"):
                    break
        yield raw.decode("utf-8", "replace")


def _open_regular_log(path: str):
    """The file at path opened for binary reading, if it is a regular file: opened O_NOFOLLOW |
    O_NONBLOCK (a FIFO does not block, a planted last-component link is refused), then fstat
    must show S_ISREG. NotRegularFile or OSError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        if e.errno == errno.ELOOP:          # O_NOFOLLOW: the last component is a symlink
            raise NotRegularFile(f"{path}: is a symbolic link (not followed)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def read_engine_log(path: str, year: Optional[int] = None) -> EngineLog:
    """Facts from a log file (a regular file only, _open_regular_log). A file over MAX_FILE_BYTES
    is read from its last MAX_FILE_BYTES. `year` for vLLM's year-less timestamps defaults to the
    year of the file's last change."""
    with _open_regular_log(path) as f:
        st = os.fstat(f.fileno())
        skipped_lines = 0
        if st.st_size > MAX_FILE_BYTES:
            f.seek(st.st_size - MAX_FILE_BYTES)
            f.readline()                    # from the next whole line
            skipped_lines = None
        year = year or time.localtime(st.st_mtime).tm_year
        log = parse_lines(_text_lines(f, MAX_FILE_BYTES), year)
        if skipped_lines is None:
            log.capped = True
        log.source = path
        return log


def find_container(resolver, ref: str):
    """(engine, ContainerInfo) of the container named `ref` (a name, an ID or an ID prefix of at
    least 4 characters) among every engine the resolver reaches. LookupError(message, "not_found"
    or "ambiguous") otherwise."""
    ref = ref.split(":", 1)[1] if ref.split(":", 1)[0] in ("docker", "podman") else ref
    found = [c for c in resolver.containers() if c.name == ref or c.id == ref]
    if not found and len(ref) >= 4:
        found = [c for c in resolver.containers() if c.id.startswith(ref)]
    if not found:
        raise LookupError(f"no container {ref!r} (asked: {'; '.join(resolver.tried_lines())})", "not_found")
    if len(found) > 1:
        names = ", ".join(f"{c.engine}:{c.name or c.short_id}" for c in found)
        raise LookupError(f"{ref!r} names several containers: {names}", "ambiguous")
    engine = resolver.engine_for(found[0])
    if engine is None:
        raise LookupError(f"{ref!r}: its engine no longer answers", "not_found")
    return engine, found[0]


def container_log(engine, container, year: Optional[int] = None, tail: int = 100_000) -> EngineLog:
    """Facts from a container's own log, through its engine (sources/engines.py Engine.logs,
    with that engine's deadline); line times come from the engine's --timestamps prefix."""
    text = engine.logs(container, tail=tail)
    log = parse_lines(text.splitlines(), year)
    log.source = f"{engine.name}:{container.name or container.short_id}"
    return log



class LogFollower:
    """Facts of an engine log as they appear, read in a background thread (nothing a log or an
    engine does stalls the caller): a file is opened at once (errors raise here), read from its
    start and then followed; a container's log is asked again every `every_s` through its engine
    (with that engine's deadline), keeping lines newer than the last timestamp seen. take()
    returns the facts found since the last call, never waiting."""

    def __init__(self, path: Optional[str] = None, engine=None, container=None, every_s: float = 1.0,
                 year: Optional[int] = None):
        import threading
        self.every_s, self.year = every_s, year or time.localtime().tm_year
        self.error: Optional[str] = None           # why following stopped, if it did
        self._facts: list[EngineFact] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = 0
        if path is not None:
            self._f = _open_regular_log(path)
            self.source = path
            target = self._follow_file
        else:
            self._f, self._engine, self._container, self._last_ts = None, engine, container, ""
            self.source = f"{engine.name}:{container.name or container.short_id}"
            target = self._follow_container
        self._thread = threading.Thread(target=self._run, args=(target,), name="memprobe-engine-log", daemon=True)
        self._thread.start()

    def _run(self, step) -> None:
        try:
            while not self._stop.is_set():
                step()
                self._stop.wait(self.every_s)
        except Exception as e:  # noqa: BLE001 - any failure ends following, said once, never raised
            self.error = f"engine log {self.source}: {e}"

    def _add(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._n += 1
            facts = parse_line(line, self._n, self.year)
            if facts:
                with self._lock:
                    if len(self._facts) < MAX_FACTS:
                        self._facts.extend(facts)

    def _follow_file(self) -> None:
        while not self._stop.is_set():
            raw = self._f.readline(MAX_LINE_BYTES)
            if not raw:
                return
            if not raw.endswith(b"\n") and len(raw) < MAX_LINE_BYTES:
                self._f.seek(-len(raw), os.SEEK_CUR)     # a line still being written: read it whole later
                return
            self._add([raw.decode("utf-8", "replace")])

    def _follow_container(self) -> None:
        text = self._engine.logs(self._container, tail=10_000)
        new = [ln for ln in text.splitlines() if ln[:35] > self._last_ts]
        if new:
            self._last_ts = max(ln[:35] for ln in new)
        self._add(new)

    def take(self) -> list[EngineFact]:
        with self._lock:
            out, self._facts = self._facts, []
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._f is not None:
            self._f.close()
