"""Engine start-up lines (sources/engine_log.py): each engine's own format strings, filled in as
the engine fills them (file and version cited beside each), real public excerpts, unknown and
broken input, files that are not regular, and `memprobe engine-log`."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from spark_memprobe.cli import main
from spark_memprobe.engine_facts import EngineLog
from spark_memprobe.sources import engine_log
from spark_memprobe.sources.engine_log import LogFollower, parse_lines, read_engine_log
from spark_memprobe.sources.pagecache import NotRegularFile

GiB, MiB = 1 << 30, 1 << 20


def one(lines, kind: str, year: int = 2026):
    log = parse_lines(lines if isinstance(lines, list) else [lines], year)
    got = log.of(kind)
    assert len(got) == 1, (kind, log.facts)
    return got[0]


# -- format strings, filled in as the engines do ---------------------------------------------
def test_vllm_format_strings():
    # vllm/v1/worker/gpu_worker.py determine_available_memory (v0.10.1): "Available KV cache memory: %.2f GiB",
    # logged through vllm/logger.py _FORMAT "%(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"
    f = one("INFO 09-14 10:03:05 [gpu_worker.py:298] Available KV cache memory: %.2f GiB" % 22.5, "kv_cache")
    assert f.engine == "vllm" and f.value_bytes == int(22.5 * GiB)
    assert f.wall_s == time.mktime((2026, 9, 14, 10, 3, 5, 0, 0, -1))
    # vllm/v1/core/kv_cache_utils.py (v0.10.1): "GPU KV cache size: %s tokens" with f"{num_tokens:,}"
    assert one("GPU KV cache size: %s tokens" % f"{190272:,}", "kv_tokens").count == 190272
    # vllm/v1/worker/gpu_model_runner.py load_model (v0.10.1): "Model loading took %.4f GiB and %.6f seconds"
    assert one("Model loading took %.4f GiB and %.6f seconds" % (24.1123, 24.3), "weights").value_bytes \
        == round(24.1123 * GiB)
    # gpu_model_runner.py capture_model (v0.10.1): "Graph capturing finished in %.0f secs, took %.2f GiB"
    assert one("Graph capturing finished in %.0f secs, took %.2f GiB" % (25, 0.53), "cuda_graph").value_bytes \
        == round(0.53 * GiB)
    # vllm/entrypoints/openai/api_server.py (v0.10.1): "vLLM API server version %s"
    assert one("vLLM API server version %s" % "0.10.1.1", "version").text == "0.10.1.1"
    # vllm/v1/worker/gpu_worker.py init_device (v0.10.1): ValueError(f"Free memory on device "
    # f"({free:.2f}/{total:.2f} GiB) on startup is less than desired GPU memory utilization "
    # f"({util}, {requested:.2f} GiB). Decrease ...")
    f = one("ValueError: Free memory on device (%.2f/%.2f GiB) on startup is less than desired GPU memory "
            "utilization (%s, %.2f GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
            "processes." % (101.2, 121.69, 0.87, 105.87), "admission_error")
    assert (f.free_bytes, f.total_bytes, f.fraction, f.requested_bytes) == \
        (round(101.2 * GiB), round(121.69 * GiB), 0.87, round(105.87 * GiB))
    # vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory (v0.10.1)
    f = one("ValueError: To serve at least one request with the model's max seq len (%d), (%.2f GiB KV cache is "
            "needed, which is larger than the available KV cache memory (%.2f GiB)." % (196608, 23.25, 22.5),
            "kv_shortfall")
    assert (f.count, f.requested_bytes, f.free_bytes) == (196608, round(23.25 * GiB), round(22.5 * GiB))


def test_sglang_format_strings():
    # python/sglang/srt/model_executor/model_runner.py load_model (v0.4.6): f"Load weight end. "
    # f"type={...}, dtype={...}, avail mem={...:.2f} GB, mem usage={...:.2f} GB."
    f = one("[2025-10-16 09:06:40 TP0] Load weight end. type=LlamaForCausalLM, dtype=torch.bfloat16, "
            "avail mem=%.2f GB, mem usage=%.2f GB." % (60.5, 15.02), "weights")
    assert f.engine == "sglang" and f.value_bytes == round(15.02 * GiB) and f.free_bytes == round(60.5 * GiB)
    assert f.wall_s == time.mktime((2025, 10, 16, 9, 6, 40, 0, 0, -1))
    # python/sglang/srt/mem_cache/memory_pool.py MHATokenToKVPool (v0.4.6): f"KV Cache is allocated. "
    # f"#tokens: {size}, K size: {k_size / GB:.2f} GB, V size: {v_size / GB:.2f} GB"
    f = one("KV Cache is allocated. #tokens: %d, K size: %.2f GB, V size: %.2f GB" % (367404, 8.23, 8.23), "kv_cache")
    assert f.count == 367404 and f.value_bytes == 2 * round(8.23 * GiB)
    # model_runner.py init_device_graphs (v0.4.6): f"Capture cuda graph end. Time elapsed: {...:.2f} s. "
    # f"mem usage={...:.2f} GB. avail mem={...:.2f} GB."
    assert one("Capture cuda graph end. Time elapsed: %.2f s. mem usage=%.2f GB. avail mem=%.2f GB."
               % (8.04, 0.8, 10.3), "cuda_graph").value_bytes == round(0.8 * GiB)
    assert one("server_args=ServerArgs(model_path='/m', mem_fraction_static=0.88, tp_size=1)",
               "utilization").fraction == 0.88


def test_trtllm_format_strings():
    # tensorrt_llm/_torch/pyexecutor/_util.py (v1.0): f"Peak memory during memory usage profiling (torch +
    # non-torch): {peak / GB:.2f} GiB, available KV cache memory when calculating max tokens: {...:.2f} GiB,
    # fraction is set {fraction}, kv size is {kv_size_per_token}. device total memory {total / GB:.2f} GiB, ..."
    line = ("[11/08/2025-14:23:45] [TRT-LLM] [I] Peak memory during memory usage profiling (torch + non-torch): "
            "%.2f GiB, available KV cache memory when calculating max tokens: %.2f GiB, fraction is set %s, kv size "
            "is %d. device total memory %.2f GiB, , tmp kv_mem %.2f GiB" % (91.59, 25.24, 0.9, 28672, 119.64, 0.6))
    f = one(line, "kv_cache")
    assert (f.engine, f.value_bytes, f.fraction, f.total_bytes) == \
        ("trtllm", round(25.24 * GiB), 0.9, round(119.64 * GiB))
    assert f.wall_s == time.mktime((2025, 11, 8, 14, 23, 45, 0, 0, -1))
    assert one(line, "profile_peak").value_bytes == round(91.59 * GiB)
    # cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp (v0.20): "[MemUsageChange] Allocated %.2f GiB for max
    # tokens in paged KV cache (%d)."
    f = one("[TensorRT-LLM][INFO] [MemUsageChange] Allocated %.2f GiB for max tokens in paged KV cache (%d)."
            % (25.24, 945280), "kv_cache")
    assert (f.value_bytes, f.count) == (round(25.24 * GiB), 945280)
    # tensorrt_llm/__init__.py: print(f"[TensorRT-LLM] TensorRT-LLM version: {__version__}")
    assert one("[TensorRT-LLM] TensorRT-LLM version: 1.1.0rc2", "version").text == "1.1.0rc2"


def test_llamacpp_format_strings():
    # src/llama-kv-cache.cpp (b6000): LLAMA_LOG_INFO("%s: %10s KV buffer size = %8.2f MiB\n", __func__, ...)
    kv = ["%s: %10s KV buffer size = %8.2f MiB" % ("llama_kv_cache_unified", dev, mib)
          for dev, mib in (("CUDA0", 1024.0), ("CUDA1", 512.0))]
    log = parse_lines(kv)
    assert [f.device for f in log.of("kv_cache")] == ["CUDA0", "CUDA1"]
    assert log.total_bytes("kv_cache") == 1536 * MiB and log.engine == "llamacpp"
    # src/llama-model.cpp load_tensors (b6000): "%s: %12s model buffer size = %8.2f MiB\n"
    assert one("%s: %12s model buffer size = %8.2f MiB" % ("load_tensors", "CUDA0", 4403.49), "weights").value_bytes \
        == round(4403.49 * MiB)
    # common/common.cpp (b6000): LOG_INF("build: %d (%s) with %s for %s\n", ...)
    assert one("build: %d (%s) with %s for %s" % (4202, "9f912511", "cc 13.2.0", "x86_64-linux-gnu"),
               "version").text == "b4202 (9f912511)"
    # ggml/src/ggml-cuda/ggml-cuda.cu: "%s: allocating %.2f MiB on device %d: cudaMalloc failed: %s\n"
    f = one("%s: allocating %.2f MiB on device %d: cudaMalloc failed: %s" % (
        "ggml_backend_cuda_buffer_type_alloc_buffer", 9216.0, 0, "out of memory"), "admission_error")
    assert (f.requested_bytes, f.device, f.text) == (9216 * MiB, "CUDA0", "out of memory")


def test_ollama_format_strings():
    # ml/device.go BackendMemory.Log (v0.12.0): slog "kv cache" "device" gpu.Name "size" format.HumanBytes2(sum);
    # slog's text handler writes time=... level=... source=... msg="kv cache" device=CUDA0 size="512.0 MiB"
    lines = ['time=2025-09-20T10:00:01.500+02:00 level=INFO source=device.go:252 msg="kv cache" device=CUDA0 '
             'size="512.0 MiB"',
             'time=2025-09-20T10:00:01.500+02:00 level=INFO source=device.go:241 msg="model weights" device=CUDA0 '
             'size="4.1 GiB"',
             # server/routes.go Serve (v0.12.0): slog.Info(fmt.Sprintf("Listening on %s (version %s)", ...))
             'time=2025-09-20T09:59:00.000+02:00 level=INFO source=routes.go:1475 msg="Listening on 127.0.0.1:11434 '
             '(version 0.12.0)"']
    log = parse_lines(lines)
    assert log.engine == "ollama"
    kv = log.latest("kv_cache")
    assert kv.value_bytes == 512 * MiB and kv.device == "CUDA0"
    assert kv.wall_s == 1758355201.5           # 08:00:01.5 UTC
    assert log.total_bytes("weights") == round(4.1 * GiB)
    assert log.latest("version").text == "0.12.0"


# -- real public excerpts --------------------------------------------------------------------
def test_public_excerpts():
    # github.com/vllm-project/vllm issue 13061 (v0 engine) and guqiong96/Lvllm issue 35 (v1)
    log = parse_lines([
        "(VllmWorkerProcess pid=1786) INFO 02-11 07:40:45 model_runner.py:1115] Loading model weights took "
        "13.9476 GB",
        "(EngineCore_DP0 pid=15098) INFO 02-12 08:33:42 [gpu_model_runner.py:4216] Model loading took 11.55 GiB "
        "memory and 1940.360672 seconds",
        "(EngineCore_DP0 pid=15098) INFO 02-12 08:34:25 [gpu_worker.py:360] Available KV cache memory: 12.57 GiB",
        "(EngineCore_DP0 pid=15098) INFO 02-12 08:34:25 [kv_cache_utils.py:1307] GPU KV cache size: 53,136 tokens",
        # pytorch/pytorch issue 175666: a device name and a CI timestamp before the message
        "[2026-02-24T20:21:58Z] (EngineCore_DP0 pid=6940) ValueError: Free memory on device cuda:1 (19.77/22.05 "
        "GiB) on startup is less than desired GPU memory utilization (0.9, 19.84 GiB). Decrease GPU memory "
        "utilization or reduce GPU memory used by other processes.",
    ], year=2025)
    assert [f.kind for f in log.facts] == ["weights", "weights", "kv_cache", "kv_tokens", "admission_error"]
    assert log.facts[0].value_bytes == round(13.9476 * GiB)
    assert log.latest("kv_cache").wall_s == time.mktime((2025, 2, 12, 8, 34, 25, 0, 0, -1))
    assert log.latest("admission_error").device == "cuda:1"
    # ollama/ollama issue 8447: docker compose prefix, llm/memory.go "offload to cuda"
    f = parse_lines(['ollama  | time=2025-01-16T04:29:50.909Z level=INFO source=memory.go:356 msg="offload to cuda" '
                     'layers.requested=-1 layers.model=62 layers.offload=5 layers.split="" memory.available="[23.3 '
                     'GiB]" memory.gpu_overhead="0 B" memory.required.full="415.7 GiB" memory.required.partial="17.6 '
                     'GiB" memory.required.kv="9.5 GiB" memory.weights.total="385.0 GiB"']).latest("kv_cache")
    assert f.engine == "ollama" and f.value_bytes == round(9.5 * GiB) and f.wall_s == 1737001790.909
    # docs quoting SGLang 0.5 (KV size in one figure) and TRT-LLM 1.x on GB10 (12/20/2025)
    assert one("[2026-03-11 13:53:23 TP0] KV Cache is allocated. #tokens: 383872, KV size: 19.36 GB",
               "kv_cache").value_bytes == round(19.36 * GiB)


def test_docker_timestamps_prefix_gives_the_time_and_is_stripped():
    f = one("2026-09-14T08:03:05.123456789Z INFO 09-14 10:03:05 [gpu_worker.py:298] Available KV cache memory: "
            "22.50 GiB", "kv_cache")
    assert abs(f.wall_s - 1789372985.123456789) < 1e-3
    assert f.line.startswith("INFO 09-14")


# -- bad input -------------------------------------------------------------------------------
def test_unknown_lines_give_nothing_and_near_misses_are_not_facts():
    log = parse_lines(["hello", "", "INFO 01-01 00:00:00 [x.py:1] Available KV cache memory: lots",
                       "KV Cache is allocated. #tokens: many", "\x00\xff" * 50, "version"])
    assert log.facts == [] and log.lines == 6 and log.engine is None


def test_truncated_and_binary_files_never_crash(tmp_path):
    p = tmp_path / "cut.log"
    p.write_bytes(os.urandom(200_000) + b"\nINFO 09-14 10:03:05 [gpu_worker.py:298] Available KV cache memory: 22.50 "
                  b"GiB\nINFO 09-14 10:03:06 [kv_cache_utils.py:1] GPU KV cache size: 190,2")
    log = read_engine_log(str(p), year=2026)
    assert log.latest("kv_cache").value_bytes == int(22.5 * GiB)
    assert log.of("kv_tokens") == []                     # the cut line says nothing whole
    q = tmp_path / "long.log"                                # one line far over MAX_LINE_BYTES
    q.write_bytes(b"x" * (3 * engine_log.MAX_LINE_BYTES) + b"\nGPU KV cache size: 5 tokens\n")
    log = read_engine_log(str(q))
    assert log.latest("kv_tokens").count == 5 and log.lines == 2


def test_caps_bound_a_huge_log(monkeypatch):
    monkeypatch.setattr(engine_log, "MAX_LINES", 1000)
    log = parse_lines("GPU KV cache size: 5 tokens" for _ in range(10_000))
    assert log.capped and log.lines == 1000 and len(log.facts) == 1000


def test_fifo_and_symlink_are_refused_without_blocking(tmp_path):
    real = tmp_path / "real.log"
    real.write_text("GPU KV cache size: 5 tokens\n")
    (tmp_path / "link.log").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.log")                     # no writer: a blocking open would hang
    done = []

    def attempt():
        for name in ("link.log", "fifo.log", "."):
            with pytest.raises(NotRegularFile):
                read_engine_log(str(tmp_path / name))
        done.append(True)
    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    assert done == [True]
    assert main(["engine-log", str(tmp_path / "link.log")]) == 2
    assert main(["engine-log", str(tmp_path / "fifo.log")]) == 2
    assert main(["engine-log", str(tmp_path / "missing.log")]) == 3


# -- the command and the follower ------------------------------------------------------------
def test_cli_text_and_json(tmp_path, capsys):
    p = tmp_path / "vllm.log"
    p.write_text("(APIServer pid=1) INFO 09-14 10:02:11 [api_server.py:1896] vLLM API server version 0.10.1.1\n"
                 "noise\n(EngineCore_DP0 pid=120) INFO 09-14 10:03:05 [gpu_worker.py:298] Available KV cache "
                 "memory: 22.50 GiB\n")
    assert main(["engine-log", str(p), "--year", "2026"]) == 0
    out = capsys.readouterr().out
    assert "engine vllm" in out and "kv_cache" in out and "22.5 GiB" in out and "2026-09-14 10:03:05" in out
    assert main(["engine-log", "--json", str(p)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["engine"] == "vllm" and d["lines"] == 3
    assert [(f["kind"], f["line_no"]) for f in d["facts"]] == [("version", 1), ("kv_cache", 3)]
    assert main(["engine-log"]) == 2


def test_follower_reads_lines_as_they_are_written_and_never_blocks(tmp_path):
    p = tmp_path / "grow.log"
    p.write_text("INFO 09-14 10:02:40 [x.py:1] Model loading took 24.11 GiB and 24.3 seconds\nAvailable KV ")
    f = LogFollower(path=str(p), every_s=0.05)
    try:
        deadline = time.monotonic() + 5
        got = []
        while time.monotonic() < deadline and not got:
            got += f.take()
            time.sleep(0.02)
        assert [x.kind for x in got] == ["weights"]      # the half-written line waits
        with open(p, "a") as w:
            w.write("cache memory: 22.50 GiB\n")
        while time.monotonic() < deadline and len(got) < 2:
            got += f.take()
            time.sleep(0.02)
        assert [x.kind for x in got] == ["weights", "kv_cache"] and got[1].line_no == 2
    finally:
        f.close()
    assert isinstance(EngineLog().facts, list)
